"""The one kind of object every data set loader returns: in-memory tensors split three ways."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float, normalised
    y: torch.Tensor  # (N,) class indices, or (N, H, W) per-pixel classes

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataSplits:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    task: str = "classification"  # or "segmentation"
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None  # batched, on tensors

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def batches(split: Split, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of an in-memory split; with `shuffle`, the order comes from `generator` alone."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield split.x[idx], split.y[idx]


def num_batches(split: Split, batch_size: int, drop_last: bool = False) -> int:
    return len(split) // batch_size if drop_last else -(-len(split) // batch_size)


def stratified_split(y: torch.Tensor, fraction: float | int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out): `fraction` of each class held out (or that many examples in all), seeded."""
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    n_out = int(fraction) if fraction >= 1 else int(round(n * fraction))
    if not 0 < n_out < n:
        raise ValueError(f"cannot hold out {fraction} of {n} examples")
    held = []
    labels = y if y.dim() == 1 else torch.zeros(n, dtype=torch.long)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held.append(idx[: int(round(len(idx) * n_out / n))])
    out = torch.cat(held)
    mask = torch.ones(n, dtype=torch.bool)
    mask[out] = False
    return mask.nonzero().flatten(), out.sort().values
