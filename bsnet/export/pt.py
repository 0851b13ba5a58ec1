"""The `pt` format: the plain network's state dict in safetensors, its architecture and a checksum in the metadata.

A weights file bsnet writes (a run's `weights.safetensors`, `final/model.safetensors`, a `pt` export) is a plain
safetensors file whose metadata holds `format` (`bsnet-plain`), `format_version`, `architecture` (the
architecture.json it was written for) and `sha256`: the SHA-256 of the file's tensor bytes (everything after the
header), checked whenever bsnet reads the tensors. A file without `sha256` was written before checksums; it is
read unchecked (`read_checked` says so).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from bsnet.architecture import Architecture

WEIGHTS_FORMAT = "bsnet-plain"
WEIGHTS_VERSION = 1
PYTHON_WEIGHTS_FORMAT = "bsnet-python"  # the weights beside a python export: read by its own FoundNetwork
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header's size


def save_weights(module: torch.nn.Module, architecture: Architecture, path: str | Path) -> None:
    """Write `module`'s state dict (safetensors, no pickle) with the architecture JSON and a checksum as metadata.

    A tensor the module holds under several names (a layer it calls in two places) is stored once:
    `load_weights` ties it again."""
    write_checked(path, unique_tensors(module.state_dict()),
                  {"format": WEIGHTS_FORMAT, "format_version": str(WEIGHTS_VERSION),
                   "architecture": json.dumps(asdict(architecture))})


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with each tensor held under several names (tied weights) kept under its first name only, every
    tensor a contiguous CPU copy (what safetensors stores)."""
    seen: set[tuple[Any, ...]] = set()
    out = {}
    for name, t in state.items():
        key = _view_key(t)
        if key not in seen:
            seen.add(key)
            out[name] = t.detach().cpu().contiguous().clone()
    return out


def _view_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Equal for two names of one tensor: the same memory, seen the same way."""
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device


def write_checked(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file whose metadata also holds `sha256`, the digest of its tensor bytes; atomically."""
    from bsnet.runs import atomic_write_bytes
    blob = save_bytes(tensors, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    header["__metadata__"] = {**header.get("__metadata__", {}), "sha256": hashlib.sha256(data).hexdigest()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the tensor bytes to 8
    atomic_write_bytes(Path(path), len(text).to_bytes(8, "little") + text + data)


def _header(head: bytes, size: int, path: str | Path) -> tuple[dict[str, Any], int]:
    """(header, its length) of a safetensors file of `size` bytes starting with `head`."""
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if n <= 0 or n > _MAX_HEADER or 8 + n > size:
        raise ValueError(f"{path} is not a safetensors weights file")
    try:
        header = json.loads(head[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError(f"{path} is not a safetensors weights file (its header is not JSON)") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{path} is not a safetensors weights file (its metadata is not a map of strings)")
    return header, n


def read_metadata(path: str | Path) -> dict[str, str]:
    """A safetensors file's metadata, its format version checked; reads no tensor."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += f.read(n) if 0 < n <= _MAX_HEADER else b""
    except OSError as e:
        raise ValueError(f"cannot read weights {path}: {e.strerror or e}") from None
    return _checked_metadata(_header(head, size, path)[0].get("__metadata__", {}), path)


def _checked_metadata(meta: dict[str, str], path: str | Path) -> dict[str, str]:
    fmt = meta.get("format")
    if fmt == PYTHON_WEIGHTS_FORMAT:
        raise ValueError(f"{path} holds the weights of a python export: load them with its .py file "
                         "(FoundNetwork.from_safetensors)")
    if fmt == WEIGHTS_FORMAT:
        version = meta.get("format_version", str(WEIGHTS_VERSION) if "sha256" not in meta else None)
        if version != str(WEIGHTS_VERSION):
            raise ValueError(f"weights {path} have format version {version}; this bsnet reads version "
                             f"{WEIGHTS_VERSION}")
    return meta


def read_checked(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str], bool]:
    """(tensors, metadata, whether a checksum was checked) of a safetensors file.

    Raises:
        ValueError: unreadable, not safetensors, another format version, or tensor bytes that do not match the
            file's checksum.
    """
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read weights {path}: {e.strerror or e}") from None
    header, n = _header(blob, len(blob), path)
    meta = _checked_metadata(header.get("__metadata__", {}), path)
    digest = meta.get("sha256")
    if digest is not None and hashlib.sha256(memoryview(blob)[8 + n:]).hexdigest() != digest:
        raise ValueError(f"weights {path} are corrupted (checksum mismatch)")
    try:
        tensors = load_bytes(blob)
    except Exception as e:  # safetensors' own errors for a damaged file; a pickle is refused, never executed
        raise ValueError(f"cannot read weights {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                         ) from None
    return tensors, meta, digest is not None


def stored_architecture(meta: dict[str, str], path: str | Path) -> Architecture | None:
    """The architecture a weights file's metadata records (validated), or None."""
    if "architecture" not in meta or meta.get("format") != WEIGHTS_FORMAT:
        return None
    try:
        doc = json.loads(meta["architecture"])
    except (json.JSONDecodeError, RecursionError):
        raise ValueError(f"the architecture in the metadata of {path} is not JSON") from None
    return Architecture.from_dict(doc, f"the architecture in the metadata of {path}")


def load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load `tensors` (a file's, see `read_checked`) into `module`, strictly: every name the module has must be
    in the file, or share its tensor with a name that is (tied weights are stored once)."""
    own = module.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k, t in tensors.items() if k in own and t.shape != own[k].shape)
    loaded = {_view_key(own[k]) for k in tensors if k in own}
    missing = sorted(k for k in own if k not in tensors and _view_key(own[k]) not in loaded)
    if unexpected or missing or wrong:
        why = "; ".join(f"{what}: {', '.join(names[:5])}" for what, names in
                        (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong)) if names)
        raise ValueError(f"the weights in {path} do not fit its architecture ({why})")
    module.load_state_dict(tensors, strict=False)


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load a file written by `save_weights` into `module` (built for its architecture), strictly, its checksum
    checked."""
    load_state(module, read_checked(path)[0], path)


def read_architecture(path: str | Path) -> Architecture | None:
    """The architecture in a weights file's metadata (validated), or None; reads no tensor."""
    return stored_architecture(read_metadata(path), path)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Architecture | None]:
    """(state dict, architecture from the metadata or None) of a weights file, its checksum checked. A tensor
    stored once for several names appears under one of them (see `save_weights`)."""
    tensors, meta, _ = read_checked(path)
    return tensors, stored_architecture(meta, path)
