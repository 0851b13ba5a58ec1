"""bsnet.load: one call from a run directory, its `final/`, or an exported `pt` file to a ready plain module."""
from __future__ import annotations

from pathlib import Path

import torch

from bsnet.architecture import Architecture, SupernetSource
from bsnet.export.module import build_network
from bsnet.export.pt import load_weights, read_architecture


def weights_file(path: str | Path) -> tuple[Path, str]:
    """The weights a path stands for, and which they are: `final` (retrained), `search` or `exported`."""
    path = Path(path)
    if path.is_file():
        return path, "exported"
    if not path.is_dir():
        raise ValueError(f"{path} does not exist")
    for candidate, which in ((path / "final" / "model.safetensors", "final"), (path / "model.safetensors", "final"),
                             (path / "weights.safetensors", "search")):
        if candidate.exists():
            return candidate, which
    raise ValueError(f"{path} holds no weights (is the search finished? `bsnet search --resume --out {path}`)")


def load_with_info(path: str | Path, supernet: SupernetSource = None) -> tuple[torch.fx.GraphModule, Architecture, str]:
    file, which = weights_file(path)
    arch = read_architecture(file)
    if arch is None:
        arch = Architecture.from_json(Path(path) if Path(path).is_dir() else file.with_name("architecture.json"))
    module = build_network(arch, supernet)
    load_weights(module, file)
    return module.eval(), arch, which


def load(path: str | Path, supernet: SupernetSource = None) -> torch.fx.GraphModule:
    """The found network, in eval mode, with its weights: retrained (`final/`) where they exist, else the search's.

    Args:
        path: a run directory, its `final/` directory, or a file written by `bsnet export --format pt`.
        supernet: for a custom super network, the factory (or instance) it was built with: a SuperNetwork, or
            the model it was converted from with `bsnet.from_model`; registered super networks are rebuilt from
            their name and config.
    """
    return load_with_info(path, supernet)[0]
