"""Architecture: the found network as data (`architecture.json`), enough to rebuild it without gates
(`bsnet.export.build_network`)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bsnet.supernet import SuperNetwork

FORMAT_VERSION = 1

# What rebuilds a custom super network: a SuperNetwork, a model searched through `bsnet.from_model`, or a factory.
SupernetSource = nn.Module | Callable[[], nn.Module] | None


def kept_mask(kept: list[str], gate_names: list[str]) -> torch.Tensor:
    """The mask over `gate_names` (a super network's gates) that keeps exactly the gates named in `kept`."""
    unknown = set(kept) - set(gate_names)
    if unknown:
        raise ValueError(f"the architecture keeps gates this super network does not have: {sorted(unknown)[:5]}")
    names = set(kept)
    return torch.tensor([1.0 if g in names else 0.0 for g in gate_names])


def kept_names(mask: torch.Tensor, gate_names: list[str]) -> list[str]:
    """The names of the gates a `[G]` mask keeps, in the super network's order (the inverse of `kept_mask`)."""
    return [g for g, m in zip(gate_names, mask.tolist()) if m > 0.5]


@dataclass
class Architecture:
    supernet: str | None
    supernet_config: dict[str, Any]
    gates: dict[str, float]  # gate name -> final probability of keeping it
    kept: list[str]  # the gates the found architecture keeps (its live edges)
    projected: bool = False
    dropped: list[str] = field(default_factory=list)  # gates dropped by the projection onto the budgets
    cost: dict[str, float] = field(default_factory=dict)  # per example, absolute units
    budget: dict[str, float] = field(default_factory=dict)
    full_cost: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    bsnet_version: str = ""

    def mask(self, gate_names: list[str]) -> torch.Tensor:
        """The mask over `gate_names` (a super network's gates) that keeps exactly `kept`."""
        return kept_mask(self.kept, gate_names)

    def supernet_network(self, supernet: SupernetSource = None) -> SuperNetwork:
        """The super network this architecture lives in: rebuilt from the registry, or from `supernet` (a
        SuperNetwork, a model searched through `bsnet.from_model`, or a factory of either) for a custom one. A
        model is converted again as recorded (input shape, gate, leaf modules). bsnet never imports code a file
        names.

        Raises:
            ValueError: a custom super network without its factory, or a factory returning something else.
        """
        from bsnet.fabrics import create_supernet
        from bsnet.from_model import as_supernet
        if supernet is None:
            if self.supernet is None:
                raise ValueError("this architecture comes from a custom super network: pass its factory "
                                 "(supernet=... in Python, --model package.module:factory on the command line)")
            return create_supernet(self.supernet, **self.supernet_config)
        net = supernet if isinstance(supernet, nn.Module) else supernet()
        if isinstance(net, SuperNetwork):
            return net
        config = self.supernet_config
        if not isinstance(net, nn.Module) or "from_model" not in config:
            raise ValueError(f"the factory returned a {type(net).__name__}, not a bsnet SuperNetwork or a model "
                             "this architecture was searched on")
        if not config.get("input_shape"):
            raise ValueError("the architecture does not record the model's input shape")
        return as_supernet(net, config["input_shape"], gate=config.get("gate", "residual"),
                           leaf_modules=config.get("leaf_modules", ()))

    def to_json(self, path: str | Path) -> None:
        from bsnet.runs import atomic_write_text
        atomic_write_text(Path(path), json.dumps(asdict(self), indent=1))

    @classmethod
    def from_json(cls, path: str | Path) -> "Architecture":
        path = Path(path)
        if path.is_dir():
            path = path / "architecture.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read architecture file {path}: {e}") from None
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path} has format version {version}; this bsnet reads version {FORMAT_VERSION}")
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in doc.items() if k in fields})
