"""The full CIFAR-100 grid and the hours a measured speed gives it.

The grid is config.yaml with workflow/tables/pairs_cifar100.yaml: 11 pairs x 4 methods x 2
variants x 3 seeds = 264 student runs of 240 epochs of ceil(50000 / 64) = 782 steps, and one
logit export per teacher (6 teachers). Every projection assumes that each run costs what the
measured student costs and each export what the measured teacher's export costs.
"""
from __future__ import annotations

import math

GRID_RUNS = 264
GRID_EPOCHS = 240
GRID_STEPS_PER_EPOCH = 782
GRID_TEACHERS = 6
CIFAR100_TRAIN = 50000
GRID = {"runs": GRID_RUNS, "epochs": GRID_EPOCHS, "steps_per_epoch": GRID_STEPS_PER_EPOCH,
        "teachers": GRID_TEACHERS, "train_images": CIFAR100_TRAIN}
# jobs_per_device recommendation: the fewest runs per GPU within this fraction of the best.
NEAR_BEST = 0.10


def grid_step_hours(ms_per_step: float) -> float:
    """Hours of the grid's training steps run one after another (no evaluation, no checkpoint)."""
    return GRID_RUNS * GRID_EPOCHS * GRID_STEPS_PER_EPOCH * ms_per_step / 1000.0 / 3600.0


def export_projection(export_s: float | None, num_train: int, dtype: str | None) -> dict | None:
    """The measured export scaled to 50 000 training images, and to the grid's 6 teachers."""
    if export_s is None:
        return None
    from sortkd.data.views import NUM_VIEWS

    views = num_train * NUM_VIEWS
    per_teacher_s = export_s * CIFAR100_TRAIN / num_train
    return {"seconds": round(export_s, 3), "images": num_train, "views": views,
            "views_per_s": round(views / export_s, 1), "dtype": dtype,
            "projected_s_per_teacher": round(per_teacher_s, 1),
            "projected_hours_all_teachers": GRID_TEACHERS * per_teacher_s / 3600.0}


def aggregate_grid_hours(steps_per_s: float) -> float:
    """Hours of the grid's training steps at an aggregate rate of ``steps_per_s`` (one GPU)."""
    return GRID_RUNS * GRID_EPOCHS * GRID_STEPS_PER_EPOCH / steps_per_s / 3600.0


def epoch_overhead_s(epoch_s: float, steps: int, ms_per_step: float) -> float:
    """What a measured epoch spent outside its training steps (evaluation, checkpoint, the
    epoch's first step). Timing noise can make it slightly negative: that reads as none."""
    return max(0.0, epoch_s - steps * ms_per_step / 1000.0)


def cifar_epoch_seconds(ms_per_step: float, overhead_s: float) -> float:
    """Seconds per CIFAR-100 epoch of one run: 782 steps plus the per-epoch overhead."""
    return GRID_STEPS_PER_EPOCH * ms_per_step / 1000.0 + overhead_s


def grid_hours(runs_per_gpu: int, ms_per_step_each: float, overhead_s: float, gpus: int,
               export_s_per_teacher: float) -> float:
    """Wall hours of the grid on ``gpus`` GPUs running ``runs_per_gpu`` runs each.

    Runs go in waves of ``runs_per_gpu * gpus`` (all runs are assumed equally long), each run
    at ``ms_per_step_each`` measured with that many processes on one GPU; the 6 exports run
    first, one per GPU at a time.
    """
    if runs_per_gpu < 1 or gpus < 1:
        raise ValueError(f"runs_per_gpu and gpus must be >= 1, got {runs_per_gpu} and {gpus}")
    waves = math.ceil(GRID_RUNS / (runs_per_gpu * gpus))
    run_s = GRID_EPOCHS * cifar_epoch_seconds(ms_per_step_each, overhead_s)
    export_rounds = math.ceil(GRID_TEACHERS / gpus)
    return (waves * run_s + export_rounds * export_s_per_teacher) / 3600.0


def recommend_jobs_per_device(hours_by_runs: dict[int, float], near_best: float = NEAR_BEST) -> int:
    """The fewest runs per GPU whose grid hours are within ``near_best`` of the best: more
    processes cost GPU memory (a cache copy each) for a gain below that."""
    if not hours_by_runs:
        raise ValueError("no concurrency measurement to recommend jobs_per_device from")
    best = min(hours_by_runs.values())
    return min(n for n, hours in hours_by_runs.items() if hours <= best * (1.0 + near_best))
