# SortKD: the whole paper grid as one workflow.
#   snakemake --cores all --resources gpu=4                      # CIFAR-100 grid on a GPU box
#   snakemake --cores all --configfile config.demo.yaml          # offline CPU demo
#   snakemake --profile workflow/profiles/slurm                  # SLURM
import json
import re

from snakemake.utils import min_version, validate

from sortkd.grid import Grid

min_version("8.20")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")
GRID = Grid(config)
OUT = GRID.out
GPUS = GRID.gpus_per_job
THREADS = config["compute"]["threads"]
MEM_MB = config["compute"]["mem_mb"]
SORTKD = "python -m sortkd"


def never_matches_if_empty(names):
    """A wildcard regex matching exactly ``names`` (or nothing at all)."""
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


wildcard_constraints:
    method="[a-z_]+",
    variant="base|sort|swap",
    seed="[0-9]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/logits.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.report.output,
    default_target: True
