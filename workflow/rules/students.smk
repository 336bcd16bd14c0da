# Stage 4: one job per (pair, method, variant, seed). The job checkpoints every epoch and
# resumes from its checkpoint when rerun after a kill or a preemption. Only files written at
# the very end are declared outputs: a killed job leaves none of them, so a plain rerun
# resumes (no --rerun-incomplete needed), and Snakemake never deletes the checkpoint or the
# live metrics.jsonl (the report reads it next to summary.json).


rule student_train:
    input:
        unpack(student_inputs),
    output:
        summary=f"{OUT}/students/{{pair}}/{{method}}/{{variant}}/seed{{seed}}/summary.json",
        provenance=f"{OUT}/students/{{pair}}/{{method}}/{{variant}}/seed{{seed}}/provenance.json",
    wildcard_constraints:
        pair=never_matches_if_empty(GRID.pairs),
    params:
        spec=student_spec_json,
        out_dir=lambda w, output: os.path.dirname(output.summary),
        slots=GRID.gpu_slot_args(),
    log:
        f"{OUT}/logs/student_train/{{pair}}/{{method}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{OUT}/benchmarks/student_train/{{pair}}/{{method}}/{{variant}}/seed{{seed}}.tsv"
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        gpu=GPUS,
    conda:
        "../../envs/sortkd.yaml"
    shell:
        "python -m sortkd train --spec {params.spec:q} --out-dir {params.out_dir} {params.slots} > {log} 2>&1"
