"""Shapes: an embedded, procedural segmentation set, generated in a fraction of a second.

Each RGB image shows one to three shapes (circle, rectangle, triangle; rotated, of random size, colour and
position, later ones occluding earlier ones) on a textured background (two colours mixed by smooth noise and
stripes) with pixel noise. Every pixel is labelled: 0 background, 1 circle, 2 rectangle, 3 triangle. Shape
colours are drawn away from the background's, so a shape is visible, but say nothing about its class: the
class is in the outline. The images come from fixed seeds, so every run sees the same training and test
images; the run's seed only picks the validation split held out of the training images.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bsnet.data.augment import RandomFlip
from bsnet.data.base import DataSplits, Split, channel_stats, stratified_split

CLASSES = ("background", "circle", "rectangle", "triangle")
TRAIN_SEED, TEST_SEED = 1, 2


def _texture(n: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 1, side, side) in [0, 1]: smooth noise plus stripes of random direction and period."""
    coarse = torch.from_numpy(rng.random((n, 1, 5, 5), dtype=np.float32))
    smooth = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).numpy()
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    angle = rng.uniform(0, np.pi, (n, 1, 1, 1)).astype(np.float32)
    period = rng.uniform(0.15, 0.5, (n, 1, 1, 1)).astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    weight = rng.uniform(0, 1, (n, 1, 1, 1)).astype(np.float32)
    return np.clip(weight * smooth + (1 - weight) * stripes, 0, 1)


def _masks(n: int, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One shape per image: its class (n,) in 1..3 and its mask (n, side, side)."""
    yy, xx = (np.mgrid[0:side, 0:side].astype(np.float32) + 0.5) / side  # pixel centres in [0, 1]
    cls = rng.integers(1, 4, n)
    cx, cy = rng.uniform(0.2, 0.8, (2, n, 1, 1)).astype(np.float32)
    r = rng.uniform(0.12, 0.28, (n, 1, 1)).astype(np.float32)
    a = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    aspect = rng.uniform(0.45, 0.9, (n, 1, 1)).astype(np.float32)
    jitter = rng.uniform(-0.3, 0.3, (n, 1, 1, 3)).astype(np.float32)
    mask = np.zeros((n, side, side), dtype=bool)
    for k in (1, 2, 3):  # each image's mask computed for its own class only
        i = cls == k
        dx, dy, r_, a_ = xx - cx[i], yy - cy[i], r[i], a[i]  # (m, side, side)
        if k == 1:
            mask[i] = dx * dx + dy * dy <= r_ * r_
        elif k == 2:
            u, v = dx * np.cos(a_) + dy * np.sin(a_), -dx * np.sin(a_) + dy * np.cos(a_)  # rotated coordinates
            mask[i] = (np.abs(u) <= r_) & (np.abs(v) <= r_ * aspect[i])
        else:
            # three corners at radius 1.2 r, at angles a + k 2pi/3 (+ jitter); a pixel is inside when it lies on
            # the same side of all three edges
            corners = a_[..., None] + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3], np.float32) + jitter[i]
            px, py = 1.2 * r_[..., None] * np.cos(corners), 1.2 * r_[..., None] * np.sin(corners)  # (m, 1, 1, 3)
            qx, qy = np.roll(px, -1, -1), np.roll(py, -1, -1)
            side_of = (qx - px) * (dy[..., None] - py) - (qy - py) * (dx[..., None] - px)  # (m, side, side, 3)
            mask[i] = (side_of >= 0).all(-1) | (side_of <= 0).all(-1)
    return cls, mask


def make_shapes(n: int, side: int = 32, seed: int = 0, max_shapes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (n, 3, side, side) float32 in [0, 1] and their label maps (n, side, side) uint8."""
    rng = np.random.default_rng(seed)
    c0, c1 = rng.random((2, n, 3, 1, 1), dtype=np.float32)
    x = c0 + (c1 - c0) * _texture(n, side, rng)  # (n, 3, side, side)
    y = np.zeros((n, side, side), dtype=np.uint8)
    background = (c0 + c1) / 2
    for k in range(max_shapes):
        present = np.ones(n, bool) if k == 0 else rng.random(n) < 0.6
        cls, mask = _masks(n, side, rng)
        mask &= present[:, None, None]
        # each channel half way round from the background's (mod 1, +- 0.2): never close to it
        colour = (background + 0.5 + rng.uniform(-0.2, 0.2, (n, 3, 1, 1))) % 1.0
        shade = 1 + 0.1 * (_texture(n, side, rng) - 0.5)  # a little texture inside the shape too
        x = np.where(mask[:, None], np.clip(colour * shade, 0, 1), x)
        y = np.where(mask, cls[:, None, None].astype(np.uint8), y)
    x = np.clip(x + 0.04 * rng.standard_normal(x.shape, dtype=np.float32), 0, 1)
    return x.astype(np.float32), y


def load_shapes(val_size: float | int = 0.1, seed: int = 0, *, n_train: int = 2000, n_test: int = 500,
                image_size: int = 32) -> DataSplits:
    x, y = (torch.from_numpy(a) for a in make_shapes(n_train, image_size, TRAIN_SEED))
    x_test, y_test = (torch.from_numpy(a) for a in make_shapes(n_test, image_size, TEST_SEED))
    keep, held = stratified_split(y, val_size, seed)
    mean, std = channel_stats(x[keep])
    x, x_test = ((a - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1) for a in (x, x_test))  # training set's statistics
    return DataSplits("shapes", Split(x[keep], y[keep]), Split(x[held], y[held]), Split(x_test, y_test),
                      num_classes=len(CLASSES), task="segmentation", augment=RandomFlip(), classes=CLASSES)
