"""Starting an ImageNet run: GPU slots first, then one process or a torchrun group.

- Inside torchrun (its environment variables are set): no slot is taken; the processes use
  the GPUs torchrun's parent was given.
- ``--nproc-per-node N`` > 1 outside torchrun: take N GPU slots on distinct devices (CUDA
  runs; a scheduler's CUDA_VISIBLE_DEVICES is kept), then start
  ``python -m torch.distributed.run --standalone --nproc_per_node N -m sortkd train-imagenet ...``
  and wait for it. ``--standalone`` picks a free rendezvous port, so several runs share a node.
- Otherwise: one process, one slot (CUDA), like ``python -m sortkd train``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

SLOT_ENV = "SORTKD_GPU_SLOT"


def take_gpu_slots(args, count: int) -> None:
    """Hold ``count`` GPU slots for this process's life; sets CUDA_VISIBLE_DEVICES before CUDA starts."""
    from ..gpu_slots import hold_gpu_slots

    kwargs = {"devices": args.gpu_devices.split(","), "jobs_per_device": args.jobs_per_device, "count": count}
    if args.gpu_lock_dir:
        kwargs["lock_dir"] = args.gpu_lock_dir
    lease = hold_gpu_slots(**kwargs)
    if lease.slots:
        os.environ[SLOT_ENV] = ",".join(map(str, lease.slots))


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
