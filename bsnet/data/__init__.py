"""Data sets by name, all returning `DataSplits`."""
from __future__ import annotations

from pathlib import Path

from bsnet.data.base import DataSplits, Split, batches, num_batches

DATASETS = ("digits",)


def load_dataset(name: str, data_dir: str | Path | None = None, *, val_size: float | int | None = None,
                 seed: int = 0) -> DataSplits:
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ValueError(f"data directory {data_dir} does not exist")
    if name == "digits":
        from bsnet.data.digits import load_digits_splits
        return load_digits_splits(0.1 if val_size is None else val_size, seed)
    raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


__all__ = ["DATASETS", "DataSplits", "Split", "batches", "load_dataset", "num_batches"]
