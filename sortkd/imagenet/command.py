"""`python -m sortkd train-imagenet`: train one ImageNet student (resumes if restarted).

    python -m sortkd train-imagenet --spec JSON|@spec.json --out-dir DIR [--nproc-per-node N]
    torchrun --standalone --nproc_per_node N -m sortkd train-imagenet --spec ... --out-dir DIR

The spec keys are documented in ``sortkd.imagenet.spec``.
"""
from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--spec", required=True, help="the ImageNet run spec as JSON, or @file.json")
    parser.add_argument("--out-dir", required=True, help="run folder: checkpoint, metrics, summary, provenance")
    parser.add_argument("--stop-after-epoch", type=int, default=None,
                        help="stop (resumably) after this epoch; for tests and time-limited jobs")
    parser.add_argument("--nproc-per-node", type=int, default=1,
                        help="processes (GPUs) of this run; >1 starts torchrun itself after taking that many "
                             "GPU slots (default 1; ignored inside torchrun)")


def run(args) -> int:
    from .distributed import under_torchrun
    from .launcher import run_torchrun, take_gpu_slots, torchrun_command
    from .sampler import per_rank_batch
    from .spec import ImageNetRunSpec

    spec = ImageNetRunSpec.from_json(args.spec)
    if args.nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    if not under_torchrun():
        per_rank_batch(spec.batch_size, args.nproc_per_node)  # fail before taking GPUs
        if spec.device == "cuda":
            take_gpu_slots(args, args.nproc_per_node)
        if args.nproc_per_node > 1:
            return run_torchrun(torchrun_command(args.nproc_per_node, json.dumps(spec.to_dict()), args.out_dir,
                                                 args.stop_after_epoch))
    from .distributed import init_ranks, shutdown
    from .trainer import train_imagenet

    ranks = init_ranks(spec.device)
    try:
        train_imagenet(spec, Path(args.out_dir), ranks, stop_after_epoch=args.stop_after_epoch)
    finally:
        shutdown(ranks)
    return 0
