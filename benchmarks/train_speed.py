#!/usr/bin/env python
"""Training-speed benchmark: the command line of ``sortkd.speed.benchmark``.

    python benchmarks/train_speed.py --device cpu --quick
    python benchmarks/train_speed.py --device cuda
    python benchmarks/train_speed.py --device cuda --concurrency 1,2,4,8

The measuring parts live in the ``sortkd.speed`` package; ``--help`` lists the options and
docs/benchmarks.md explains the method and the figures.
"""
import sys
from pathlib import Path

# Run from a checkout without installing it: import the package next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sortkd.speed.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
