# Stage 2: each teacher is trained here (source: train) or imported from the public
# checkpoint archive (source: download). Either way teacher.json records its sha256 and
# its measured test accuracy before any student uses it. The checkpoints are protected(): a
# changed input does not silently overwrite a teacher; delete model.pt to redo it.

TRAINED_TEACHERS = GRID.teachers_by_source("train")
IMPORTED_TEACHERS = GRID.teachers_by_source("download")


rule download_teachers:
    output:
        config["teacher_archive"]["path"],
    params:
        url=GRID.teacher_archive_url,
        md5=(f"--md5 {config['teacher_archive']['md5']}" if config["teacher_archive"]["md5"] else ""),
    log:
        f"{OUT}/logs/download_teachers.log",
    benchmark:
        f"{OUT}/benchmarks/download_teachers.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/sortkd.yaml"
    shell:
        "python -m sortkd download-teachers --out {output} --url {params.url} {params.md5} > {log} 2>&1"


rule teacher_import:
    input:
        archive=config["teacher_archive"]["path"],
        data=GRID.data_file,
    output:
        model=protected(f"{OUT}/teachers/{{arch}}/model.pt"),
        info=f"{OUT}/teachers/{{arch}}/teacher.json",
    wildcard_constraints:
        arch=never_matches_if_empty(IMPORTED_TEACHERS),
    params:
        out_dir=lambda w, output: os.path.dirname(output.info),
        sha=lambda w: (f"--sha256 {GRID.teachers[w.arch]['sha256']}" if GRID.teachers[w.arch].get("sha256") else ""),
        device=config["compute"]["device"],
    log:
        f"{OUT}/logs/teacher_import/{{arch}}.log",
    benchmark:
        f"{OUT}/benchmarks/teacher_import/{{arch}}.tsv"
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        gpu=GPUS,
    conda:
        "../../envs/sortkd.yaml"
    shell:
        "python -m sortkd import-teacher --arch {wildcards.arch} --archive {input.archive} --data {input.data} "
        "--out-dir {params.out_dir} {params.sha} --device {params.device} > {log} 2>&1"


rule teacher_train:
    input:
        data=GRID.data_file,
    output:
        model=protected(f"{OUT}/teachers/{{arch}}/model.pt"),
        info=f"{OUT}/teachers/{{arch}}/teacher.json",
        summary=f"{OUT}/teachers/{{arch}}/summary.json",
        provenance=f"{OUT}/teachers/{{arch}}/provenance.json",
    wildcard_constraints:
        arch=never_matches_if_empty(TRAINED_TEACHERS),
    params:
        spec=teacher_spec_json,
        out_dir=lambda w, output: os.path.dirname(output.info),
        slots=GRID.gpu_slot_args(),
    log:
        f"{OUT}/logs/teacher_train/{{arch}}.log",
    benchmark:
        f"{OUT}/benchmarks/teacher_train/{{arch}}.tsv"
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        gpu=GPUS,
    conda:
        "../../envs/sortkd.yaml"
    shell:
        "python -m sortkd train --spec {params.spec:q} --out-dir {params.out_dir} {params.slots} > {log} 2>&1"
