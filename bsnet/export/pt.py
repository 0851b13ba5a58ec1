"""The `pt` format: the plain network's state dict in safetensors, its architecture in the file's metadata."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bsnet.architecture import Architecture


def save_weights(module: torch.nn.Module, architecture: Architecture, path: str | Path) -> None:
    """Write `module`'s state dict (safetensors, no pickle) with the architecture JSON as metadata."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "bsnet-plain", "architecture": json.dumps(asdict(architecture))})
    tmp.replace(path)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Architecture | None]:
    """(state dict, architecture from the metadata or None) of a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"cannot read weights {path}: {e}") from None
    arch = None
    if "architecture" in meta:
        doc = json.loads(meta["architecture"])
        arch = Architecture(**{k: v for k, v in doc.items() if k in Architecture.__dataclass_fields__})
    return state, arch
