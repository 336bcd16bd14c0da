"""Channel shuffle shared by ShuffleNet v1 and v2 (a parameter-free permutation)."""
import torch


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: [g, C/g] -> [C/g, g] order."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
