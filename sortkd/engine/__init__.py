"""The CIFAR training engine: epoch loop, schedule, checkpoints, metrics, provenance."""
