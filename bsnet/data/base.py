"""The one kind of object every data set loader returns: in-memory tensors split three ways.

Large image sets (CIFAR, Part Labels) keep their pixels as uint8, four times smaller than float32
(CIFAR-10's 50,000 training images: 150 MB instead of 600 MB), and convert each mini-batch to normalised
floats as it is drawn; segmentation label maps are kept as uint8 likewise. `batches()` hides the difference:
it always yields float normalised inputs and long targets, and `Split.x` / `Split.y` give a whole split so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

# augment(x, y, generator) -> (x, y): a batched, random transformation of normalised inputs and their targets
# (per-pixel targets move with the pixels), driven by `generator` alone.
Augment = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class Split:
    """Inputs and targets of one split, stored compactly.

    `x_stored` is (N, C, H, W): either float and already normalised (`mean` and `std` None), or uint8 pixels
    normalised on the way out with the per-channel `mean` and `std` (in pixel units, 0..255). `y_stored` is (N,)
    class indices or (N, H, W) per-pixel classes, long or uint8. `get(idx)` and `batches()` convert only the
    examples asked for; `x` and `y` convert the whole split (float normalised, long), at 4 bytes per value.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        if (mean is None) != (std is None) or (mean is None and x.dtype == torch.uint8):
            raise ValueError("uint8 inputs need both mean and std; float inputs are stored normalised")
        self.x_stored, self.y_stored = x, y
        self.mean, self.std = mean, std  # (C,) each, or None

    def __len__(self) -> int:
        return len(self.y_stored)

    def __repr__(self) -> str:
        return (f"Split(n={len(self)}, x={self.x_stored.dtype} {tuple(self.x_stored.shape[1:])}, "
                f"y={self.y_stored.dtype} {tuple(self.y_stored.shape[1:])})")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_stored.shape[1:])

    def get(self, idx: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples `idx` as (float normalised inputs, long targets)."""
        x, y = self.x_stored[idx], self.y_stored[idx]
        if self.mean is not None:
            c = x.shape[1]
            x = x.float().sub_(self.mean.view(1, c, 1, 1)).div_(self.std.view(1, c, 1, 1))
        return x, y.long()

    @property
    def x(self) -> torch.Tensor:
        """All inputs, float and normalised (a new tensor for uint8 storage: prefer `batches()` on big splits)."""
        return self.get(slice(None))[0]

    @property
    def y(self) -> torch.Tensor:
        """All targets, long."""
        return self.y_stored.long()


@dataclass
class DataSplits:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    task: str = "classification"  # or "segmentation"
    augment: Augment | None = None  # for training batches: augment(x, y, generator) -> (x, y)
    classes: tuple[str, ...] = ()  # class names, where the data set has them

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape

    def check_fits(self, input_shape: Sequence[int], output_shape: Sequence[int], what: str = "the network") -> None:
        """Raises ValueError (one line) unless a network taking `input_shape` and giving `output_shape` per example
        fits this data set: its inputs, its task and its number of classes (a mismatch would fail deep inside)."""
        if tuple(input_shape) != tuple(self.input_shape):
            raise ValueError(f"data set {self.name} has inputs shaped {tuple(self.input_shape)}; {what} takes "
                             f"{tuple(input_shape)}")
        want = (self.num_classes, *(self.input_shape[1:] if self.task == "segmentation" else ()))
        if tuple(output_shape) != want:
            raise ValueError(f"data set {self.name} is {self.task} over {self.num_classes} classes, one output of "
                             f"shape {want} per example; {what} gives {tuple(output_shape)}")


def shard_order(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of `order`, padded by wrapping around so that every rank gets as many (as
    DistributedSampler does)."""
    if world == 1:
        return order
    per_rank = -(-len(order) // world)
    padded = torch.cat([order, order[: per_rank * world - len(order)]])
    return padded[rank::world]


def batches(split: Split, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
            drop_last: bool = False, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches (float normalised x, long y) of an in-memory split; with `shuffle`, the order comes from
    `generator` alone. With `world > 1`, the batches of one rank's shard of that order."""
    order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
    order = shard_order(order, rank, world)
    n = len(order)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        yield split.get(order[i:i + batch_size])


def num_batches(split: Split, batch_size: int, drop_last: bool = False, world: int = 1) -> int:
    n = -(-len(split) // world)
    return n // batch_size if drop_last else -(-n // batch_size)


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
        if len(held[-1]) == len(idx):
            raise ValueError(f"holding out {fraction} of {n} examples leaves none of class {int(c)} to train on")
    out = torch.cat(held)
    if len(out) == 0:  # each class's share rounds to 0
        raise ValueError(f"holding out {fraction} of {n} examples, stratified by class, holds out none: "
                         f"ask for at least {n // (2 * min(int((labels == c).sum()) for c in labels.unique())) + 1}")
    mask = torch.ones(n, dtype=torch.bool)
    mask[out] = False
    return mask.nonzero().flatten(), out.sort().values


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of (N, C, H, W) images, in their own units: exactly, from a
    histogram, for uint8 pixels; in chunks for floats, so that no large float copy is made."""
    c = x.shape[1]
    if x.dtype == torch.uint8:
        values = torch.arange(256, dtype=torch.float64)
        counts = torch.stack([torch.bincount(x[:, i].reshape(-1), minlength=256) for i in range(c)]).double()
        mean = (counts * values).sum(1) / counts.sum(1)  # (C,)
        var = (counts * (values - mean[:, None]) ** 2).sum(1) / counts.sum(1)
        return mean.float(), var.sqrt().float()
    s = torch.zeros(c, dtype=torch.float64)
    ss = torch.zeros(c, dtype=torch.float64)
    for part in x.split(chunk):
        f = part.double()
        s += f.sum((0, 2, 3))
        ss += (f * f).sum((0, 2, 3))
    count = x.numel() // c
    mean = s / count
    std = (ss / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def split_three_ways(name: str, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                     y_test: torch.Tensor, *, num_classes: int, val_size: float | int, seed: int,
                     task: str = "classification", classes: tuple[str, ...] = (),
                     augment: Callable[[torch.Tensor, torch.Tensor], Augment | None] | None = None) -> DataSplits:
    """`DataSplits` from uint8 train and test images: a seeded, stratified validation split held out of the
    training set, normalisation with the remaining training images' per-channel statistics.

    `augment(mean, std)`, where given, builds the training augmentation once the statistics are known.
    """
    keep, held = stratified_split(y_train, val_size, seed)
    x_val, y_val = x_train[held], y_train[held]
    x_train, y_train = x_train[keep], y_train[keep]
    mean, std = channel_stats(x_train)
    return DataSplits(name, Split(x_train, y_train, mean, std), Split(x_val, y_val, mean, std),
                      Split(x_test, y_test, mean, std), num_classes=num_classes, task=task,
                      augment=augment(mean, std) if augment is not None else None, classes=tuple(classes))
