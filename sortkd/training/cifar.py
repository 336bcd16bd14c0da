"""The CIFAR entry of the epoch loop: vanilla teachers and distilled students.

It supplies the loop (``sortkd.training.loop.Trainer``) with the device-resident batches and
their views, the teacher's logits (online or from the logit cache) and the test set. Teachers
also get ``model.pt`` and ``teacher.json`` in their run folder.

Views: a sample's "weak" view is the standard crop + flip (``sortkd.data.views``). A method
that also asks for the "strong" view (MLKD, ``method.views``) gets, per sample, an independent
crop + flip followed by RandAugment + Cutout (``sortkd.data.randaugment``), all drawn from the
(seed, "strong", epoch) stream: base and sort runs of a seed see the same strong views. Random
strong views cannot be cached, so their teacher logits always come from the teacher run online
(fp32); the weak view's still come from the logit cache when the spec says so.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sortkd.data.cifar import load_arrays
from sortkd.data.randaugment import draw_strong
from sortkd.data.views import DeviceCifar
from sortkd.experiment.specs import RunSpec
from sortkd.logit_cache import TeacherLogitCache, dataset_sha256
from sortkd.models import build
from sortkd.seeding import epoch_order, epoch_views, generator, seeded_global_rng
from sortkd.teachers import load_teacher, read_teacher_info, save_teacher_model, write_teacher_info
from sortkd.training.loop import Batch, Trainer, fp32_logits, memory_format_for, resolve_device


def build_model(spec: RunSpec, num_classes: int) -> torch.nn.Module:
    # Initial weights depend on (seed, "init") only: every variant of a seed starts alike.
    with seeded_global_rng(spec.seed, "init"):
        return build(spec.arch, num_classes)


class OnlineTeacher:
    """Runs the teacher (eval mode, no gradients, fp32) on the student's own images, any view."""

    kind = "online"

    def __init__(self, teacher_dir: Path, arch: str, device: torch.device, memory_format):
        self.model, self.info = load_teacher(teacher_dir, arch, device)
        self.model = self.model.to(memory_format=memory_format)

    def logits(self, batch: Batch, view: str) -> torch.Tensor:
        return fp32_logits(self.model, batch.inputs[view])


class CachedTeacher:
    """Gathers each batch's logits by (sample index, view id); never builds the teacher."""

    kind = "cache"
    views = ("weak",)  # the cache holds every crop + flip view, not the random strong ones

    def __init__(self, teacher_dir: Path, cache_dir: Path, data_sha256: str, num_train: int,
                 num_classes: int, device: torch.device):
        self.info = read_teacher_info(teacher_dir)
        self.cache = TeacherLogitCache(cache_dir, self.info["checkpoint_sha256"], data_sha256,
                                       num_train, num_classes, device)

    def logits(self, batch: Batch, view: str) -> torch.Tensor:
        return self.cache.train_logits(batch.index, batch.view_ids)


class TeacherByView:
    """The teacher's logits of each view from its own source: the cache or the online teacher."""

    def __init__(self, sources: dict):
        self.sources = sources

    @property
    def info(self) -> dict:
        """teacher.json: every source reads the same teacher."""
        return next(iter(self.sources.values())).info

    def logits(self, batch: Batch, view: str) -> torch.Tensor:
        return self.sources[view].logits(batch, view)

    def kinds(self) -> dict[str, str]:
        return {view: source.kind for view, source in self.sources.items()}

    def describe(self) -> str:
        return ", ".join(f"{view} {kind}" for view, kind in self.kinds().items())


def strong_epoch_draws(seed: int, epoch: int, num_samples: int, num_views: int):
    """The strong view's choices for one epoch, indexed by sample id: a crop + flip view id of its
    own (the upstream pipelines draw their crops independently) and the RandAugment + Cutout draws."""
    stream = generator(seed, "strong", epoch)
    draws = draw_strong(num_samples, stream)
    view_ids = torch.randint(0, num_views, (num_samples,), generator=stream)
    return view_ids, draws


