"""CIFAR model zoo: the public mdistiller / RepDistiller architectures, returning logits only."""
from .checkpoint_import import CheckpointMismatchError, load_public_checkpoint
from .registry import ARCHS, build

__all__ = ["ARCHS", "build", "load_public_checkpoint", "CheckpointMismatchError"]
