"""Throughput of JPEG decoding + training view: PIL on the CPU vs nvjpeg on the GPU.

    python -m sortkd.speed.decode --root /data/imagenet [--images 512 --batch 256]

Needs a CUDA GPU; without one it stops with a message saying so. The CPU figure is for one
core (one DataLoader worker); the GPU figure is for the training process alone, which then
needs no decoding workers at all.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from sortkd.data.imagenet import scan_imagenet
from sortkd.data.imagenet_input import EncodedTrainImages, collate_encoded, gpu_decode_available, train_batch_on_device
from sortkd.data.imagenet_input import TrainImages


def benchmark_decoding(root: str, num_images: int = 512, batch_size: int = 256, image_size: int = 224,
                       seed: int = 0) -> dict[str, float]:
    """Images per second of both decode paths on the first ``num_images`` training images."""
    available, why = gpu_decode_available()
    if not available:
        raise RuntimeError(f"the GPU JPEG decoding benchmark cannot run: {why}")
    files = scan_imagenet(root).train
    keys = [(1, i) for i in range(min(num_images, len(files)))]

    cpu_set = TrainImages(files, image_size, seed)
    start = time.perf_counter()
    for key in keys:
        cpu_set[key]
    cpu_s = time.perf_counter() - start

    gpu_set = EncodedTrainImages(files, seed)
    batches = [collate_encoded([gpu_set[k] for k in keys[i:i + batch_size]]) for i in range(0, len(keys), batch_size)]
    device = torch.device("cuda")
    train_batch_on_device(batches[0][0], batches[0][1], image_size, device)  # warm-up: nvjpeg handles
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for encoded, geometry, _, _ in batches:
        train_batch_on_device(encoded, geometry, image_size, device)
    torch.cuda.synchronize(device)
    gpu_s = time.perf_counter() - start
    return {"images": len(keys), "cpu_one_core_images_per_s": round(len(keys) / cpu_s, 1),
            "gpu_images_per_s": round(len(keys) / gpu_s, 1), "device": torch.cuda.get_device_name(device)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    try:
        result = benchmark_decoding(args.root, args.images, args.batch, args.image_size)
    except (RuntimeError, ValueError) as exc:
        print(f"decode benchmark: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
