# Helper functions shared by the rules (kept apart from the rules, as Snakemake's linter asks).
import json
import os
import re


def imagenet_run(w):
    return IMAGENET.runs_by_path[f"{w.pair}/{w.method}/{w.variant}/seed{w.seed}"]


def never_matches_if_empty(names):
    """A wildcard regex matching exactly ``names`` (or nothing at all)."""
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


def prepare_data_args():
    d = config["data"]
    if d["source"] == "synthetic":
        s = d["synthetic"]
        return (f"--source synthetic --num-classes {s['num_classes']} --train-per-class "
                f"{s['train_per_class']} --test-per-class {s['test_per_class']} --seed {s['seed']}")
    return "--source cifar100" + (" --download" if d.get("download") else "")


def student_run(w):
    return GRID.student_runs_by_path[f"{w.pair}/{w.method}/{w.variant}/seed{w.seed}"]


def student_inputs(w):
    run = student_run(w)
    teacher = GRID.table[run.pair]["teacher"]
    inputs = {"data": GRID.data_file, "teacher": f"{GRID.teacher_dir(teacher)}/teacher.json"}
    if GRID.teacher_logits(run.pair) == "cache":
        inputs["cache"] = f"{GRID.logits_dir(teacher)}/meta.json"
    else:
        inputs["model"] = f"{GRID.teacher_dir(teacher)}/model.pt"
    return inputs
