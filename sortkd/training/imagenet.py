"""The ImageNet entry of the epoch loop: one process per GPU under torchrun, or one plain process.

It supplies the loop (``sortkd.training.loop.Trainer``) with this process's share of every
global batch, the online teacher's fp32 logits, its shard of the validation set and the sums
over processes. Outputs are those of every run, written by rank 0 only; the checkpoint also
holds the teacher's measured accuracy, and a restarted run resumes with any number of
processes.

Batch norm: per process by default (``sync_bn: false``), as upstream's ``DataParallel`` has it;
the running statistics are rank 0's (DDP broadcasts rank 0's buffers at every forward, as
``DataParallel`` keeps those of its first device). ``sync_bn: true`` normalizes with the
statistics of the global batch, and then N processes compute what 1 process computes.

The last partial global batch is kept and split as evenly as possible; each process weights
its batch-mean loss by its share (``ImageNetInput.loss_scale``), so the averaged gradient is
the mean over the global batch, as in one process.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from sortkd.data.imagenet import scan_imagenet
from sortkd.data.imagenet_input import ImageNetInput, compute_threads, normalize_batch
from sortkd.experiment.specs import ImageNetRunSpec
from sortkd.models.imagenet import build_student, build_teacher
from sortkd.training.distributed import (DataOrderChecksum, Ranks, all_reduce_sum, barrier, broadcast_buffers,
                                         reduce_meter, synchronize_batch_norm)
from sortkd.training.loop import Batch, EpochMeter, Trainer, evaluate_batches, fp32_logits, memory_format_for


def _load_teacher(spec: ImageNetRunSpec, num_classes: int, ranks: Ranks) -> torch.nn.Module:
    # The first process of each node fetches the weights into the cache; the others then read it.
    if ranks.local_rank != 0:
        barrier(ranks)
    teacher = build_teacher(spec.teacher_arch, spec.teacher_weights, num_classes, spec.seed)
    if ranks.local_rank == 0:
        barrier(ranks)
    return teacher


class ImageNetTrainer(Trainer):
    dataset = "imagenet"
    views = ("weak",)

    def __init__(self, spec: ImageNetRunSpec, out_dir: Path, ranks: Ranks):
        torch.set_num_threads(compute_threads(spec, ranks))
        self.ranks = ranks
        device, memory_format = ranks.device, memory_format_for(spec.precision)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = spec.precision == "bf16"
        folder = scan_imagenet(spec.data)
        self.data = ImageNetInput(folder, spec, ranks)
        student = build_student(spec.arch, folder.num_classes, spec.seed)
        if ranks.distributed and spec.sync_bn:
            student = synchronize_batch_norm(student, device, ranks.bn_group)
        student = student.to(device, memory_format=memory_format)
        self.teacher = _load_teacher(spec, folder.num_classes, ranks).to(device, memory_format=memory_format)
        forward_model = student
        if ranks.distributed:
            forward_model = DistributedDataParallel(
                student, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
        super().__init__(spec, out_dir, device, student, forward_model, is_main=ranks.is_main)
        self.teacher_accuracy = None
        self.checksum = None

    # --- data, teacher, evaluation ---

    def train_batches(self, epoch: int):
        for step, (images, target, index) in enumerate(self.data.train_batches(epoch)):
            yield Batch({"weak": normalize_batch(images, self.memory_format)}, target, index,
                        loss_scale=self.data.loss_scale(step))

    def teacher_logits(self, batch: Batch, view: str) -> torch.Tensor:
        return fp32_logits(self.teacher, batch.inputs[view])

    def evaluate(self) -> dict[str, float]:
        broadcast_buffers(self.model, self.ranks)
        return super().evaluate()

    def evaluation_batches(self):
        return ((normalize_batch(images, self.memory_format), labels) for images, labels, _ in self.data.val_batches())

    def samples_per_epoch(self) -> int:
        return self.data.samples_per_epoch

    # --- the processes ---

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor, self.ranks)

    def reduce_meter(self, meter: EpochMeter):
        return reduce_meter(meter, self.ranks)

    def barrier(self) -> None:
        barrier(self.ranks)

    def after_backward(self) -> None:
        # Parameters outside DDP (the CTKD temperature): gradients averaged as DDP averages its own.
        if self.method_state is None or not self.ranks.distributed:
            return
        grads = [p.grad for p in self.method_state.parameters() if p.grad is not None]
        if grads:
            flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]), self.ranks) / self.ranks.world_size
            for grad, value in zip(grads, flat.split([g.numel() for g in grads])):
                grad.copy_(value.view_as(grad))

    # --- the run's records ---

    def prepare(self) -> None:
        if self.teacher_accuracy is None:  # once per run: measured at the start, kept in the checkpoint
            self.teacher_accuracy = evaluate_batches(self.teacher, self.evaluation_batches(), self.device,
                                                     self.reduce_sum)
            self.note(f"teacher {self.spec.teacher_arch} ({self.spec.teacher_weights}): val top-1 "
                      f"{self.teacher_accuracy['test_top1']:.2f}%, top-5 {self.teacher_accuracy['test_top5']:.2f}%")

    def start_epoch(self, epoch: int) -> None:
        self.checksum = DataOrderChecksum(self.device)

    def after_step(self, step: int, batch: Batch) -> None:
        self.checksum.update(step, batch.index)

    def epoch_extras(self) -> dict:
        return {"data_order_checksum": self.checksum.read(self.ranks), "world_size": self.ranks.world_size}

    def checkpoint_extras(self) -> dict:
        return {"teacher_accuracy": self.teacher_accuracy}

    def restore_extras(self, ckpt: dict) -> None:
        self.teacher_accuracy = ckpt["teacher_accuracy"]

    def teacher_summary(self) -> dict:
        return {"teacher_top1": self.teacher_accuracy["test_top1"], "teacher_top5": self.teacher_accuracy["test_top5"],
                "teacher_weights": self.spec.teacher_weights, "teacher_logits": "online"}

    def settings_extras(self) -> str:
        return (f", {self.ranks.world_size} process(es), batch norm "
                f"{'global' if self.spec.sync_bn and self.ranks.distributed else 'per process'}")

    def provenance_extras(self) -> dict:
        return {"world_size": self.ranks.world_size, "processes": self.ranks.world_size,
                "dist_backend": self.ranks.backend,
                "batch_norm": "global" if self.spec.sync_bn and self.ranks.distributed else "per-process",
                "per_process_batch": self.spec.batch_size // self.ranks.world_size}


def train_imagenet(spec: ImageNetRunSpec, out_dir: Path, ranks: Ranks,
                   stop_after_epoch: int | None = None) -> dict | None:
    """Train (or resume) the run; returns the summary, or None when stopped early on request."""
    return ImageNetTrainer(spec, out_dir, ranks).run(stop_after_epoch)
