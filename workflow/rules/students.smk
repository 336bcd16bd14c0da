# Stage 4: one job per (pair, method, variant, seed). The job checkpoints every epoch and
# resumes from its checkpoint when rerun after a kill or a preemption.


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


rule student_train:
    input:
        unpack(student_inputs),
    output:
        summary=f"{OUT}/students/{{pair}}/{{method}}/{{variant}}/seed{{seed}}/summary.json",
        metrics=f"{OUT}/students/{{pair}}/{{method}}/{{variant}}/seed{{seed}}/metrics.jsonl",
        provenance=f"{OUT}/students/{{pair}}/{{method}}/{{variant}}/seed{{seed}}/provenance.json",
    wildcard_constraints:
        pair=never_matches_if_empty(GRID.pairs),
    params:
        spec=lambda w: json.dumps(GRID.student_spec(student_run(w)).to_dict(), sort_keys=True),
        out_dir=lambda w: GRID.student_dir(student_run(w)),
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
        "{SORTKD} train --spec {params.spec:q} --out-dir {params.out_dir} {params.slots} > {log} 2>&1"
