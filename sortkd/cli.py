"""`python -m sortkd <command>`: the one entry point every Snakemake rule calls."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _add_gpu_slot_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GPU slots (only used with device cuda)")
    g.add_argument("--gpu-devices", default="0",
                   help="comma-separated device ids to share among concurrent jobs (default: 0)")
    g.add_argument("--jobs-per-device", type=int, default=1, help="concurrent jobs per GPU (default: 1)")
    g.add_argument("--gpu-lock-dir", default=None, help="folder of the slot lock files")


def hold_gpu_slots_for(args, device: str, count: int = 1) -> None:
    """Take the command's GPU slot(s) before CUDA starts (a scheduler's CUDA_VISIBLE_DEVICES is kept)."""
    if device != "cuda":
        return
    from sortkd.gpu_slots import hold_job_gpus

    hold_job_gpus(args.gpu_devices, args.jobs_per_device, args.gpu_lock_dir, count)


def _spec_keys_help() -> str:
    import dataclasses

    from sortkd.experiment.specs import RunSpec

    lines = ["run spec keys (a JSON object; see sortkd/experiment/specs.py):"]
    for f in dataclasses.fields(RunSpec):
        if f.default is not dataclasses.MISSING:
            default = f" (default {f.default!r})"
        elif f.default_factory is not dataclasses.MISSING:
            default = f" (default {f.default_factory()!r})"
        else:
            default = " (required)"
        lines.append(f"  {f.name}{default}")
    lines.append("example: python -m sortkd train --out-dir runs/t --spec "
                 "'{\"kind\": \"teacher\", \"name\": \"t\", \"data\": \"data/cifar100/arrays.npz\", "
                 "\"arch\": \"resnet20\"}'")
    return "\n".join(lines)


# --- commands ----------------------------------------------------------------------

def cmd_prepare_data(args) -> int:
    from sortkd.data.cifar import download_cifar100, extract_cifar_archive, read_cifar_python, save_arrays
    from sortkd.data.synthetic import write_cifar_archive
    from sortkd.files import write_json

    root = Path(args.root)
    if args.source == "synthetic":
        tgz = write_cifar_archive(root / "cifar-100-python.tar.gz", num_classes=args.num_classes,
                                  train_per_class=args.train_per_class,
                                  test_per_class=args.test_per_class, seed=args.seed)
        folder = extract_cifar_archive(tgz, root)
        verify = False
    else:
        folder = root / "cifar-100-python"
        if args.download:
            folder = download_cifar100(root)
        verify = True
    arrays = read_cifar_python(folder, verify_md5=verify)
    sha = save_arrays(arrays, Path(args.out))
    info = {"source": args.source, "sha256": sha, "num_classes": arrays.num_classes,
            "train": int(arrays.train_y.shape[0]), "test": int(arrays.test_y.shape[0])}
    write_json(Path(str(args.out) + ".json"), info)
    print(f"data: wrote {args.out} ({info['train']} train / {info['test']} test images, "
          f"{info['num_classes']} classes, sha256 {sha[:12]}…)")
    return 0


def cmd_train(args) -> int:
    from sortkd.experiment.specs import RunSpec

    spec = RunSpec.from_json(args.spec)
    hold_gpu_slots_for(args, spec.device)
    from sortkd.training.cifar import train_run

    train_run(spec, Path(args.out_dir), stop_after_epoch=args.stop_after_epoch)
    return 0


def cmd_download_teachers(args) -> int:
    from sortkd.teachers import download_teacher_archive

    download_teacher_archive(Path(args.out), url=args.url, md5=args.md5)
    return 0


def cmd_import_teacher(args) -> int:
    from sortkd.teachers import import_teacher

    info = import_teacher(arch=args.arch, out_dir=Path(args.out_dir), data=Path(args.data),
                          archive=Path(args.archive) if args.archive else None,
                          checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                          expected_sha256=args.sha256, device=args.device)
    print(f"teacher {args.arch}: imported, sha256 {info['checkpoint_sha256'][:12]}…, "
          f"measured test top-1 {info['test_top1']:.2f}%")
    return 0


def cmd_export_logits(args) -> int:
    hold_gpu_slots_for(args, args.device)
    import torch

    from sortkd.data.cifar import load_arrays
    from sortkd.training.loop import resolve_device
    from sortkd.data.views import DeviceCifar
    from sortkd.logit_cache import dataset_sha256, export_logits
    from sortkd.teachers import load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    teacher, info = load_teacher(Path(args.teacher_dir), args.arch, device)
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    data = DeviceCifar(load_arrays(Path(args.data)), device)
    meta = export_logits(teacher, info["checkpoint_sha256"], data, dataset_sha256(Path(args.data)),
                         Path(args.out_dir), dtype=args.dtype, batch_size=args.batch_size)
    tf32 = "" if meta["tf32_during_forward"] is None else ", TF32 off"
    print(f"export: done in {meta['seconds']} s (fp32 forward{tf32}), teacher test top-1 from the cache "
          f"{meta['teacher_test_top1']:.2f}% (teacher.json: {info['test_top1']:.2f}%)")
    return 0


def cmd_train_imagenet(args) -> int:
    from sortkd.training.launch import run

    return run(args)


def cmd_report(args) -> int:
    from sortkd.report.build import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sortkd",
        description="SortKD pipeline steps. Snakemake calls these; each also runs by hand.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare-data", help="read CIFAR-100 (or generate the demo set) into one .npz")
    p.add_argument("--source", choices=["cifar100", "synthetic"], required=True)
    p.add_argument("--root", required=True, help="folder holding (or receiving) cifar-100-python/")
    p.add_argument("--out", required=True, help="the .npz to write (plus <out>.json with its sha256)")
    p.add_argument("--download", action="store_true",
                   help="cifar100: download the archive with its MD5 check if it is not there")
    p.add_argument("--num-classes", type=int, default=100, help="synthetic: classes (default 100)")
    p.add_argument("--train-per-class", type=int, default=500, help="synthetic: default 500")
    p.add_argument("--test-per-class", type=int, default=100, help="synthetic: default 100")
    p.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("train", help="train a vanilla teacher or a distilled student (resumes if killed)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_spec_keys_help())
    p.add_argument("--spec", required=True, help="the run spec as JSON, or @file.json")
    p.add_argument("--out-dir", required=True, help="run folder: checkpoint, metrics, summary, provenance")
    p.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop (resumably) after this epoch; for tests and time-limited jobs")
    _add_gpu_slot_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("download-teachers", help="download the public cifar_teachers.tar")
    p.add_argument("--out", required=True, help="where to write the archive")
    p.add_argument("--url", default=None, help="override the release URL")
    p.add_argument("--md5", default=None, help="expected MD5 of the archive, if known")
    p.set_defaults(func=cmd_download_teachers)

    p = sub.add_parser("import-teacher", help="import a released checkpoint and measure its accuracy")
    p.add_argument("--arch", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--archive", help="cifar_teachers.tar (takes <arch>_vanilla/ckpt_epoch_240.pth)")
    src.add_argument("--checkpoint", help="a single checkpoint file")
    p.add_argument("--data", required=True, help="the prepared .npz, to measure test accuracy")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--sha256", default=None, help="expected sha256 of the checkpoint, if pinned")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_import_teacher)

    p = sub.add_parser("export-logits", help="export the teacher's logits for every training view")
    p.add_argument("--teacher-dir", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=4096)
    # The forward is always fp32 now; --exact stays accepted (and ignored) for older workflows.
    p.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None)
    _add_gpu_slot_args(p)
    p.set_defaults(func=cmd_export_logits)

    p = sub.add_parser("train-imagenet", help="ImageNet student or teacher evaluation run (DDP via torchrun)")
    from sortkd.training.launch import add_arguments as add_imagenet_arguments

    add_imagenet_arguments(p)
    _add_gpu_slot_args(p)
    p.set_defaults(func=cmd_train_imagenet)

    p = sub.add_parser("report", help="aggregate run summaries into tables, statistics and plots")
    from sortkd.report.build import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_report)
    # Commands that live with their own modules register themselves.
    from sortkd import gpu_check, status
    gpu_check.register(sub)
    status.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # One clear line for the Snakemake log instead of a traceback for expected failures.
        print(f"sortkd {args.command}: error: {exc}", file=sys.stderr)
        if os.environ.get("SORTKD_TRACEBACK"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
