"""bsnet.load: one call from a run directory, its `final/`, or an exported `pt` file to a ready plain module.

The architecture comes from the run's architecture.json (or a `pt` export's `<stem>.architecture.json`), validated;
the weights file's own copy is used only where no such file is beside it, and must otherwise describe the same
network. The weights' checksum is checked before they are loaded.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from bsnet.architecture import Architecture, SupernetSource
from bsnet.export.module import build_network
from bsnet.export.pt import load_state, read_checked, stored_architecture


class UncheckedWeightsWarning(UserWarning):
    """Weights written before bsnet gave them a checksum: loaded, but a damaged byte would go unnoticed."""


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


def architecture_file(weights: Path) -> Path | None:
    """The architecture.json that describes a weights file: a `pt` export's `<stem>.architecture.json`, the run's
    architecture.json beside `weights.safetensors` or above `final/model.safetensors`; None where there is none."""
    candidates = [weights.with_name(weights.stem + ".architecture.json"), weights.parent / "architecture.json"]
    if weights.parent.name == "final":
        candidates.append(weights.parent.parent / "architecture.json")
    return next((c for c in candidates if c.is_file()), None)


def same_network(a: Architecture, b: Architecture) -> bool:
    """Whether two architectures describe the same plain network (what its weights depend on)."""
    return a.supernet == b.supernet and a.supernet_config == b.supernet_config and sorted(a.kept) == sorted(b.kept)


def load_with_info(path: str | Path, supernet: SupernetSource = None, *,
                   warn: Callable[[str], None] | None = None) -> tuple[torch.fx.GraphModule, Architecture, str]:
    """(module, its architecture, which weights) for `path` (see `load`). `warn` receives the one-line warning
    about weights without a checksum (default: an `UncheckedWeightsWarning`)."""
    file, which = weights_file(path)
    tensors, meta, checked = read_checked(file)
    stored = stored_architecture(meta, file)
    source = architecture_file(file)
    if source is not None:
        arch = Architecture.from_json(source)
        if stored is not None and not same_network(stored, arch):
            raise ValueError(f"the weights {file} were written for another network than {source} describes")
    elif stored is not None:
        arch = stored
    else:
        raise ValueError(f"{file} records no architecture and has no architecture.json beside it")
    if not checked:
        message = f"the weights {file} carry no checksum (written by an older bsnet): they are loaded unchecked"
        if warn is None:
            warnings.warn(message, UncheckedWeightsWarning, stacklevel=3)
        else:
            warn(message)
    module = build_network(arch, supernet)
    load_state(module, tensors, file)
    return module.eval(), arch, which


def load(path: str | Path, supernet: SupernetSource = None) -> torch.fx.GraphModule:
    """The found network, in eval mode, with its weights: retrained (`final/`) where they exist, else the search's.

    Args:
        path: a run directory, its `final/` directory, or a file written by `bsnet export --format pt`.
        supernet: for a custom super network, the factory (or instance) it was built with: a SuperNetwork, or
            the model it was converted from with `bsnet.from_model`; registered super networks are rebuilt from
            their name and config.

    Raises:
        ValueError: one line: no weights there, a damaged or hand-edited architecture, weights of another network,
            or weights whose bytes do not match their checksum.
    """
    return load_with_info(path, supernet)[0]
