"""The ImageNet epoch loop: one process per GPU under torchrun, or one plain process.

Same outputs as the CIFAR engine, written by rank 0 only:
- ``checkpoint.pt`` (atomic, every epoch): student, optimizer, CTKD state, epoch, history,
  the measured teacher accuracy and the spec hash; a restarted run resumes after the last
  complete epoch, with any number of processes;
- ``metrics.jsonl``: one line per epoch, metrics summed over all ranks;
- ``summary.json`` (the keys the report reads, ``dataset: imagenet``) and ``provenance.json``.

The teacher runs online on the student's batch, in eval mode and without gradients; the
run's variant is applied to its logits by the registry's ``compute_loss``, as on CIFAR.
"""
from __future__ import annotations

import time
from pathlib import Path
import torch
from torch.nn.parallel import DistributedDataParallel
from sortkd.training import loop as provenance
from sortkd.training.loop import load_matching_checkpoint, restore_training_state, save_checkpoint
from sortkd.training.loop import EpochMeter
from sortkd.training.loop import EpochProgress
from sortkd.training.loop import begin_epoch
from sortkd.training.cifar import CHECKPOINT, METRICS, PROVENANCE, SUMMARY, NonFiniteLoss, autocast_factory
from sortkd.files import write_json, write_jsonl
from sortkd.losses import compute_loss, get_method, resolve_hparams
from sortkd.training.distributed import Ranks, all_reduce_sum, barrier
from sortkd.training.distributed import DataOrderChecksum, reduce_meter
from sortkd.data.imagenet import scan_imagenet
from sortkd.training.distributed import synchronize_batch_norm
from sortkd.data.imagenet_input import normalize_batch
from sortkd.data.imagenet_input import ImageNetInput, compute_threads
from sortkd.models.imagenet import build_student, build_teacher
from sortkd.experiment.specs import ImageNetRunSpec
import contextlib
from sortkd.training.distributed import Ranks, all_reduce_sum


# --- trainer ------------------------------------------------------------------

def _load_teacher(spec: ImageNetRunSpec, num_classes: int, ranks: Ranks) -> torch.nn.Module:
    # The first process of each node fetches the weights into the cache; the others then read it.
    if ranks.local_rank != 0:
        barrier(ranks)
    teacher = build_teacher(spec.teacher_arch, spec.teacher_weights, num_classes, spec.seed)
    if ranks.local_rank == 0:
        barrier(ranks)
    return teacher


