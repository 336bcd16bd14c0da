# SortKD: the whole paper grid as one workflow.
#   snakemake --cores all --resources gpu=4                      # CIFAR-100 grid on a GPU box
#   snakemake --cores all --configfile config.demo.yaml          # offline CPU demo
#   snakemake --profile workflow/profiles/slurm                  # SLURM
from snakemake.utils import min_version, validate

import yaml

from sortkd.experiment.config import coerce
from sortkd.experiment.grid import Grid
from sortkd.experiment.grid import ImageNetGrid

min_version("8.20")


# config.yaml is the default; a --configfile on the command line replaces it rather than being
# merged into it (a merge would leak e.g. config.yaml's methods into a smaller custom grid).
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


CONFIG_SCHEMA = "workflow/schemas/config.schema.yaml"
config.update(coerce(config, yaml.safe_load(open(CONFIG_SCHEMA))))
validate(config, CONFIG_SCHEMA)
GRID = Grid(config)
OUT = GRID.out
IMAGENET = ImageNetGrid(config, OUT)
GPUS = GRID.gpus_per_job
THREADS = config["compute"]["threads"]
MEM_MB = config["compute"]["mem_mb"]
wildcard_constraints:
    method="[a-z_]+",
    variant="base|sort|swap",
    seed="[0-9]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/logits.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/imagenet.smk"


rule all:
    input:
        rules.report.output,
        rules.imagenet_report.output if IMAGENET.enabled else [],
    default_target: True
