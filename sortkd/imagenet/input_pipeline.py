"""Batches on the training device: DataLoaders over this rank's samples, either decode path.

Each batch arrives as (uint8 images N×3×S×S on the device, labels, sample indices); the
trainer normalizes it (``images.normalize_batch``). CPU threads of the job are shared by its
processes: each process gets ``threads // local processes``. On CUDA all but one of them
become DataLoader workers (the training process only launches kernels); on the CPU the
process keeps them for its own arithmetic and decodes in-line.
"""
from __future__ import annotations

import os

from torch.utils.data import DataLoader

from .distributed import Ranks
from .folder import ImageNetFolder
from .gpu_decode import (EncodedTrainImages, EncodedValImages, collate_encoded, gpu_decode_available,
                         train_batch_on_device, val_batch_on_device)
from .images import TrainImages, ValImages
from .sampler import RankBatchSampler, ValShardSampler, per_rank_batch
from .spec import ImageNetRunSpec


def job_threads(spec: ImageNetRunSpec) -> int:
    return spec.threads or len(os.sched_getaffinity(0))


def process_threads(spec: ImageNetRunSpec, ranks: Ranks) -> int:
    return max(job_threads(spec) // ranks.local_world_size, 1)


def loader_workers(spec: ImageNetRunSpec, ranks: Ranks) -> int:
    if spec.loader_workers is not None:
        return spec.loader_workers
    if ranks.device.type != "cuda":
        return 0
    return process_threads(spec, ranks) - 1


def compute_threads(spec: ImageNetRunSpec, ranks: Ranks) -> int:
    """torch threads of the training process itself."""
    return 1 if ranks.device.type == "cuda" else process_threads(spec, ranks)


class ImageNetInput:
    def __init__(self, folder: ImageNetFolder, spec: ImageNetRunSpec, ranks: Ranks):
        self.spec, self.device = spec, ranks.device
        self.gpu_decode = spec.decode == "gpu"
        if self.gpu_decode:
            available, why = gpu_decode_available()
            if not available:
                raise RuntimeError(f"run {spec.name}: decode 'gpu' is not possible here: {why}")
        local_batch = per_rank_batch(spec.batch_size, ranks.world_size)
        self.train_sampler = RankBatchSampler(len(folder.train), spec.batch_size, ranks.rank, ranks.world_size,
                                              spec.seed, spec.max_steps_per_epoch)
        val_sampler = ValShardSampler(len(folder.val), spec.eval_batch_size or local_batch, ranks.rank,
                                      ranks.world_size)
        if self.gpu_decode:
            train_set, val_set = EncodedTrainImages(folder.train, spec.seed), EncodedValImages(folder.val)
            collate = collate_encoded
        else:
            train_set = TrainImages(folder.train, spec.image_size, spec.seed)
            val_set = ValImages(folder.val, spec.image_size, spec.resize_size)
            collate = None
        workers = loader_workers(spec, ranks)
        options = dict(num_workers=workers, pin_memory=self.device.type == "cuda", collate_fn=collate,
                       persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
        self.train_loader = DataLoader(train_set, batch_sampler=self.train_sampler, **options)
        self.val_loader = DataLoader(val_set, batch_sampler=val_sampler, **options)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_sampler)

    def _to_device(self, batch, train: bool):
        if self.gpu_decode:
            encoded, geometry, labels, indices = batch
            if train:
                images = train_batch_on_device(encoded, geometry, self.spec.image_size, self.device)
            else:
                images = val_batch_on_device(encoded, self.spec.image_size, self.spec.resize_size, self.device)
        else:
            images, labels, indices = batch
            images = images.to(self.device, non_blocking=True)
        return images, labels.to(self.device, non_blocking=True), indices.to(self.device, non_blocking=True)

    def train_batches(self, epoch: int):
        self.train_sampler.set_epoch(epoch)
        for batch in self.train_loader:
            yield self._to_device(batch, train=True)

    def val_batches(self):
        for batch in self.val_loader:
            yield self._to_device(batch, train=False)
