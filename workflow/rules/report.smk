# Stage 5: runs.csv, paper-style tables, paired deltas, plots; captions for `snakemake --report`.

REPORT_DIR = OUT
STUDENT_SUMMARIES = [f"{GRID.student_dir(r)}/summary.json" for r in GRID.student_runs()]


rule report:
    input:
        summaries=STUDENT_SUMMARIES,
    output:
        runs=report(f"{REPORT_DIR}/runs.csv", caption="../report/table.rst", category="Tables"),
        table_md=report(f"{REPORT_DIR}/table.md", caption="../report/table.rst", category="Tables"),
        table_csv=f"{REPORT_DIR}/table.csv",
        table_tex=f"{REPORT_DIR}/table.tex",
        deltas=report(f"{REPORT_DIR}/deltas.csv", caption="../report/deltas.rst", category="Tables"),
        forest=report(f"{REPORT_DIR}/plots/forest.png", caption="../report/forest.rst", category="Plots"),
        wrong_share=report(f"{REPORT_DIR}/plots/wrong_share_vs_delta.png",
                           caption="../report/wrong_share.rst", category="Plots"),
        curves=[report(f"{REPORT_DIR}/plots/curves_{p}.png", caption="../report/curves.rst",
                       category="Curves") for p in GRID.pairs],
    params:
        out_dir=lambda w, output: os.path.dirname(output.runs),
        experiment=config["experiment"],
        seeds=" ".join(map(str, GRID.seeds)),
        published=f"--published {PUBLISHED}" if PUBLISHED else "",
    log:
        f"{OUT}/logs/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/sortkd.yaml"
    shell:
        "python -m sortkd report --summaries {input.summaries} --out-dir {params.out_dir} "
        "--experiment {params.experiment} --seeds {params.seeds} {params.published} > {log} 2>&1"
