"""A tiny registry of data sets: `@register_dataset(name)` fills it, `load_dataset(name, ...)` loads.

A loader is `fn(data_dir, val_size, seed) -> DataSplits`; `val_size` None means the data set's default. The
built-in loaders import their readers when called, so that importing bsnet imports neither Pillow nor scikit-learn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from bsnet.data.base import DataSplits

Loader = Callable[[str | Path | None, float | int | None, int], DataSplits]

_REGISTRY: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register `fn(data_dir, val_size, seed) -> DataSplits` under `name`."""

    def wrap(loader: Loader) -> Loader:
        _REGISTRY[name] = loader
        return loader

    return wrap


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(name: str, data_dir: str | Path | None = None, *, val_size: float | int | None = None,
                 seed: int = 0) -> DataSplits:
    """Data set `name`, read from `data_dir` where it needs one, with a validation split held out of the
    training set (`val_size`: a fraction if < 1, else a count; the data set's default if None) picked by `seed`.

    Raises:
        ValueError: an unknown name, or data that is missing or not in the expected layout (one-line message).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(list_datasets())})")
    if data_dir is not None and not Path(data_dir).is_dir():
        why = "is a file, not a folder" if Path(data_dir).exists() else "does not exist"
        raise ValueError(f"data directory {data_dir} {why}")
    if val_size is not None and not (0 < val_size < 1 or val_size >= 1 and float(val_size).is_integer()):
        raise ValueError(f"val_size must be a fraction in (0, 1) or a whole count >= 1, got {val_size}")
    return _REGISTRY[name](data_dir, val_size, seed)


# ---- the built-in data sets ----------------------------------------------------------------------------------
@register_dataset("digits")
def _digits(data_dir: str | Path | None, val_size: float | int | None, seed: int) -> DataSplits:
    from bsnet.data.digits import load_digits_splits
    return load_digits_splits(0.1 if val_size is None else val_size, seed)


@register_dataset("cifar10")
def _cifar10(data_dir: str | Path | None, val_size: float | int | None, seed: int) -> DataSplits:
    from bsnet.data.cifar import load_cifar
    return load_cifar("cifar10", data_dir, val_size, seed)


@register_dataset("cifar100")
def _cifar100(data_dir: str | Path | None, val_size: float | int | None, seed: int) -> DataSplits:
    from bsnet.data.cifar import load_cifar
    return load_cifar("cifar100", data_dir, val_size, seed)


@register_dataset("image-folder")
def _image_folder(data_dir: str | Path | None, val_size: float | int | None, seed: int) -> DataSplits:
    from bsnet.data.image_folder import load_image_folder
    return load_image_folder(data_dir, val_size, seed)


@register_dataset("partlabels")
def _partlabels(data_dir: str | Path | None, val_size: float | int | None, seed: int) -> DataSplits:
    from bsnet.data.partlabels import load_partlabels
    return load_partlabels(data_dir, val_size, seed)


@register_dataset("shapes")
def _shapes(data_dir: str | Path | None, val_size: float | int | None, seed: int) -> DataSplits:
    from bsnet.data.shapes import load_shapes
    return load_shapes(0.1 if val_size is None else val_size, seed)