class CifarTrainer(Trainer):
    """``device`` defaults to the spec's; the placement tests pass the "meta" device."""

    views = ("weak", "strong")

    def __init__(self, spec: RunSpec, out_dir: Path, device: torch.device | None = None):
        if spec.threads:
            torch.set_num_threads(spec.threads)
        device = resolve_device(spec.device) if device is None else device
        self.data = DeviceCifar(load_arrays(Path(spec.data)), device)
        self.dataset, self.kind = spec.dataset, spec.kind
        model = build_model(spec, self.data.num_classes).to(device, memory_format=memory_format_for(spec.precision))
        super().__init__(spec, out_dir, device, model)
        self.teacher = self._teacher_source()

    def _teacher_source(self):
        spec, data = self.spec, self.data
        if spec.kind == "teacher":
            return None
        sources: dict = {}
        if spec.teacher_logits == "cache":
            cached = CachedTeacher(Path(spec.teacher_dir), Path(spec.cache_dir), dataset_sha256(Path(spec.data)),
                                   data.num_train, data.num_classes, self.device)
            sources = {v: cached for v in self.method_views if v in cached.views}
        if len(sources) < len(self.method_views):
            # Only the views the cache cannot hold (the random strong view) pay a teacher forward.
            online = OnlineTeacher(Path(spec.teacher_dir), spec.teacher_arch, self.device, self.memory_format)
            sources.update({v: online for v in self.method_views if v not in sources})
        return TeacherByView({v: sources[v] for v in self.method_views})

    def train_batches(self, epoch: int):
        spec, data = self.spec, self.data
        order = epoch_order(spec.seed, epoch, data.num_train).to(self.device)
        views = epoch_views(spec.seed, epoch, data.num_train, data.num_views).to(self.device)
        strong = None
        if "strong" in self.method_views:
            strong_views, strong_draws = strong_epoch_draws(spec.seed, epoch, data.num_train, data.num_views)
            strong = strong_views.to(self.device), strong_draws.to(self.device)
        for first in range(0, data.num_train, spec.batch_size):
            index = order[first:first + spec.batch_size]
            view_ids = views[index]
            images, target = data.train_batch(index, view_ids)
            inputs = {"weak": images.contiguous(memory_format=self.memory_format)}
            if strong is not None:
                inputs["strong"] = data.strong_batch(index, strong[0][index], strong[1][index]).contiguous(
                    memory_format=self.memory_format)
            yield Batch(inputs, target, index, view_ids)

    def teacher_logits(self, batch: Batch, view: str) -> torch.Tensor:
        return self.teacher.logits(batch, view)

    def evaluation_batches(self):
        test_x, test_y = self.data.test_x, self.data.test_y
        return zip(test_x.split(1000), test_y.split(1000))

    def samples_per_epoch(self) -> int:
        return self.data.num_train

    def teacher_summary(self) -> dict | None:
        if self.teacher is None:
            return None
        return {"teacher_top1": self.teacher.info["test_top1"], "teacher_logits": self.spec.teacher_logits}

    def settings_extras(self) -> str:
        return "" if self.teacher is None else f", teacher logits: {self.teacher.describe()}"

    def provenance_extras(self) -> dict:
        return {} if self.teacher is None else {"teacher_logits_by_view": self.teacher.kinds()}

    def finish(self, summary: dict) -> None:
        if self.spec.kind != "teacher":
            return
        spec = self.spec
        sha = save_teacher_model(self.out_dir, self.model, spec.epochs)
        write_teacher_info(self.out_dir, {
            "arch": spec.arch, "num_classes": self.data.num_classes, "source": "train",
            "checkpoint_sha256": sha, "test_top1": summary["final_top1"],
            "test_top5": summary["final_top5"], "data_sha256": dataset_sha256(Path(spec.data)),
        })


def train_run(spec: RunSpec, out_dir: Path, stop_after_epoch: int | None = None,
              step_losses: list | None = None) -> dict | None:
    """Train (or resume) the run; returns the summary, or None when stopped early on request.

    ``step_losses``, if given, receives each step's total loss as a detached device tensor
    (no sync): the equivalence tests compare trajectories with it.
    """
    trainer = CifarTrainer(spec, out_dir)
    trainer.step_losses = step_losses
    return trainer.run(stop_after_epoch)
