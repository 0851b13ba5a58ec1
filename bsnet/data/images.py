"""Decoding image files with Pillow into uint8 arrays, in a pool of worker processes.

Readers are module-level functions `reader(path) -> np.ndarray` (bound with `functools.partial`) so that
they travel to the workers; a file that cannot be read becomes a `ValueError` naming its path.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
WORKERS = 2  # the project's machines have two cores
PARALLEL_FROM = 1000  # fewer files than this are decoded in this process: a pool costs more than it saves
CHUNK = 2000  # files per task sent to a worker


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("reading image files needs Pillow: pip install pillow") from None
    return Image


def read_image(path: str | Path, mode: str = "RGB", size: tuple[int, int] | None = None) -> np.ndarray:
    """One image as uint8 (H, W, C) in `mode` ("RGB" or "L"); `size` (width, height) it must have."""
    Image = _pillow()
    try:
        with Image.open(path) as im:
            got = im.size
            a = np.asarray(im.convert(mode)) if size is None or got == tuple(size) else None
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds; all mean "not a readable image"
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}".replace("\n", " ")) from None
    if a is None:
        raise ValueError(f"image {path} is {got[0]}x{got[1]} but the others are {size[0]}x{size[1]}: "
                         "all images must have one size")
    return a.reshape(a.shape[0], a.shape[1], -1)


def probe_image(path: str | Path) -> tuple[str, tuple[int, int]]:
    """An image's Pillow mode and (width, height), read from its header."""
    Image = _pillow()
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}".replace("\n", " ")) from None


def read_resized(path: str | Path, side: int, mode: str = "RGB", resample: str = "bilinear") -> np.ndarray:
    """One image resized to `side` x `side`, as uint8 (side, side, C)."""
    Image = _pillow()
    try:
        with Image.open(path) as im:
            im = im.convert(mode).resize((side, side), {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[resample])
            a = np.asarray(im)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}".replace("\n", " ")) from None
    return a.reshape(side, side, -1)


def _read_many(reader: Callable[[str], np.ndarray], paths: Sequence[str]) -> np.ndarray:
    return np.stack([reader(p) for p in paths])


def read_all(reader: Callable[[str], np.ndarray], paths: Sequence[str | Path], *, workers: int = WORKERS,
             parallel_from: int = PARALLEL_FROM, chunk: int = CHUNK) -> np.ndarray:
    """`reader` applied to every path, stacked in order: (N, ...) uint8; in `workers` processes when there are
    at least `parallel_from` paths."""
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no images to read")
    if workers <= 1 or len(paths) < parallel_from:
        return _read_many(reader, paths)
    # fork where the platform has it: workers start at once and need not import torch again.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futures = [pool.submit(_read_many, reader, paths[i:i + chunk]) for i in range(0, len(paths), chunk)]
        parts = [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return np.concatenate(parts)


def image_reader(size: tuple[int, int] | None = None, mode: str = "RGB") -> Callable[[str], np.ndarray]:
    """A picklable reader of images of one size."""
    return partial(read_image, mode=mode, size=size)
