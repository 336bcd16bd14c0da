"""Speed measurement: importable parts of the training-speed benchmark and of ``gpu-check``.

- ``workload``: the generated CIFAR-format data, a benchmark teacher and its logit cache;
- ``timing``: the step clock and the timing of the project's exact and fast paths (train_run);
- ``reference``: the reference-style loop of the public KD code (DataLoader + PIL, fp32);
- ``projection``: the full grid's size and the hours a measured speed gives it;
- ``concurrency``: several fast-path processes at once (the number behind jobs_per_device);
- ``benchmark``: the command line of ``benchmarks/train_speed.py``;
- ``decode``: JPEG decoding throughput, PIL against nvjpeg (ImageNet).

Speed is measured by these tools only, never asserted in a timed unit test.
"""
