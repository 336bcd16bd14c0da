"""CIFAR arrays resident on the training device, with batches built by index."""
from __future__ import annotations

import torch

from ..data.augment import NUM_VIEWS, normalize_images, pad_images, render_views
from ..data.cifar import CifarArrays


class DeviceCifar:
    """uint8 training images (zero-padded once) and normalized test images on one device."""

    num_views = NUM_VIEWS

    def __init__(self, arrays: CifarArrays, device: torch.device):
        self.device = device
        self.num_classes = arrays.num_classes
        train_x = torch.from_numpy(arrays.train_x)
        self.train_padded = pad_images(train_x).to(device)
        self.train_y = torch.from_numpy(arrays.train_y).long().to(device)
        self.test_x = normalize_images(torch.from_numpy(arrays.test_x)).to(device)
        self.test_y = torch.from_numpy(arrays.test_y).long().to(device)

    @property
    def num_train(self) -> int:
        return self.train_y.shape[0]

    def train_batch(self, index: torch.Tensor, views: torch.Tensor):
        return render_views(self.train_padded, index, views), self.train_y[index]
