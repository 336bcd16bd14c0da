# SortKD: the whole paper grid as one workflow.
#   snakemake --cores all --resources gpu=4                      # CIFAR-100 grid on a GPU box
#   snakemake --cores all --configfile config.demo.yaml          # offline CPU demo
#   snakemake --profile workflow/profiles/slurm                  # SLURM
# The config, the tables and every run's spec are settled in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("8.20")


# config.yaml is the default; a --configfile on the command line replaces it rather than being
# merged into it (a merge would leak e.g. config.yaml's methods into a smaller custom grid).
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/logits.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/imagenet.smk"


wildcard_constraints:
    method="[a-z_]+",
    variant="|".join(VARIANTS),
    seed="[0-9]+",


rule all:
    input:
        rules.report.output,
        rules.imagenet_report.output if IMAGENET.enabled else [],
    default_target: True
