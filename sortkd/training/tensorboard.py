"""TensorBoard curves of a run (optional: ``pip install -e ".[tensorboard]"``).

The event files go into the run folder, next to ``metrics.jsonl``, so that
``tensorboard --logdir results/<experiment>/students`` names each run by its folder
``<pair>/<method>/<variant>/seed<k>`` and shows base and sort side by side.

One point per epoch, at step = epoch. Resume-safe: the writer opens at the first epoch s it
is given and rewrites the folder's event files into one, keeping the points of a killed
attempt before step s only (with their wall times) and dropping the rest; the rows from s on
come from the trainer. So each epoch has exactly one point, for every TensorBoard reader
(no reliance on the readers' purge of orphaned steps). A resumed loop that re-feeds its
restored history starts at s = 1: the curve is then written again from the checkpoint's rows.

The trainer's use (main process only)::

    tb = TensorBoardLog(out_dir, spec.name) if spec.tensorboard else None  # after restoring the checkpoint
    for row in (history if tb else []): tb.add_epoch(row)                 # the restored epochs, rewritten
    if tb: tb.add_epoch(row)                                              # each epoch, after metrics.jsonl
    if tb: tb.close()                                                     # before returning (early stop too)
"""
from __future__ import annotations

from pathlib import Path

EXTRA_HINT = 'pip install -e ".[tensorboard]"'
EVENT_FILE_PREFIX = "events.out.tfevents."

# metrics.jsonl key -> TensorBoard tag; the "group/" prefix puts related curves in one section.
_NAMED_TAGS = {
    "lr": "lr",
    "train_top1": "top1/train",
    "test_top1": "top1/test",
    "test_top5": "top5/test",
    "ctkd_temperature": "ctkd/temperature",
    "ctkd_lambda": "ctkd/lambda",
    "teacher_wrong_frac": "teacher/wrong_share",
    "epoch_s": "time/epoch_s",
    "images_per_s": "time/images_per_s",
}


def tag_of(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key (loss_kd -> loss/kd; unknown keys -> other/<key>)."""
    if key.startswith("loss_"):
        return f"loss/{key[len('loss_'):]}"
    return _NAMED_TAGS.get(key, f"other/{key}")


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError("logging.tensorboard is on, but the tensorboard package is missing: "
                           f"install the extra with {EXTRA_HINT}") from None
    return SummaryWriter


class TensorBoardLog:
    def __init__(self, out_dir: Path, run_name: str):
        self._writer_class = _summary_writer_class()
        self.out_dir = Path(out_dir)
        self.run_name = run_name
        self._writer = None

    def _open(self, first_step: int):
        old_files = sorted(self.out_dir.glob(f"{EVENT_FILE_PREFIX}*"))
        kept = _scalars_before(self.out_dir, first_step) if old_files and first_step > 1 else []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        writer = self._writer_class(str(self.out_dir))
        writer.add_text("run", self.run_name, 0)
        for tag, step, value, wall_time in kept:
            writer.add_scalar(tag, value, step, walltime=wall_time)
        writer.flush()
        # Only now: a kill before this line leaves the kept points twice, never zero times
        # (and the next open keeps one of each).
        for old in old_files:
            old.unlink()
        return writer

    def add_epoch(self, row: dict) -> None:
        """Write one epoch's row of metrics.jsonl (every numeric key but ``epoch``) at step = epoch."""
        step = int(row["epoch"])
        if self._writer is None:
            self._writer = self._open(step)
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self._writer.add_scalar(tag_of(key), value, step)
        # A kill must not lose queued points: the epoch is on disk once metrics.jsonl is.
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _scalars_before(folder: Path, step: int) -> list[tuple[str, int, float, float]]:
    """(tag, step, value, wall time) of the scalars in ``folder``'s event files at steps < ``step``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # size_guidance 0 = keep every point (the default samples long curves down).
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    points = {(tag, e.step): (tag, e.step, e.value, e.wall_time) for tag in acc.Tags()["scalars"]
              for e in acc.Scalars(tag) if e.step < step}
    return [points[key] for key in sorted(points)]
