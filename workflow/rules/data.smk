# Stage 1: CIFAR-100 (downloaded with its checksums) or the generated demo set -> arrays.npz


def prepare_data_args():
    d = config["data"]
    if d["source"] == "synthetic":
        s = d["synthetic"]
        return (f"--source synthetic --num-classes {s['num_classes']} --train-per-class "
                f"{s['train_per_class']} --test-per-class {s['test_per_class']} --seed {s['seed']}")
    return "--source cifar100" + (" --download" if d.get("download") else "")


rule prepare_data:
    output:
        arrays=GRID.data_file,
        info=GRID.data_file + ".json",
    params:
        root=config["data"]["root"],
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
        "{SORTKD} prepare-data {params.args} --root {params.root} --out {output.arrays} > {log} 2>&1"
