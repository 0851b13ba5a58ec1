"""Decode once: arrays cached in an uncompressed .npz, keyed by the source files' paths, sizes and mtimes.

The cache lies next to the data (`<root>/bsnet-cache-<tag>.npz`) where that folder is writable, else under
`$XDG_CACHE_HOME/bsnet/data` (default `~/.cache/bsnet/data`). A cache whose key no longer matches the files,
or that cannot be read, is rebuilt and replaced.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

KEY = "__key__"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bsnet" / "data"


def files_key(root: str | Path, files: Iterable[tuple[str, os.stat_result]], tag: str) -> str:
    """A digest of the data's location, `tag` (what was decoded, how) and every file's name, size and mtime."""
    h = hashlib.sha256(f"{Path(root).resolve()}\0{tag}\0".encode())
    for name, st in files:
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_paths(root: str | Path, tag: str) -> list[Path]:
    """Where the cache of `root` may lie, in the order they are tried."""
    root = Path(root).resolve()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return [root / f"bsnet-cache-{tag}.npz", user_cache_dir() / f"{root.name}-{digest}-{tag}.npz"]


def _load(path: Path, key: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if KEY not in z.files or str(z[KEY]) != key:
                return None
            return {k: z[k] for k in z.files if k != KEY}
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
        return None


def _save(path: Path, key: str, arrays: dict[str, np.ndarray]) -> bool:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **{KEY: np.array(key)}, **arrays)
        os.replace(tmp, path)  # atomic: a reader sees the old cache or the new one, never half of one
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def cached(root: str | Path, tag: str, key: str, build: Callable[[], dict[str, np.ndarray]]
           ) -> dict[str, np.ndarray]:
    """The arrays cached for (`root`, `tag`) under `key`, or `build()`'s, which are then cached."""
    paths = cache_paths(root, tag)
    for path in paths:
        got = _load(path, key)
        if got is not None:
            return got
    arrays = build()
    for path in paths:  # next to the data if writable, else the user's cache; neither: not cached
        if _save(path, key, arrays):
            break
    return arrays
