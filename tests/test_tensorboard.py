"""TensorBoard event files of real runs, read back with TensorBoard's own readers."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

# The test extra installs the tensorboard extra: these tests run (never skip) in CI.
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from sortkd.losses import resolve_hparams
from sortkd.training.cifar import train_run
from sortkd.training.tensorboard import EVENT_FILE_PREFIX, TensorBoardLog, tag_of
from tests.conftest import tiny_spec

PAIR = "resnet8-resnet8"


def student_spec(data, teacher_dir, variant="base", **overrides):
    return tiny_spec(data, kind="student", name=f"t/{PAIR}/ctkd/{variant}/seed0", method="ctkd",
                     variant=variant, hparams=resolve_hparams("ctkd", {}), pair=PAIR, teacher_arch="resnet8",
                     teacher_dir=str(teacher_dir), **overrides)


def rows_of(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    # Event files hold float32 scalars.
    keys = [k for k in rows[0] if k != "epoch"]
    return {tag_of(k): [(r["epoch"], float(np.float32(r[k]))) for r in rows] for k in keys}


@pytest.fixture(scope="module")
def students(tiny_data, tiny_teacher, tmp_path_factory):
    """Two real 2-epoch CTKD runs (base and sort), laid out as results/<experiment>/students."""
    root = tmp_path_factory.mktemp("students")
    dirs = {}
    for variant in ("base", "sort"):
        run_dir = root / PAIR / "ctkd" / variant / "seed0"
        train_run(student_spec(tiny_data, tiny_teacher, variant), run_dir)
        dirs[variant] = run_dir
    return root, dirs


def test_event_files_read_back_the_metrics(students):
    root, dirs = students
    for variant, run_dir in dirs.items():
        rows = rows_of(run_dir)
        assert [r["epoch"] for r in rows] == [1, 2]
        tb = TensorBoardLog(run_dir, f"t/{PAIR}/ctkd/{variant}/seed0")
        for row in rows:
            tb.add_epoch(row)
        tb.close()
        assert len(list(run_dir.glob(f"{EVENT_FILE_PREFIX}*"))) == 1   # next to metrics.jsonl
        read = scalars(run_dir)
        assert read == expected(rows)
        # The curves the issue names are all there.
        for tag in ("loss/ce", "loss/kd", "loss/total", "top1/train", "top1/test", "lr",
                    "ctkd/temperature", "ctkd/lambda", "teacher/wrong_share"):
            assert tag in read, tag
        assert read["ctkd/temperature"][1][1] == float(np.float32(rows[1]["ctkd_temperature"]))
    # `tensorboard --logdir <students>` names runs by folder: pair, method, variant and seed.
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(root))
    assert sorted(mux.Runs()) == [f"{PAIR}/ctkd/base/seed0", f"{PAIR}/ctkd/sort/seed0"]


def test_resumed_run_has_one_point_per_epoch(tiny_data, tiny_teacher, tmp_path):
    spec = student_spec(tiny_data, tiny_teacher, epochs=3)
    run_dir = tmp_path / "run"
    # Attempt 1: stopped after epoch 1, like a kill after the epoch's checkpoint; no close().
    train_run(spec, run_dir, stop_after_epoch=1)
    first = TensorBoardLog(run_dir, spec.name)
    first.add_epoch(rows_of(run_dir)[0])
    # Attempt 2 resumes at epoch 2 and logs only its own epochs: the writer purges from epoch 2 on.
    train_run(spec, run_dir, stop_after_epoch=2)
    second = TensorBoardLog(run_dir, spec.name)
    second.add_epoch(rows_of(run_dir)[1])
    second.close()
    assert len(list(run_dir.glob(f"{EVENT_FILE_PREFIX}*"))) == 1
    assert scalars(run_dir) == expected(rows_of(run_dir)[:2])
    # Attempt 3 re-feeds the restored history (the loop's recommended use): the old files go and
    # the curve is written once from the rows.
    train_run(spec, run_dir)
    rows = rows_of(run_dir)
    third = TensorBoardLog(run_dir, spec.name)
    for row in rows:
        third.add_epoch(row)
    third.close()
    assert len(list(run_dir.glob(f"{EVENT_FILE_PREFIX}*"))) == 1
    assert scalars(run_dir) == expected(rows)
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_points_from_the_resume_epoch_on_are_dropped(students, tmp_path):
    _, dirs = students
    base, sort = rows_of(dirs["base"]), rows_of(dirs["sort"])
    run_dir = tmp_path / "run"
    # A killed attempt left epochs 1 and 2 (say its epoch-2 checkpoint never landed) ...
    stale = TensorBoardLog(run_dir, "x")
    stale.add_epoch(sort[0])
    stale.add_epoch(sort[1])
    stale.close()
    # ... and a kill during the last rewrite left a second copy of its file.
    (old,) = run_dir.glob(f"{EVENT_FILE_PREFIX}*")
    shutil.copy(old, run_dir / f"{old.name}.copy")
    # The resumed attempt redoes epoch 2 with other values: epoch 1 once, the new epoch 2 once.
    resumed = TensorBoardLog(run_dir, "x")
    resumed.add_epoch(base[1])
    resumed.close()
    assert len(list(run_dir.glob(f"{EVENT_FILE_PREFIX}*"))) == 1
    read = scalars(run_dir)
    assert read == {tag: [pts[0], expected(base[1:])[tag][0]] for tag, pts in expected(sort).items()}


def test_missing_package_is_a_one_line_error(monkeypatch, tmp_path):
    # Make the package unimportable, as in an environment without the extra.
    for name in list(sys.modules):
        if name == "tensorboard" or name.startswith(("tensorboard.", "torch.utils.tensorboard")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(RuntimeError) as info:
        TensorBoardLog(tmp_path, "x")
    message = str(info.value)
    assert "\n" not in message and 'pip install -e ".[tensorboard]"' in message
    assert not list(tmp_path.iterdir())
