"""The training engine: paired randomness, exact resume after SIGKILL, outputs, failures."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from sortkd import losses
from sortkd.experiment.specs import RunSpec
from sortkd.losses import resolve_hparams
from sortkd.training import cifar as trainer_module
from sortkd.training.cifar import CifarTrainer, build_model, train_run
from sortkd.training.loop import NonFiniteLoss, evaluate, float32_forward, precision_record, step_lr, summarize
from tests.conftest import tiny_spec

REPO = Path(__file__).resolve().parents[1]


def student_spec(data, teacher_dir, **overrides):
    """A student spec with complete hparams (method defaults < ``hparams`` overrides), as the grid makes them."""
    base = dict(kind="student", name="test/student", arch="resnet8", teacher_arch="resnet8",
                teacher_dir=str(teacher_dir), method="kd", variant="base", pair="resnet8-resnet8")
    base.update(overrides)
    base["hparams"] = resolve_hparams(base["method"], base.get("hparams"))
    return tiny_spec(data, **base)


def test_step_lr_recipe():
    lrs = {e: step_lr(e, 0.05) for e in (1, 150, 151, 180, 181, 210, 211, 240)}
    assert lrs[1] == lrs[150] == 0.05
    assert lrs[151] == pytest.approx(0.005) and lrs[180] == pytest.approx(0.005)
    assert lrs[181] == pytest.approx(0.0005) and lrs[210] == pytest.approx(0.0005)
    assert lrs[211] == pytest.approx(0.00005) and lrs[240] == pytest.approx(0.00005)


def test_variants_share_initial_weights_and_first_epoch_inputs(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    seen = {}
    original = trainer_module.DeviceCifar.train_batch

    def recording(self, index, views):
        seen.setdefault(current, []).append((index.clone(), views.clone()))
        return original(self, index, views)

    monkeypatch.setattr(trainer_module.DeviceCifar, "train_batch", recording)
    weights = {}
    for current in ("base", "sort", "swap"):
        spec = student_spec(tiny_data, tiny_teacher, variant=current, epochs=1)
        weights[current] = build_model(spec, 5).state_dict()
        train_run(spec, tmp_path / current)
    for variant in ("sort", "swap"):
        assert all(torch.equal(weights["base"][k], weights[variant][k]) for k in weights["base"])
        assert len(seen[variant]) == len(seen["base"])
        for (i0, v0), (i1, v1) in zip(seen["base"], seen[variant]):
            assert torch.equal(i0, i1) and torch.equal(v0, v1)
    # A different seed draws a different order, views and initial weights.
    other = student_spec(tiny_data, tiny_teacher, seed=1)
    assert not torch.equal(build_model(other, 5).state_dict()["conv1.weight"], weights["base"]["conv1.weight"])
    # Base and sort really differ in what they learn (the teacher is wrong on some samples).
    m_base = json.loads((tmp_path / "base" / "metrics.jsonl").read_text().splitlines()[0])
    m_sort = json.loads((tmp_path / "sort" / "metrics.jsonl").read_text().splitlines()[0])
    assert m_base["teacher_wrong_frac"] == m_sort["teacher_wrong_frac"] > 0
    assert m_base["loss_kd"] != m_sort["loss_kd"]


def _run_cli(spec, out_dir, extra=()):
    return subprocess.Popen(
        [sys.executable, "-m", "sortkd", "train", "--spec", json.dumps(spec.to_dict()),
         "--out-dir", str(out_dir), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_sigkill_resume_is_bit_identical(tiny_data, tiny_teacher, tmp_path):
    # CTKD: the learnable temperature and its optimizer state must survive the kill too.
    spec = student_spec(tiny_data, tiny_teacher, method="ctkd", epochs=6, variant="sort")
    full = tmp_path / "full"
    proc = _run_cli(spec, full)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    killed = tmp_path / "killed"
    proc = _run_cli(spec, killed)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    done_before_kill = len(metrics.read_text().splitlines())
    assert 2 <= done_before_kill < 6, "the kill must land mid-run"
    assert not (killed / "summary.json").exists()

    proc = _run_cli(spec, killed)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"resuming after epoch {done_before_kill}" in out

    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(killed / "checkpoint.pt", weights_only=False)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["method_state"]["theta"], b["method_state"]["theta"])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_s", "images_per_s")} for r in rows]
    assert strip(a["history"]) == strip(b["history"])
    assert json.loads((full / "summary.json").read_text())["best_top1"] == \
        json.loads((killed / "summary.json").read_text())["best_top1"]


def test_cli_student_run_writes_metrics_summary_provenance(tiny_data, tiny_teacher, tmp_path):
    spec = student_spec(tiny_data, tiny_teacher, method="ctkd", epochs=2, variant="sort")
    proc = _run_cli(spec, tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "epoch 2/2" in out and "ETA" in out
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("lr", "loss_total", "loss_ce", "loss_kd", "train_top1", "test_top1", "test_top5",
                    "epoch_s", "images_per_s", "ctkd_temperature", "ctkd_lambda", "teacher_wrong_frac"):
            assert key in r, key
        assert 0 <= r["test_top1"] <= r["test_top5"] <= 100
        assert 0 <= r["teacher_wrong_frac"] <= 1
        assert r["loss_total"] == pytest.approx(r["loss_ce"] + r["loss_kd"], rel=1e-6)  # fp32 terms
    assert rows[0]["ctkd_lambda"] == pytest.approx(-0.0244717, abs=1e-6)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_top1"] == rows[-1]["test_top1"]
    assert summary["best_top1"] == max(r["test_top1"] for r in rows)
    assert summary["run"]["variant"] == "sort" and summary["teacher_top1"] is not None
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["config"] == spec.to_dict() and prov["config_hash"] == spec.hash
    for key in ("git_revision", "seed", "versions", "device", "cuda_visible_devices", "start", "end", "wall_s"):
        assert key in prov
    assert prov["versions"]["torch"] == torch.__version__


def test_non_finite_loss_stops_without_result(tiny_data, tiny_teacher, tmp_path):
    spec = student_spec(tiny_data, tiny_teacher, name="test/nan-run", hparams={"temperature": 0.0}, epochs=1)
    with pytest.raises(NonFiniteLoss, match=r"run test/nan-run: non-finite loss at epoch 1, step 1 "):
        train_run(spec, tmp_path)
    assert not (tmp_path / "summary.json").exists()
    proc = _run_cli(spec, tmp_path / "cli")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "non-finite loss at epoch 1, step 1" in out


def test_missing_inputs_say_what_to_do(tiny_data, tiny_teacher, tmp_path):
    spec = tiny_spec(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        train_run(spec, tmp_path / "a")
    spec = student_spec(tiny_data, tmp_path / "no-teacher")
    with pytest.raises(FileNotFoundError, match="train or import the teacher first"):
        train_run(spec, tmp_path / "b")
    with pytest.raises(ValueError, match="allowed: base, sort, swap"):
        student_spec(tiny_data, tiny_teacher, variant="sorted")
    with pytest.raises(ValueError, match="unknown run setting"):
        tiny_spec(tiny_data, learning_rate=0.1)


def test_teacher_outputs(tiny_teacher):
    info = json.loads((tiny_teacher / "teacher.json").read_text())
    assert info["arch"] == "resnet8" and info["source"] == "train"
    assert 0 <= info["test_top1"] <= 100
    ckpt = torch.load(tiny_teacher / "model.pt", weights_only=True)
    assert set(ckpt) >= {"model"}


def test_retrained_teacher_has_the_same_checksum(tiny_data, tiny_teacher, tmp_path):
    # Same spec, same seed: same weights, and so the same file bytes and sha256.
    train_run(tiny_spec(tiny_data, epochs=3), tmp_path / "again")
    a = json.loads((tiny_teacher / "teacher.json").read_text())
    b = json.loads((tmp_path / "again" / "teacher.json").read_text())
    assert a["checkpoint_sha256"] == b["checkpoint_sha256"]


# --- fidelity: best epoch, fp32 teacher and evaluation ---------------------------------------

def test_a_tie_for_the_best_epoch_goes_to_the_latest_epoch():
    # mdistiller saves the best checkpoint on >=: of equal accuracies the later epoch wins.
    history = [{"epoch": e, "test_top1": t1, "test_top5": t5, "epoch_s": 1.0}
               for e, t1, t5 in ((1, 40.0, 80.0), (2, 55.0, 90.0), (3, 55.0, 91.0), (4, 50.0, 92.0))]
    spec = tiny_spec("unused.npz", epochs=4)
    summary = summarize(spec, history, "cifar100", "teacher", None)
    assert (summary["best_epoch"], summary["best_top1"], summary["best_top5"]) == (3, 55.0, 91.0)
    assert (summary["final_top1"], summary["final_top5"]) == (50.0, 92.0)


def _first_batch_in_bf16(tiny_data, tiny_teacher, tmp_path):
    trainer = CifarTrainer(student_spec(tiny_data, tiny_teacher, precision="bf16", variant="sort"), tmp_path)
    return trainer, next(trainer.train_batches(1))


def test_online_teacher_gives_fp32_logits_to_a_bf16_student(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    trainer, batch = _first_batch_in_bf16(tiny_data, tiny_teacher, tmp_path)
    seen = []
    real = losses.compute_loss

    def recording(name, student, teacher, *args, **kwargs):
        seen.append((student, teacher))
        return real(name, student, teacher, *args, **kwargs)

    monkeypatch.setattr(losses, "compute_loss", recording)
    teacher_model = trainer.teacher.sources["weak"].model
    with torch.no_grad():
        fp32 = teacher_model(batch.inputs["weak"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = teacher_model(batch.inputs["weak"]).float()
    assert not torch.equal(fp32, bf16)  # bf16 would have moved the teacher's logits
    _, schedule, meter = trainer.open_epoch(1)
    trainer.train_step(0, 1, batch, schedule, meter)
    (student, teacher), = seen
    assert teacher.dtype == torch.float32 and torch.equal(teacher, fp32)
    assert student.dtype == torch.float32  # the bf16 forward's logits, upcast for the loss
    # Called from inside the student's autocast too, the teacher stays in fp32.
    with trainer.autocast():
        assert torch.equal(trainer.teacher_logits(batch, "weak"), fp32)


def test_test_evaluation_is_fp32_under_a_bf16_student(tiny_data, tiny_teacher, tmp_path):
    trainer, batch = _first_batch_in_bf16(tiny_data, tiny_teacher, tmp_path)
    dtypes = []
    trainer.model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    with trainer.autocast():
        trainer.forward_model(batch.inputs["weak"])
    assert dtypes == [torch.bfloat16]
    result = trainer.evaluate()
    assert dtypes[1:] == [torch.float32]
    assert result == evaluate(trainer.model, trainer.data.test_x, trainer.data.test_y)


def test_teacher_forward_switches_tf32_off_on_cuda_and_restores_it():
    # Flags only: they can be set without a GPU. TF32 rounds matmul inputs to 10 mantissa bits.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "CUDA is not available": autocast is off anyway
            with float32_forward(torch.device("cuda")) as on_entry:
                assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert on_entry == {"matmul": True, "cudnn": True}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        record = precision_record(torch.device("cuda"), "bf16")
        assert record["teacher_tf32"] is False and record["student_tf32_cudnn"] is True
        assert record["teacher_forward"] == record["evaluation"] == "fp32"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_exact_switches_tf32_off_for_the_student_on_cuda_only():
    from sortkd.training.loop import fp32_means_fp32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        for device, precision in ((torch.device("cpu"), "exact"), (torch.device("cuda"), "bf16")):
            fp32_means_fp32(device, precision)
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        fp32_means_fp32(torch.device("cuda"), "exact")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        record = precision_record(torch.device("cuda"), "exact")
        assert record["student_tf32_matmul"] is False and record["student_tf32_cudnn"] is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a_method_needing_a_view_the_trainer_cannot_render_fails_at_start(tiny_data, tiny_teacher, tmp_path,
                                                                         monkeypatch):
    real = losses.get_method

    class ThirdView:  # the method, asking for a view that no trainer renders
        views = ("weak", "strong", "patches")

        def __init__(self, name):
            self.inner = real(name)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(losses, "get_method", ThirdView)
    with pytest.raises(ValueError, match=r"method 'kd' needs the view\(s\) patches, but the cifar100 trainer "
                                         r"supplies only weak, strong"):
        train_run(student_spec(tiny_data, tiny_teacher, teacher_logits="online"), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_the_log_starts_with_the_resolved_settings(tiny_data, tiny_teacher, tmp_path, capsys):
    spec = student_spec(tiny_data, tiny_teacher, method="dkd", variant="sort", epochs=1)
    train_run(spec, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("[test/student] settings: method dkd (" + getattr(losses.get_method("dkd"), "label", "dkd")
                        + "), variant sort, hparams alpha=1.0, beta=8.0, ce_weight=1.0, temperature=4.0, warmup=20")
    assert lines[1].startswith("[test/student]   recipe: epochs 1, batch 16, lr 0.05 (x0.1 after epochs 1)")
    assert lines[2].startswith("[test/student]   precision exact (student forward fp32; teacher and evaluation "
                               "fp32), device cpu") and lines[2].endswith("teacher logits: weak online")
    assert lines[3].startswith("[test/student] epoch 1/1")


def test_tensorboard_log_gets_every_epoch_row_and_is_closed(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    board = pytest.importorskip("sortkd.training.tensorboard")
    if "tensorboard" not in {f.name for f in dataclasses.fields(RunSpec)}:
        pytest.skip("RunSpec has no tensorboard field yet (the spec owner's change)")
    rows, closed = [], []

    class Recording(board.TensorBoardLog):
        def add_epoch(self, row):
            rows.append(row)
            super().add_epoch(row)

        def close(self):
            closed.append(True)
            super().close()

    monkeypatch.setattr(board, "TensorBoardLog", Recording)
    spec = student_spec(tiny_data, tiny_teacher, epochs=3, tensorboard=True)
    assert train_run(spec, tmp_path, stop_after_epoch=2) is None
    first = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == first and closed == [True]
    # Resumed: the restored epochs are fed again (the log rewrites its curve from them), then epoch 3.
    train_run(spec, tmp_path)
    every = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == first + every and closed == [True, True]
