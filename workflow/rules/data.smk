# Stage 1: CIFAR-100 (downloaded with its checksums) or the generated demo set -> arrays.npz


rule prepare_data:
    output:
        arrays=GRID.data_file,
        info=f"{GRID.data_file}.json",
    params:
        root=lambda w, output: os.path.dirname(output.arrays),
        args=prepare_data_args(),
    log:
        f"{OUT}/logs/prepare_data.log",
    benchmark:
        f"{OUT}/benchmarks/prepare_data.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/sortkd.yaml"
    shell:
        "python -m sortkd prepare-data {params.args} --root {params.root} --out {output.arrays} > {log} 2>&1"
