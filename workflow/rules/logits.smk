# Stage 3: the teacher's logits for every training view (162 per image) and the test set,
# exported once per teacher and read by every student of that teacher. The teacher always runs
# in fp32 (whatever compute.precision says); cache_dtype is the storage. The caches (~1.6 GB for
# CIFAR-100) are protected(): delete them by hand to export again.


rule logits_export:
    input:
        model=f"{OUT}/teachers/{{arch}}/model.pt",
        info=f"{OUT}/teachers/{{arch}}/teacher.json",
        data=GRID.data_file,
    output:
        train=protected(f"{OUT}/logits/{{arch}}/train_logits.npy"),
        test=protected(f"{OUT}/logits/{{arch}}/test_logits.npy"),
        meta=f"{OUT}/logits/{{arch}}/meta.json",
    params:
        teacher_dir=lambda w, input: os.path.dirname(input.info),
        out_dir=lambda w, output: os.path.dirname(output.meta),
        dtype=GRID.cache_dtype,
        device=config["compute"]["device"],
        slots=GRID.gpu_slot_args(),
    log:
        f"{OUT}/logs/logits_export/{{arch}}.log",
    benchmark:
        f"{OUT}/benchmarks/logits_export/{{arch}}.tsv"
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        gpu=GPUS,
    conda:
        "../../envs/sortkd.yaml"
    shell:
        "python -m sortkd export-logits --teacher-dir {params.teacher_dir} --arch {wildcards.arch} "
        "--data {input.data} --out-dir {params.out_dir} --dtype {params.dtype} --device {params.device} "
        "--threads {threads} {params.slots} > {log} 2>&1"
