"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009): 50,000 training and 10,000 test 32x32 RGB images.

Two layouts are read, found automatically in the data directory or one level below it:

* the official python release from https://www.cs.toronto.edu/~kriz/cifar.html: `cifar-10-batches-py/`
  (data_batch_1..5, test_batch) or `cifar-100-python/` (train, test; the 100 fine labels are used), pickled
  dicts read by an unpickler that builds nothing but dicts, lists, strings, numbers and numpy arrays;
* an image folder, `train/<class>/*.png|jpg` and `test/<class>/...`, decoded once into a cached array
  (see `bsnet.data.image_folder`).

As in the paper, 5,000 training images (500 per CIFAR-10 class) are held out, stratified and seeded, for
validation; inputs are normalised with the remaining training images' per-channel statistics; training
batches get the standard augmentation (4-pixel padding, random crop, horizontal flip).
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bsnet.data.augment import RandomCropFlip
from bsnet.data.base import DataSplits, split_three_ways
from bsnet.data.image_folder import is_image_folder, read_image_folder
from bsnet.data.images import WORKERS

VAL_SIZE = 5000


@dataclass(frozen=True)
class Release:
    folder: str
    train: tuple[str, ...]
    test: str
    labels: str
    meta: str
    names: str
    num_classes: int
    title: str


RELEASES = {
    "cifar10": Release("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "labels",
                       "batches.meta", "label_names", 10, "CIFAR-10"),
    "cifar100": Release("cifar-100-python", ("train",), "test", "fine_labels", "meta", "fine_label_names", 100,
                        "CIFAR-100"),
}


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python 3 pickles bytes at protocol 2 (`encode(text, "latin1")`), and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused to load _codecs.encode(..., {str(encoding)[:20]!r}): a CIFAR file "
                                     "holds only dicts, lists, strings, numbers and numpy arrays")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    allowed: dict[tuple[str, str], object] = {("_codecs", "encode"): _latin1}  # bytes, by Python 3 at protocol 2
    for core in ("numpy.core", "numpy._core"):  # written by numpy 1 or numpy 2
        allowed[f"{core}.multiarray", "_reconstruct"] = _reconstruct
        allowed[f"{core}.numeric", "_frombuffer"] = _frombuffer  # an array at pickle protocol 5
    allowed["numpy", "ndarray"] = np.ndarray
    allowed["numpy", "dtype"] = np.dtype
    for module in ("builtins", "__builtin__"):
        for t in (dict, list, bytes, str, int):
            allowed[module, t.__name__] = t
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, strings, ints and numpy arrays, and refuses every other global: unpickling a
    file can otherwise run any code."""
    ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR file holds only dicts, lists, "
                                         "strings, numbers and numpy arrays") from None


def read_pickle(path: str | Path) -> dict:
    """One file of the python release, as a dict with str keys."""
    try:
        with open(path, "rb") as f:
            d = RestrictedUnpickler(f, encoding="bytes").load()  # the release was pickled by Python 2, with bytes
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file can fail in many ways
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR file: it holds a {type(d).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def read_batch(path: Path, release: Release) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file."""
    d = read_pickle(path)
    for k in ("data", release.labels):
        if k not in d:
            raise ValueError(f"{path} is not a {release.title} batch: it has no {k!r} entry")
    x, y = np.asarray(d["data"]), np.asarray(d[release.labels], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
        raise ValueError(f"{path} is not a {release.title} batch: expected uint8 data (N, 3072) and N labels, got "
                         f"{x.dtype} {tuple(x.shape)} and {len(y)} labels")
    if len(y) and not (0 <= y.min() and y.max() < release.num_classes):
        raise ValueError(f"{path} has labels outside 0..{release.num_classes - 1}")
    return x.reshape(-1, 3, 32, 32), y  # rows are R, G, B planes of 32x32, row-major


def read_release(folder: str | Path, name: str) -> dict[str, np.ndarray]:
    """Arrays x_train, y_train, x_test, y_test and classes of the python release in `folder`."""
    folder, release = Path(folder), RELEASES[name]
    train = [read_batch(folder / f, release) for f in release.train]
    x_test, y_test = read_batch(folder / release.test, release)
    classes = np.array([str(i) for i in range(release.num_classes)])
    if (folder / release.meta).is_file():
        names = read_pickle(folder / release.meta).get(release.names)
        if isinstance(names, list) and len(names) == release.num_classes:
            classes = np.array([n.decode() if isinstance(n, bytes) else str(n) for n in names])
    return {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
            "x_test": x_test, "y_test": y_test, "classes": classes}


def _has_release(path: Path, release: Release) -> bool:
    return all((path / f).is_file() for f in (*release.train, release.test))


def _plain(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_cifar(name: str, data_dir: str | Path) -> tuple[str, Path]:
    """("release" or "folder", where it is) for CIFAR `name` in `data_dir` or one level below it."""
    data_dir, release = Path(data_dir), RELEASES[name]
    if _has_release(data_dir / release.folder, release):
        return "release", data_dir / release.folder
    if _has_release(data_dir, release):
        return "release", data_dir
    if is_image_folder(data_dir):
        return "folder", data_dir
    subs = [p for p in sorted(data_dir.iterdir()) if p.is_dir()]
    releases = [p for p in subs if _has_release(p, release)]
    if releases:
        return "release", releases[0]
    folders = [p for p in subs if is_image_folder(p)]
    if len(folders) > 1:  # prefer the one named after the data set: cifar10, CIFAR-10, cifar_10_jpeg...
        named = [p for p in folders if _plain(p.name).startswith(name) and not _plain(p.name).startswith(name + "0")]
        if len(named) != 1:
            raise ValueError(f"{data_dir} holds several image folders ({', '.join(p.name for p in folders)}): "
                             "give the one to use as the data directory")
        folders = named
    if folders:
        return "folder", folders[0]
    raise ValueError(f"no {release.title} data in {data_dir}: expected the python release ({release.folder}/) or "
                     "train/<class>/ and test/<class>/ image folders, in it or in one of its subfolders")


def load_cifar(name: str, data_dir: str | Path | None, val_size: float | int | None = None, seed: int = 0,
               *, workers: int = WORKERS) -> DataSplits:
    """CIFAR-10 (`name` "cifar10") or CIFAR-100 ("cifar100") from `data_dir`."""
    release = RELEASES[name]
    if data_dir is None:
        raise ValueError(f"{name} needs a data directory holding {release.folder}/ (the python release from "
                         "https://www.cs.toronto.edu/~kriz/cifar.html) or train/<class>/ and test/<class>/ folders")
    kind, where = find_cifar(name, data_dir)
    a = read_release(where, name) if kind == "release" else read_image_folder(where, workers=workers)
    classes = tuple(str(c) for c in a["classes"])
    if len(classes) != release.num_classes or a["x_train"].shape[1:] != (3, 32, 32):
        raise ValueError(f"{where} is not {release.title}: expected {release.num_classes} classes of 32x32 RGB images, "
                         f"found {len(classes)} classes of {'x'.join(map(str, a['x_train'].shape[2:]))} images "
                         f"with {a['x_train'].shape[1]} channels")
    return split_three_ways(name, torch.from_numpy(a["x_train"]), torch.from_numpy(a["y_train"]),
                            torch.from_numpy(a["x_test"]), torch.from_numpy(a["y_test"]),
                            num_classes=release.num_classes, val_size=VAL_SIZE if val_size is None else val_size,
                            seed=seed, classes=classes,
                            augment=lambda mean, std: RandomCropFlip(4, tuple((-mean / std).tolist())))