def _average_grads(module: torch.nn.Module, ranks: Ranks) -> None:
    """Gradients of parameters outside DDP (the CTKD temperature), averaged like DDP does."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not ranks.distributed or not grads:
        return
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]), ranks) / ranks.world_size
    for grad, value in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(value.view_as(grad))


def train_imagenet(spec: ImageNetRunSpec, out_dir: Path, ranks: Ranks,
                   stop_after_epoch: int | None = None) -> dict | None:
    """Train (or resume) the run; returns the summary, or None when stopped early on request."""
    out_dir = Path(out_dir)
    started_at, t0 = provenance.now_iso(), time.time()
    if ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(compute_threads(spec, ranks))
    device = ranks.device
    fast = spec.precision == "bf16"
    autocast = autocast_factory(device, spec.precision)
    memory_format = torch.channels_last if fast else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = fast
    progress = EpochProgress(spec.name, spec.epochs) if ranks.is_main else None

    folder = scan_imagenet(spec.data)
    data = ImageNetInput(folder, spec, ranks)
    student = build_student(spec.arch, folder.num_classes, spec.seed)
    if ranks.distributed and spec.sync_bn:
        student = synchronize_batch_norm(student, device, ranks.bn_group)
    student = student.to(device, memory_format=memory_format)
    teacher = _load_teacher(spec, folder.num_classes, ranks).to(device, memory_format=memory_format)
    method = get_method(spec.method)
    hparams = resolve_hparams(spec.method, spec.hparams)
    method_state = method.make_state(hparams)
    if method_state is not None:
        method_state = method_state.to(device)
    trained = student
    if ranks.distributed:
        # Buffers: rank 0's are broadcast at every forward (DDP's default); with global batch norm
        # they are identical on every rank anyway.
        trained = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None,
                                          gradient_as_bucket_view=True)
    params = list(student.parameters()) + (list(method_state.parameters()) if method_state is not None else [])
    optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                                weight_decay=spec.weight_decay, nesterov=False)

    history: list[dict] = []
    teacher_accuracy = None
    ckpt_path = out_dir / CHECKPOINT
    ckpt = load_matching_checkpoint(ckpt_path, spec.hash, progress.note if progress else (lambda text: None))
    if ckpt is not None:
        restore_training_state(ckpt, student, optimizer, method_state)
        history, teacher_accuracy = ckpt["history"], ckpt["teacher_accuracy"]
    if teacher_accuracy is None:
        teacher_accuracy = evaluate(teacher, data.val_batches(), ranks, autocast, memory_format)
        if progress:
            progress.note(f"teacher {spec.teacher_arch} ({spec.teacher_weights}): val top-1 "
                          f"{teacher_accuracy['top1']:.2f}%, top-5 {teacher_accuracy['top5']:.2f}%")

    for epoch in range(len(history) + 1, spec.epochs + 1):
        epoch_t0 = time.time()
        lr, schedule = begin_epoch(optimizer, spec, epoch, method, hparams)
        trained.train()
        meter, checksum = EpochMeter(device), DataOrderChecksum(device)
        for step, (images, target, indices) in enumerate(data.train_batches(epoch)):
            x = normalize_batch(images, memory_format)
            with autocast():
                student_logits = trained(x)
            with torch.no_grad(), autocast():
                teacher_logits = teacher(x).float()
            out = compute_loss(spec.method, student_logits.float(), teacher_logits, target, epoch, hparams,
                               spec.variant, method_state, schedule)
            loss = out.total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if method_state is not None:
                _average_grads(method_state, ranks)
            optimizer.step()
            meter.update(step, out.terms, loss, out.diagnostics, student_logits, teacher_logits, target)
            checksum.update(step, indices)
        train_metrics, bad_step = reduce_meter(meter, ranks)
        if bad_step >= 0:
            raise NonFiniteLoss(f"run {spec.name}: non-finite loss at epoch {epoch}, step {bad_step + 1} "
                                f"of {meter.steps}; no result written")
        val = evaluate(student, data.val_batches(), ranks, autocast, memory_format)
        seconds = time.time() - epoch_t0
        row = {"epoch": epoch, "lr": lr, **train_metrics, "test_top1": val["top1"], "test_top5": val["top5"],
               "data_order_checksum": checksum.read(ranks), "world_size": ranks.world_size,
               "epoch_s": round(seconds, 4),
               "images_per_s": round(data.steps_per_epoch * spec.batch_size / seconds, 1)}
        history.append(row)
        if ranks.is_main:
            save_checkpoint(ckpt_path, {
                "spec_hash": spec.hash, "epoch": epoch, "history": history,
                "teacher_accuracy": teacher_accuracy,
                "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                "method_state": method_state.state_dict() if method_state is not None else None,
            })
            write_jsonl(out_dir / METRICS, history)
            progress.epoch_done(epoch, seconds, row)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < spec.epochs:
            barrier(ranks)
            return None

    summary = summarize(spec, history, teacher_accuracy)
    if ranks.is_main:
        write_json(out_dir / SUMMARY, summary)
        record = provenance.collect(spec.to_dict(), spec.hash, spec.seed, device, started_at, time.time() - t0)
        record.update(world_size=ranks.world_size, dist_backend=ranks.backend,
                      per_process_batch=spec.batch_size // ranks.world_size)
        write_json(out_dir / PROVENANCE, record)
        progress.note(f"done: final top-1 {summary['final_top1']:.2f}%, best {summary['best_top1']:.2f}% "
                      f"(epoch {summary['best_epoch']})")
    barrier(ranks)
    return summary


def summarize(spec: ImageNetRunSpec, history: list[dict], teacher_accuracy: dict) -> dict:
    """The run summary with the keys of the CIFAR engine's, for the report."""
    best = max(history, key=lambda r: (r["test_top1"], -r["epoch"]))
    final = history[-1]
    return {
        "run": {"experiment": spec.experiment, "dataset": "imagenet", "kind": "student", "arch": spec.arch,
                "teacher": spec.teacher_arch, "student": spec.arch, "pair": spec.pair, "method": spec.method,
                "variant": spec.variant, "seed": spec.seed},
        "epochs": len(history),
        "final_top1": final["test_top1"], "final_top5": final["test_top5"],
        "best_top1": best["test_top1"], "best_top5": best["test_top5"], "best_epoch": best["epoch"],
        "wall_s": round(sum(r["epoch_s"] for r in history), 3),
        "teacher_top1": teacher_accuracy["top1"], "teacher_top5": teacher_accuracy["top5"],
        "teacher_weights": spec.teacher_weights, "teacher_logits": "online",
        "teacher_wrong_frac": sum(r["teacher_wrong_frac"] for r in history) / len(history),
    }


# --- evaluate -----------------------------------------------------------------

@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, ranks: Ranks, autocast=contextlib.nullcontext,
             memory_format=torch.contiguous_format) -> dict[str, float]:
    """Percent top-1/top-5 of ``model`` (eval mode) over every rank's shard of the val set."""
    model.eval()
    hits = torch.zeros(2, dtype=torch.int64, device=ranks.device)  # top-1, top-5
    samples = 0
    for images, labels, _ in batches:
        with autocast():
            logits = model(normalize_batch(images, memory_format))
        k = min(5, logits.shape[1])
        hit = logits.float().topk(k, dim=1).indices == labels[:, None]
        hits += torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum()])
        samples += labels.shape[0]
    counts = torch.cat([hits, torch.tensor([samples], device=ranks.device)])
    c1, c5, n = all_reduce_sum(counts, ranks).tolist()
    if n == 0:
        raise RuntimeError("the validation set is empty")
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n}
