"""Job body of the smoke workflow: note what Slurm gave this job, sleep, write it as JSON.

    record.py OUT MARKER SLEEP [INPUT ...]

MARKER gets one line "<SLURM_JOB_ID> <start time>" as soon as the job starts (appended, so
a retried job leaves one line per attempt); OUT is written atomically when the job ends.
"""
import json
import os
import socket
import sys
import time


def main(argv: list[str]) -> None:
    out, marker, sleep, inputs = argv[0], argv[1], float(argv[2]), argv[3:]
    start = time.time()
    job_id = os.environ.get("SLURM_JOB_ID", "")
    os.makedirs(os.path.dirname(marker) or ".", exist_ok=True)
    with open(marker, "a") as f:
        f.write(f"{job_id} {start:.3f}\n")
    time.sleep(sleep)
    record = {
        "slurm_job_id": job_id,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "host": socket.gethostname(),
        "start": start,
        "end": time.time(),
        "inputs": [json.load(open(p)) for p in inputs],
    }
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv[1:])
