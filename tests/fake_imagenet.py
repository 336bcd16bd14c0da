"""A tiny fake ImageNet folder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) written with PIL.

Used by tests/test_imagenet.py and by the DAG dry-run test. Images have varied sizes and
aspect ratios (so RandomResizedCrop has something to do), a class-dependent colour plus noise,
and the first training image of class 0 is grayscale (ImageNet has some).

    python -m tests.fake_imagenet ROOT [--classes 3 --train-per-class 8 --val-per-class 4]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def wnid(index: int) -> str:
    return f"n{index + 1:08d}"


def _image(rng: np.random.Generator, label: int, num_classes: int) -> Image.Image:
    # Coarse random structure (a 4x4 grid, smoothly upsampled) survives the downsampling of
    # deep networks, so batch statistics stay well conditioned even at tiny image sizes.
    height, width = (int(v) for v in rng.integers(32, 65, size=2))
    hue = np.array([255 * label / num_classes, 255 - 255 * label / num_classes, 128.0])
    coarse = np.clip(hue + rng.normal(0, 60, size=(4, 4, 3)), 0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC), dtype=np.float64)
    pixels = smooth + rng.normal(0, 10, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_fake_imagenet(root: str | Path, num_classes: int = 3, train_per_class: int = 8,
                       val_per_class: int = 4, seed: int = 0) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label in range(num_classes):
            folder = root / split / wnid(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = _image(rng, label, num_classes)
                if split == "train" and label == 0 and i == 0:
                    image = image.convert("L")
                image.save(folder / f"{wnid(label)}_{split}_{i}.JPEG", quality=90)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--val-per-class", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_fake_imagenet(args.root, args.classes, args.train_per_class, args.val_per_class, args.seed)


if __name__ == "__main__":
    main()
