# ImageNet (off unless config imagenet.enabled): one multi-GPU job per (pair, method, variant,
# seed). The job runs torchrun itself with imagenet.gpus_per_run processes; locally it first
# takes that many GPU slots, under SLURM it keeps the GPUs Slurm gave it (one node).


rule imagenet_student:
    output:
        summary=f"{IMAGENET.out}/students/{{pair}}/{{method}}/{{variant}}/seed{{seed}}/summary.json",
        provenance=f"{IMAGENET.out}/students/{{pair}}/{{method}}/{{variant}}/seed{{seed}}/provenance.json",
    wildcard_constraints:
        pair=never_matches_if_empty(IMAGENET.pairs),
    params:
        spec=imagenet_spec_json,
        out_dir=lambda w, output: os.path.dirname(output.summary),
        nproc=IMAGENET.gpus_per_run,
        slots=GRID.gpu_slot_args(),
    log:
        f"{OUT}/logs/imagenet_student/{{pair}}/{{method}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/imagenet_student/{{pair}}/{{method}}/{{variant}}/seed{{seed}}.tsv"
    threads: IMAGENET.section["threads"]
    resources:
        mem_mb=IMAGENET.section["mem_mb"],
        gpu=IMAGENET.gpu_resource,
        nodes=1,
    conda:
        "../../envs/sortkd.yaml"
    shell:
        "python -m sortkd train-imagenet --spec {params.spec:q} --out-dir {params.out_dir} "
        "--nproc-per-node {params.nproc} {params.slots} > {log} 2>&1"


rule imagenet_report:
    input:
        summaries=[f"{IMAGENET.run_dir(r)}/summary.json" for r in IMAGENET.runs()],
    output:
        runs=report(f"{IMAGENET.out}/runs.csv", caption="../report/table.rst", category="ImageNet"),
        table_md=report(f"{IMAGENET.out}/table.md", caption="../report/table.rst", category="ImageNet"),
        table_csv=f"{IMAGENET.out}/table.csv",
        table_tex=f"{IMAGENET.out}/table.tex",
        deltas=f"{IMAGENET.out}/deltas.csv",
        forest=report(f"{IMAGENET.out}/plots/forest.png", caption="../report/forest.rst", category="ImageNet"),
        wrong_share=f"{IMAGENET.out}/plots/wrong_share_vs_delta.png",
        curves=[f"{IMAGENET.out}/plots/curves_{p}.png" for p in IMAGENET.pairs],
    params:
        out_dir=lambda w, output: os.path.dirname(output.runs),
        seeds=" ".join(map(str, IMAGENET.seeds)),
        published=f"--published {PUBLISHED}" if PUBLISHED else "",
    log:
        f"{OUT}/logs/imagenet_report.log",
    benchmark:
        f"{OUT}/benchmarks/imagenet_report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/sortkd.yaml"
    shell:
        "python -m sortkd report --summaries {input.summaries} --out-dir {params.out_dir} "
        "--experiment imagenet --seeds {params.seeds} {params.published} > {log} 2>&1"
