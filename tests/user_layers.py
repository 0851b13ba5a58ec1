"""Layers "of the user's own code" that torch.fx cannot trace (kept whole as leaf modules). This file imports only
torch, so that a generated python export can import it where bsnet is absent."""
import torch
from torch import nn


class Flip(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace through it."""

    def forward(self, x):
        if x.sum() > 0:
            return -x
        return x


class Gain(nn.Module):
    """A leaf with constructor arguments it stores under their own names, and a parameter."""

    def __init__(self, channels: int, threshold: float = 0.0, mode: str = "scale") -> None:
        super().__init__()
        self.channels, self.threshold, self.mode = channels, threshold, mode
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        if x.mean() > self.threshold:
            return x * self.weight.view(1, -1, 1, 1)
        return x


class Opaque(nn.Module):
    """A leaf whose constructor argument is not kept: it cannot be rebuilt from its attributes."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x):
        return x + self.bias.view(1, -1, 1, 1) if x.sum() > 0 else x


class Act(nn.Module):
    """A leaf keeping a constructor argument that is not a literal (a function): the python export cannot write it."""

    def __init__(self, channels: int, fn=torch.relu) -> None:
        super().__init__()
        self.channels, self.fn = channels, fn

    def forward(self, x):
        return self.fn(x) if x.sum() > 0 else x
