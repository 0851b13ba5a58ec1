"""LFW Part Labels: a face segmentation set of 2,927 images, 3 classes per pixel (background, skin, hair).

Get it from the UMass LFW Part Labels page, http://vis-www.cs.umass.edu/lfw/part_labels/: the funneled LFW
images (`lfw-funneled.tgz`), the ground-truth label maps (`parts_lfw_funneled_gt_images.tgz`) and the three
split files, all extracted into one data directory (or a folder one level below it):

    lfw_funneled/<Name>/<Name>_<NNNN>.jpg           250x250 RGB
    parts_lfw_funneled_gt_images/<Name>_<NNNN>.ppm  250x250: red hair, green skin, blue background
    parts_train.txt, parts_validation.txt, parts_test.txt   lines "<Name> <N>" (N the image number, 4 digits
                                                            zero-padded in the file names)

(The official README could not be read here; the layout matches the public readers of the set.)

Each label pixel is the class of its strongest channel: 0 background (blue), 1 skin (green), 2 hair (red).
Images are resized to `image_size` (a power of two, 128 by default; bilinear), label maps likewise (nearest),
decoded once by two worker processes into a cached uint8 array. The official validation split (500 images) is
the validation split; training batches are flipped horizontally with their label maps.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bsnet.data.augment import RandomFlip
from bsnet.data.base import DataSplits, Split, channel_stats
from bsnet.data.cache import cached, files_key
from bsnet.data.images import WORKERS, read_all, read_image, read_resized

SPLIT_FILES = {"train": "parts_train.txt", "val": "parts_validation.txt", "test": "parts_test.txt"}
IMAGES, LABELS = "lfw_funneled", "parts_lfw_funneled_gt_images"
CLASSES = ("background", "skin", "hair")


def find_partlabels(data_dir: str | Path) -> Path:
    """The folder that holds parts_train.txt: `data_dir` or one of its subfolders."""
    data_dir = Path(data_dir)
    if (data_dir / SPLIT_FILES["train"]).is_file():
        return data_dir
    found = [p for p in sorted(data_dir.iterdir()) if (p / SPLIT_FILES["train"]).is_file()]
    if not found:
        raise ValueError(f"no LFW Part Labels data in {data_dir}: {data_dir / SPLIT_FILES['train']} is missing "
                         "(get the data from http://vis-www.cs.umass.edu/lfw/part_labels/)")
    return found[0]


def read_split_file(path: Path) -> list[str]:
    """Example ids `<Name>_<NNNN>` listed in a split file."""
    if not path.is_file():
        raise ValueError(f"split file {path} is missing")
    ids = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path}:{i}: expected '<Name> <image number>', got {line.strip()!r}")
        ids.append(f"{parts[0]}_{int(parts[1]):04d}")
    if not ids:
        raise ValueError(f"split file {path} lists no images")
    return ids


def read_label_map(path: str, side: int) -> np.ndarray:
    """A ground-truth .ppm as classes (side, side, 1) uint8: the strongest channel of each pixel, blue first
    so that ties (black) are background."""
    from PIL import Image
    rgb = read_image(path, "RGB")  # (H, W, 3)
    classes = rgb[:, :, ::-1].argmax(-1).astype(np.uint8)  # channels B, G, R -> 0 background, 1 skin, 2 hair
    im = Image.fromarray(classes).resize((side, side), Image.NEAREST)
    return np.asarray(im)[:, :, None]


def read_partlabels(root: str | Path, image_size: int = 128, *, workers: int = WORKERS) -> dict[str, np.ndarray]:
    """Arrays x_<split> (N, 3, S, S) uint8 and y_<split> (N, S, S) uint8 for train, val and test, cached."""
    root = Path(root)
    ids = {s: read_split_file(root / f) for s, f in SPLIT_FILES.items()}
    paths = {}
    for s, names in ids.items():
        images = [root / IMAGES / n.rsplit("_", 1)[0] / f"{n}.jpg" for n in names]
        labels = [root / LABELS / f"{n}.ppm" for n in names]
        for p in images + labels:
            if not p.is_file():
                raise ValueError(f"{p} is missing (listed in {root / SPLIT_FILES[s]})")
        paths[s] = images, labels
    stats = [(f, os.stat(root / f)) for f in SPLIT_FILES.values()]
    stats += [(str(p.relative_to(root)), p.stat()) for images, labels in paths.values() for p in images + labels]
    tag = f"partlabels-{image_size}"

    def build() -> dict[str, np.ndarray]:
        out = {}
        for s, (images, labels) in paths.items():
            x = read_all(partial(read_resized, side=image_size), images, workers=workers)  # (N, S, S, 3)
            out[f"x_{s}"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            out[f"y_{s}"] = read_all(partial(read_label_map, side=image_size), labels, workers=workers)[..., 0]
        return out

    return cached(root, tag, files_key(root, stats, tag), build)


def load_partlabels(data_dir: str | Path | None, val_size: float | int | None = None, seed: int = 0,
                    *, image_size: int = 128, workers: int = WORKERS) -> DataSplits:
    """LFW Part Labels from `data_dir`, at `image_size` x `image_size`. `seed` is unused: the splits are official."""
    if data_dir is None:
        raise ValueError("partlabels needs a data directory (get the data from "
                         "http://vis-www.cs.umass.edu/lfw/part_labels/)")
    if val_size is not None:
        raise ValueError("partlabels uses its official validation split (parts_validation.txt): leave val_size unset")
    if image_size < 1 or image_size & (image_size - 1):
        raise ValueError(f"partlabels image_size must be a power of two, got {image_size}")
    a = read_partlabels(find_partlabels(data_dir), image_size, workers=workers)
    mean, std = channel_stats(torch.from_numpy(a["x_train"]))
    split = {s: Split(torch.from_numpy(a[f"x_{s}"]), torch.from_numpy(a[f"y_{s}"]), mean, std)
             for s in SPLIT_FILES}
    return DataSplits("partlabels", split["train"], split["val"], split["test"], num_classes=len(CLASSES),
                      task="segmentation", augment=RandomFlip(), classes=CLASSES)
