"""The epoch loop shared by vanilla teachers and distilled students.

Outputs in the run folder:
- ``checkpoint.pt``: model, optimizer, method state (CTKD temperature), epoch and the
  metrics so far; rewritten atomically at every epoch end and used to resume;
- ``metrics.jsonl``: one line per completed epoch;
- ``summary.json`` and ``provenance.json`` once the run is complete
  (teachers also get ``model.pt`` and ``teacher.json``).
"""
from __future__ import annotations

import contextlib
import time
from functools import partial
from pathlib import Path
import torch
from sortkd.data.cifar import load_arrays
from sortkd.files import write_json, write_jsonl
from sortkd.logit_cache import dataset_sha256
from sortkd.losses import compute_loss, get_method, resolve_hparams
from sortkd.models import build
from sortkd.experiment.specs import RunSpec
from sortkd.seeding import epoch_order, epoch_views, seeded_global_rng
from sortkd.teachers import save_teacher_model, write_teacher_info
from sortkd.training import loop as provenance
from sortkd.training.loop import load_matching_checkpoint, restore_training_state, save_checkpoint
from sortkd.training.loop import resolve_device
from sortkd.data.views import DeviceCifar
from sortkd.training.loop import EpochMeter, evaluate
from sortkd.training.loop import EpochProgress
from sortkd.training.loop import begin_epoch
from sortkd.logit_cache import TeacherLogitCache
from sortkd.teachers import load_teacher, read_teacher_info


# --- trainer ------------------------------------------------------------------

CHECKPOINT, METRICS, SUMMARY, PROVENANCE = "checkpoint.pt", "metrics.jsonl", "summary.json", "provenance.json"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; no result is written."""


def build_model(spec: RunSpec, num_classes: int) -> torch.nn.Module:
    # Initial weights depend on (seed, "init") only: every variant of a seed starts alike.
    with seeded_global_rng(spec.seed, "init"):
        return build(spec.arch, num_classes)


def autocast_factory(device: torch.device, precision: str):
    if precision == "bf16":
        if device.type != "cuda":
            raise ValueError("precision 'bf16' is the CUDA fast path; use precision 'exact' on the CPU")
        return partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _teacher_source(spec: RunSpec, data: DeviceCifar, device, autocast, channels_last):
    if spec.kind == "teacher":
        return None
    if spec.teacher_logits == "cache":
        return CachedTeacher(Path(spec.teacher_dir), Path(spec.cache_dir), dataset_sha256(Path(spec.data)),
                             data.num_train, data.num_classes, device)
    return OnlineTeacher(Path(spec.teacher_dir), spec.teacher_arch, device, autocast, channels_last)


def train_run(spec: RunSpec, out_dir: Path, stop_after_epoch: int | None = None,
              step_losses: list | None = None) -> dict | None:
    """Train (or resume) the run; returns the summary, or None when stopped early on request.

    ``step_losses``, if given, receives each step's total loss as a detached device tensor
    (no sync): the equivalence tests compare trajectories with it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started_at, t0 = provenance.now_iso(), time.time()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = resolve_device(spec.device)
    fast = spec.precision == "bf16"
    autocast = autocast_factory(device, spec.precision)
    memory_format = torch.channels_last if fast else torch.contiguous_format
    progress = EpochProgress(spec.name, spec.epochs)

    arrays = load_arrays(Path(spec.data))
    data = DeviceCifar(arrays, device)
    model = build_model(spec, data.num_classes).to(device, memory_format=memory_format)
    method = get_method(spec.method)
    hparams = resolve_hparams(spec.method, spec.hparams)
    method_state = method.make_state(hparams)
    if method_state is not None:
        method_state = method_state.to(device)
    teacher = _teacher_source(spec, data, device, autocast, fast)
    params = list(model.parameters()) + (list(method_state.parameters()) if method_state is not None else [])
    optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                                weight_decay=spec.weight_decay, nesterov=False)

    history: list[dict] = []
    ckpt_path = out_dir / CHECKPOINT
    ckpt = load_matching_checkpoint(ckpt_path, spec.hash, progress.note)
    if ckpt is not None:
        restore_training_state(ckpt, model, optimizer, method_state)
        history = ckpt["history"]
    start_epoch = len(history) + 1

    for epoch in range(start_epoch, spec.epochs + 1):
        epoch_t0 = time.time()
        lr, schedule = begin_epoch(optimizer, spec, epoch, method, hparams)
        order = epoch_order(spec.seed, epoch, data.num_train).to(device)
        views = epoch_views(spec.seed, epoch, data.num_train, data.num_views).to(device)
        model.train()
        meter = EpochMeter(device)
        for step, first in enumerate(range(0, data.num_train, spec.batch_size)):
            index = order[first:first + spec.batch_size]
            view = views[index]
            images, target = data.train_batch(index, view)
            if fast:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                student = model(images)
            teacher_logits = teacher.logits(index, view, images) if teacher is not None else None
            out = compute_loss(spec.method, student.float(), teacher_logits, target, epoch, hparams,
                               spec.variant, method_state, schedule)
            loss = out.total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            meter.update(step, out.terms, loss, out.diagnostics, student, teacher_logits, target)
            if step_losses is not None:
                step_losses.append(loss.detach())
        train_metrics, bad_step = meter.read()
        if bad_step >= 0:
            raise NonFiniteLoss(f"run {spec.name}: non-finite loss at epoch {epoch}, step {bad_step + 1} "
                                f"of {meter.steps}; no result written")
        test_metrics = evaluate(model, data.test_x, data.test_y, data.num_classes, autocast=autocast)
        seconds = time.time() - epoch_t0
        row = {"epoch": epoch, "lr": lr, **train_metrics, **test_metrics,
               "epoch_s": round(seconds, 4), "images_per_s": round(data.num_train / seconds, 1)}
        history.append(row)
        save_checkpoint(ckpt_path, {
            "spec_hash": spec.hash, "epoch": epoch, "history": history,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "method_state": method_state.state_dict() if method_state is not None else None,
        })
        write_jsonl(out_dir / METRICS, history)
        progress.epoch_done(epoch, seconds, row)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < spec.epochs:
            return None

    summary = _summarize(spec, history, teacher)
    if spec.kind == "teacher":
        sha = save_teacher_model(out_dir, model, spec.epochs)
        write_teacher_info(out_dir, {
            "arch": spec.arch, "num_classes": data.num_classes, "source": "train",
            "checkpoint_sha256": sha, "test_top1": history[-1]["test_top1"],
            "test_top5": history[-1]["test_top5"], "data_sha256": dataset_sha256(Path(spec.data)),
        })
    write_json(out_dir / SUMMARY, summary)
    write_json(out_dir / PROVENANCE, provenance.collect(spec.to_dict(), spec.hash, spec.seed, device,
                                                        started_at, time.time() - t0))
    progress.note(f"done: final top-1 {summary['final_top1']:.2f}%, best {summary['best_top1']:.2f}% "
                  f"(epoch {summary['best_epoch']})")
    return summary


