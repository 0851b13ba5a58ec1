"""Architecture: the found network as data (`architecture.json`), enough to rebuild it without gates."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


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

    def supernet_network(self, supernet=None):
        """The super network this architecture lives in: rebuilt from the registry, or from `supernet` (a
        SuperNetwork or a factory returning one) for a custom one. bsnet never imports code a file names."""
        from bsnet.fabrics import create_supernet
        from bsnet.supernet import SuperNetwork
        if supernet is None:
            if self.supernet is None:
                raise ValueError("this architecture comes from a custom super network: pass its factory "
                                 "(build(supernet=...) in Python, --model package.module:factory on the command line)")
            return create_supernet(self.supernet, **self.supernet_config)
        net = supernet if isinstance(supernet, (SuperNetwork, torch.nn.Module)) else supernet()
        if (not isinstance(net, SuperNetwork) and isinstance(net, torch.nn.Module)
                and "from_model" in self.supernet_config):
            # A user's own model (`bsnet.from_model`): converted again the way the search converted it.
            from bsnet.from_model import from_model
            shape = self.supernet_config.get("input_shape")
            if not shape:
                raise ValueError("the architecture does not record the model's input shape")
            net = from_model(net, torch.zeros(1, *shape), gate=self.supernet_config.get("gate", "residual"))
        if not isinstance(net, SuperNetwork):
            raise ValueError(f"the factory returned a {type(net).__name__}, not a bsnet SuperNetwork or a model "
                             "this architecture was searched on")
        return net

    def build(self, supernet=None) -> torch.nn.Module:
        """The plain network (fresh weights): only live nodes, a generated forward with no gates.

        Raises:
            ValueError: disconnected architecture, or a custom super network without its factory.
        """
        from bsnet.export.module import export_module
        return export_module(self.supernet_network(supernet), self, copy_weights=False)

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
