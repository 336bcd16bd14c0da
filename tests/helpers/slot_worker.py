"""A stand-in GPU job for tests/test_gpu_slots.py, run as a real separate process.

It takes GPU slots with sortkd.gpu_slots, writes what it got to a JSON record (once on
acquisition with "end": null, again at the end), holds the slots for --hold-s, and exits.
Times are time.monotonic(), which is one system-wide clock on Linux, so records from
different processes can be compared.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

MODULE_PATH = Path(__file__).resolve().parents[2] / "sortkd" / "gpu_slots.py"


def load_gpu_slots():
    # Load the module file directly: the test is about this module, and the package's
    # __init__ may pull in torch, which would make every worker slow to start.
    spec = importlib.util.spec_from_file_location("sortkd_gpu_slots_under_test", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def write_record(path: Path, record: dict) -> None:
    # Write then rename, so the test never reads a half-written file.
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", required=True, help="comma-separated device ids")
    parser.add_argument("--jobs-per-device", type=int, default=1)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--lock-dir", required=True)
    parser.add_argument("--hold-s", type=float, default=0.3)
    parser.add_argument("--timeout-s", type=float, default=None)
    parser.add_argument("--poll-s", type=float, default=0.05)
    parser.add_argument("--out", required=True, help="JSON record to write")
    args = parser.parse_args()

    gpu_slots = load_gpu_slots()
    out = Path(args.out)
    try:
        with gpu_slots.acquire_gpu_slots(args.devices.split(","), args.jobs_per_device,
                                         lock_dir=args.lock_dir, count=args.count,
                                         poll_s=args.poll_s, timeout_s=args.timeout_s) as lease:
            record = {
                "pid": os.getpid(),
                "start": time.monotonic(),
                "end": None,
                "slots": list(lease.slots),
                "devices": list(lease.devices),
                "cuda_visible_devices": lease.cuda_visible_devices,
                "env": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "preset": lease.preset,
                "torch_imported": "torch" in sys.modules,
            }
            write_record(out, record)
            time.sleep(args.hold_s)
            record["end"] = time.monotonic()
            write_record(out, record)
    except TimeoutError as exc:
        write_record(out, {"pid": os.getpid(), "error": str(exc)})
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
