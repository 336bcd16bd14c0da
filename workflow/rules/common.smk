# The shared objects of the workflow, built once and first (the Snakefile includes this file
# before the stages). The settled config (coerced, with the schema's defaults, validated, with
# one-line errors); the CIFAR grid and the ImageNet grid (tables validated, every run's spec
# built complete); the functions that compute inputs and params.
import os
import re

from sortkd.experiment.config import settle
from sortkd.experiment.grid import Grid, ImageNetGrid
from sortkd.experiment.specs import VARIANTS

config.update(settle(config))
GRID = Grid(config)
OUT = GRID.out
IMAGENET = ImageNetGrid(config, OUT)
PUBLISHED = config["report"]["published"]
GPUS = GRID.gpus_per_job
THREADS = config["compute"]["threads"]
MEM_MB = config["compute"]["mem_mb"]


def never_matches_if_empty(names):
    """A wildcard regex matching exactly ``names`` (or nothing at all)."""
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


def prepare_data_args():
    d = config["data"]
    if d["source"] == "synthetic":
        s = d["synthetic"]
        return (f"--source synthetic --num-classes {s['num_classes']} --train-per-class "
                f"{s['train_per_class']} --test-per-class {s['test_per_class']} --seed {s['seed']}")
    return "--source cifar100" + (" --download" if d["download"] else "")


def run_path(w):
    return f"{w.pair}/{w.method}/{w.variant}/seed{w.seed}"


def student_run(w):
    return GRID.student_runs_by_path[run_path(w)]


def student_spec_json(w):
    return GRID.student_spec(student_run(w)).to_json()


def teacher_spec_json(w):
    return GRID.teacher_spec(w.arch).to_json()


def imagenet_spec_json(w):
    return IMAGENET.spec(IMAGENET.runs_by_path[run_path(w)]).to_json()


def student_inputs(w):
    run = student_run(w)
    teacher = GRID.table[run.pair]["teacher"]
    inputs = {"data": GRID.data_file, "teacher": f"{GRID.teacher_dir(teacher)}/teacher.json"}
    if GRID.teacher_logits(run.pair) == "cache":
        inputs["cache"] = f"{GRID.logits_dir(teacher)}/meta.json"
    else:
        inputs["model"] = f"{GRID.teacher_dir(teacher)}/model.pt"
    return inputs
