"""The `pt` format: the plain network's state dict in safetensors, its architecture in the file's metadata."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_model

from bsnet.architecture import Architecture


def save_weights(module: torch.nn.Module, architecture: Architecture, path: str | Path) -> None:
    """Write `module`'s state dict (safetensors, no pickle) with the architecture JSON as metadata.

    A tensor the module holds under several names (a layer it calls in two places) is stored once:
    `load_weights` (or safetensors' `load_model`) ties it again."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_model(module, str(tmp), metadata={"format": "bsnet-plain", "architecture": json.dumps(asdict(architecture))})
    tmp.replace(path)


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load a file written by `save_weights` into `module` (built for its architecture), strictly."""
    try:
        load_model(module, str(path), strict=True, device=str(next(module.parameters(), torch.empty(0)).device))
    except RuntimeError as e:  # "Error(s) in loading state_dict for X:" then the missing and unexpected keys
        why = " ".join(str(e).split()[6:] if str(e).startswith("Error(s) in loading") else str(e).split())
        raise ValueError(f"the weights in {path} do not fit its architecture: {why[:400]}") from None
    except Exception as e:  # safetensors' own errors for a damaged file
        raise ValueError(f"cannot read weights {path}: {e}") from None


def read_architecture(path: str | Path) -> Architecture | None:
    """The architecture in a safetensors file's metadata, or None; reads no tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"cannot read weights {path}: {e}") from None
    if "architecture" not in meta:
        return None
    doc = json.loads(meta["architecture"])
    return Architecture(**{k: v for k, v in doc.items() if k in Architecture.__dataclass_fields__})


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Architecture | None]:
    """(state dict, architecture from the metadata or None) of a safetensors file. A tensor stored once for
    several names appears under one of them (see `save_weights`)."""
    arch = read_architecture(path)
    try:
        state = load_file(str(path))
    except Exception as e:
        raise ValueError(f"cannot read weights {path}: {e}") from None
    return state, arch