def _summarize(spec: RunSpec, history: list[dict], teacher) -> dict:
    best = max(history, key=lambda r: (r["test_top1"], -r["epoch"]))
    final = history[-1]
    summary = {
        "run": {"experiment": spec.experiment, "dataset": spec.dataset, "kind": spec.kind,
                "arch": spec.arch, "teacher": spec.teacher_arch, "student": spec.arch if spec.kind == "student" else None,
                "pair": spec.pair, "method": spec.method, "variant": spec.variant, "seed": spec.seed},
        "epochs": len(history),
        "final_top1": final["test_top1"], "final_top5": final["test_top5"],
        "best_top1": best["test_top1"], "best_top5": best["test_top5"], "best_epoch": best["epoch"],
        "wall_s": round(sum(r["epoch_s"] for r in history), 3),
    }
    if teacher is not None:
        summary["teacher_top1"] = teacher.info["test_top1"]
        summary["teacher_logits"] = spec.teacher_logits
        summary["teacher_wrong_frac"] = sum(r["teacher_wrong_frac"] for r in history) / len(history)
    return summary


# --- teacher_source -----------------------------------------------------------

class OnlineTeacher:
    """Runs the teacher (eval mode, no gradients) on the student's own batch."""

    def __init__(self, teacher_dir: Path, arch: str, device: torch.device, autocast, channels_last: bool):
        self.model, self.info = load_teacher(teacher_dir, arch, device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.autocast = autocast

    @torch.no_grad()
    def logits(self, index: torch.Tensor, views: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(images).float()


class CachedTeacher:
    """Gathers each batch's logits by (sample index, view id); never builds the teacher."""

    def __init__(self, teacher_dir: Path, cache_dir: Path, data_sha256: str, num_train: int,
                 num_classes: int, device: torch.device):
        self.info = read_teacher_info(teacher_dir)
        self.cache = TeacherLogitCache(cache_dir, self.info["checkpoint_sha256"], data_sha256,
                                       num_train, num_classes, device)

    def logits(self, index: torch.Tensor, views: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.cache.train_logits(index, views)
