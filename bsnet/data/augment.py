"""Training augmentations, batched, on normalised tensors: `augment(x, y, generator) -> (x, y)`.

Every random number comes from the given `torch.Generator`, drawn in a fixed order, so one generator state
gives one result. Per-pixel targets (N, H, W) move with their pixels; class targets (N,) pass through.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _flip_columns(w: int, flip: torch.Tensor) -> torch.Tensor:
    """Column indices (B, W): 0..W-1, reversed where `flip`."""
    cols = torch.arange(w, device=flip.device).expand(len(flip), w)
    return torch.where(flip[:, None], cols.flip(1), cols)


@dataclass(frozen=True)
class RandomFlip:
    """Horizontal flip of each example with probability 1/2 (labels maps flipped with their images)."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)  # (B,), drawn on the generator's device
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if y.dim() == 3:
            y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
        return x, y


@dataclass(frozen=True)
class RandomCropFlip:
    """The standard CIFAR augmentation: pad by `padding` pixels, crop back to size at a random offset, and flip
    horizontally with probability 1/2; one gather per axis for the whole batch.

    `fill` is the padding's per-channel value in normalised units (the normalised value of black, -mean/std,
    matches torchvision's RandomCrop on the images before normalisation). For class targets only.
    """
    padding: int = 4
    fill: tuple[float, ...] = (0.0,)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if y.dim() != 1:
            raise ValueError("RandomCropFlip is for class targets; use RandomFlip for per-pixel targets")
        b, c, h, w = x.shape
        p = self.padding
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)  # (B,)
        offset = torch.randint(0, 2 * p + 1, (b, 2), generator=generator).to(x.device)  # (B, 2): top, left
        fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device).expand(c).view(1, c, 1, 1)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()  # (B, C, H+2p, W+2p)
        padded[:, :, p:p + h, p:p + w] = x
        rows = offset[:, :1] + torch.arange(h, device=x.device)  # (B, H)
        cols = offset[:, 1:] + _flip_columns(w, flip)  # (B, W)
        out = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * p))  # (B, C, H, W+2p)
        out = out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))  # (B, C, H, W)
        return out, y
