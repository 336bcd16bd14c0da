"""`python -m sortkd train-imagenet`: train one ImageNet student (resumes if restarted).

    python -m sortkd train-imagenet --spec JSON|@spec.json --out-dir DIR [--nproc-per-node N]
    torchrun --standalone --nproc_per_node N -m sortkd train-imagenet --spec ... --out-dir DIR

The spec keys are documented in ``sortkd.experiment.specs``.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path


# --- command ------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--spec", required=True, help="the ImageNet run spec as JSON, or @file.json")
    parser.add_argument("--out-dir", required=True, help="run folder: checkpoint, metrics, summary, provenance")
    parser.add_argument("--stop-after-epoch", type=int, default=None,
                        help="stop (resumably) after this epoch; for tests and time-limited jobs")
    parser.add_argument("--nproc-per-node", type=int, default=1,
                        help="processes (GPUs) of this run; >1 starts torchrun itself after taking that many "
                             "GPU slots (default 1; ignored inside torchrun)")


def run(args) -> int:
    from sortkd.cli import hold_gpu_slots_for
    from sortkd.data.imagenet import per_rank_batch
    from sortkd.experiment.specs import ImageNetRunSpec
    from sortkd.training.distributed import under_torchrun

    spec = ImageNetRunSpec.from_json(args.spec)
    if args.nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    if not under_torchrun():
        per_rank_batch(spec.batch_size, args.nproc_per_node)  # fail before taking GPUs
        hold_gpu_slots_for(args, spec.device, args.nproc_per_node)
        if args.nproc_per_node > 1:
            return run_torchrun(torchrun_command(args.nproc_per_node, json.dumps(spec.to_dict()), args.out_dir,
                                                 args.stop_after_epoch))
    from sortkd.training.distributed import init_ranks, shutdown
    from sortkd.training.imagenet import train_imagenet

    ranks = init_ranks(spec.device)
    try:
        train_imagenet(spec, Path(args.out_dir), ranks, stop_after_epoch=args.stop_after_epoch)
    finally:
        shutdown(ranks)
    return 0


# --- launcher -----------------------------------------------------------------

def torchrun_command(nproc: int, spec_json: str, out_dir: str, stop_after_epoch: int | None) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "sortkd", "train-imagenet", "--spec", spec_json, "--out-dir", str(out_dir)]
    if stop_after_epoch is not None:
        command += ["--stop-after-epoch", str(stop_after_epoch)]
    return command


def run_torchrun(command: list[str]) -> int:
    """Run the torchrun group; a SIGTERM/SIGINT to this process (SLURM pre-emption) is passed on."""
    child = subprocess.Popen(command)

    def forward(signum, _frame):
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
