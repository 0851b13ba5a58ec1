"""Data sets by name, all returning `DataSplits`.

    digits        scikit-learn's 8x8 digits (embedded)                     classification, 10 classes
    cifar10       CIFAR-10: python release or image folder (data_dir)      classification, 10 classes
    cifar100      CIFAR-100: python release or image folder (data_dir)     classification, 100 classes
    image-folder  any train/<class>/, test/<class>/ image folder           classification
    partlabels    LFW Part Labels faces, 128x128 (data_dir)                segmentation, 3 classes
    shapes        procedural shapes on textured backgrounds (embedded)    segmentation, 4 classes
"""
from __future__ import annotations

from pathlib import Path

from bsnet.data.base import Augment, DataSplits, Split, batches, num_batches

DATASETS = ("digits", "cifar10", "cifar100", "image-folder", "partlabels", "shapes")


def load_dataset(name: str, data_dir: str | Path | None = None, *, val_size: float | int | None = None,
                 seed: int = 0) -> DataSplits:
    """Data set `name`, read from `data_dir` where it needs one, with a validation split held out of the
    training set (`val_size`: a fraction if < 1, else a count; the data set's default if None) picked by `seed`.

    Raises:
        ValueError: an unknown name, or data that is missing or not in the expected layout (one-line message).
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ValueError(f"data directory {data_dir} does not exist")
    if val_size is not None and not val_size > 0:
        raise ValueError(f"val_size must be a fraction in (0, 1) or a count >= 1, got {val_size}")
    if name == "digits":
        from bsnet.data.digits import load_digits_splits
        return load_digits_splits(0.1 if val_size is None else val_size, seed)
    if name in ("cifar10", "cifar100"):
        from bsnet.data.cifar import load_cifar
        return load_cifar(name, data_dir, val_size, seed)
    if name == "image-folder":
        from bsnet.data.image_folder import load_image_folder
        return load_image_folder(data_dir, val_size, seed)
    if name == "partlabels":
        from bsnet.data.partlabels import load_partlabels
        return load_partlabels(data_dir, val_size, seed)
    if name == "shapes":
        from bsnet.data.shapes import load_shapes
        return load_shapes(0.1 if val_size is None else val_size, seed)
    raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


__all__ = ["Augment", "DATASETS", "DataSplits", "Split", "batches", "load_dataset", "num_batches"]
