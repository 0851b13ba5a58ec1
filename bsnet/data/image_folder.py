"""Classification images in class folders: `train/<class>/*.png|jpg|jpeg` and `test/<class>/...`.

All images must have one size (that of the first); grey images stay one channel if the first one is grey,
anything else is read as RGB. The folders are decoded once, by two worker processes, into a cached uint8
array (see `bsnet.data.cache`). A validation split (10% by default) is held out of train/, stratified and
seeded. No augmentation: flips and crops do not suit every image set (digits, text).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from bsnet.data.base import DataSplits, split_three_ways
from bsnet.data.cache import cached, files_key
from bsnet.data.images import IMAGE_SUFFIXES, WORKERS, image_reader, probe_image, read_all

SPLITS = ("train", "test")


def is_image_folder(path: Path) -> bool:
    return all((path / s).is_dir() for s in SPLITS)


def find_image_folder(data_dir: str | Path) -> Path | None:
    """`data_dir` if it holds train/ and test/, else its only subfolder that does; None if none does."""
    data_dir = Path(data_dir)
    if is_image_folder(data_dir):
        return data_dir
    found = [p for p in sorted(data_dir.iterdir()) if p.is_dir() and is_image_folder(p)]
    if len(found) > 1:
        raise ValueError(f"{data_dir} holds several image folders ({', '.join(p.name for p in found)}): "
                         "give the one to use as the data directory")
    return found[0] if found else None


def list_split(root: Path, split: str) -> dict[str, list[os.DirEntry]]:
    """Image files of `root/split`, by class folder, sorted by name."""
    folder = root / split
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} holds no class folders (expected {folder}/<class>/<image>.png|jpg)")
    out = {}
    for c in classes:
        files = sorted((e for e in os.scandir(folder / c)
                        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)),
                       key=lambda e: e.name)
        if not files:
            raise ValueError(f"class folder {folder / c} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        out[c] = files
    return out


def read_image_folder(root: str | Path, *, workers: int = WORKERS) -> dict[str, np.ndarray]:
    """Arrays x_train, x_test (N, C, H, W) uint8, y_train, y_test (N,) int64 and classes (K,) str of the
    image folder `root`, decoded once and cached."""
    root = Path(root)
    listing = {s: list_split(root, s) for s in SPLITS}
    classes = list(listing["train"])
    if list(listing["test"]) != classes:
        extra = sorted(set(listing["test"]) ^ set(classes))
        raise ValueError(f"{root}/train and {root}/test have different class folders (differing: {', '.join(extra)})")
    files = [(f"{s}/{c}/{e.name}", e) for s in SPLITS for c in classes for e in listing[s][c]]
    key = files_key(root, ((name, e.stat()) for name, e in files), "image-folder")

    def build() -> dict[str, np.ndarray]:
        mode, size = probe_image(listing["train"][classes[0]][0].path)
        grey = mode in ("1", "L", "I", "I;16", "F")
        x = read_all(image_reader(size, "L" if grey else "RGB"), [e.path for _, e in files], workers=workers)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
        arrays = {"classes": np.array(classes)}
        start = 0
        for s in SPLITS:
            labels = np.concatenate([np.full(len(listing[s][c]), i, dtype=np.int64) for i, c in enumerate(classes)])
            arrays[f"x_{s}"], arrays[f"y_{s}"] = x[start:start + len(labels)], labels
            start += len(labels)
        return arrays

    return cached(root, "image-folder", key, build)


def load_image_folder(data_dir: str | Path | None, val_size: float | int | None = None, seed: int = 0,
                      *, workers: int = WORKERS) -> DataSplits:
    if data_dir is None:
        raise ValueError("image-folder needs a data directory holding train/<class>/ and test/<class>/ folders")
    root = find_image_folder(data_dir)
    if root is None:
        raise ValueError(f"{data_dir} is not an image folder: expected train/<class>/<image>.png|jpg and "
                         "test/<class>/... in it or in one of its subfolders")
    a = read_image_folder(root, workers=workers)
    classes = tuple(str(c) for c in a["classes"])
    return split_three_ways("image-folder", torch.from_numpy(a["x_train"]), torch.from_numpy(a["y_train"]),
                            torch.from_numpy(a["x_test"]), torch.from_numpy(a["y_test"]), num_classes=len(classes),
                            val_size=0.1 if val_size is None else val_size, seed=seed, classes=classes)
