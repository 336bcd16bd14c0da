"""The ImageNet path: folder reader, views, models, distributed training, the recipe table.

``spec`` (the run description) → ``command`` / ``launcher`` (slots, torchrun) → ``trainer``
(epoch loop) built on ``input_pipeline`` (``folder``, ``views``, ``images``, ``gpu_decode``,
``sampler``), ``models`` (+ ``mobilenetv1``), ``distributed`` + ``global_bn`` +
``epoch_sums`` + ``evaluate`` (cross-rank exactness), and ``table`` (workflow/tables/imagenet.yaml).
"""
