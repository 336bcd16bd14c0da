"""CIFAR model zoo: the public mdistiller / RepDistiller architectures, returning logits only."""
from sortkd.models.checkpoint_import import CheckpointMismatchError, load_public_checkpoint
from sortkd.models.zoo import ARCHS, build

__all__ = ["ARCHS", "build", "load_public_checkpoint", "CheckpointMismatchError"]
