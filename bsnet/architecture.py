"""Architecture: the found network as data (`architecture.json`), enough to rebuild it without gates
(`bsnet.export.build_network`)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bsnet.inputs import check_spec
from bsnet.supernet import SuperNetwork

FORMAT_VERSION = 2  # 2: `widths`, the kept channels of each width-split block
READABLE_VERSIONS = (1, 2)
# Metrics that the tables print as fractions: when present, each is a number in [0, 1] (None where not measured).
FRACTION_METRICS = ("test_acc", "test_acc_search_weights", "val_acc_search_weights", "test_acc_finetuned",
                    "val_acc_finetuned", "full_test_acc", "test_miou", "full_test_miou")

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
    added: list[str] = field(default_factory=list)  # gates added to spend the budgets (search setting fill_budgets)
    exchanged: list[str] = field(default_factory=list)  # gates taken out for costlier ones while spending them
    cost: dict[str, float] = field(default_factory=dict)  # per example, absolute units
    budget: dict[str, float] = field(default_factory=dict)
    full_cost: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    widths: dict[str, list[int]] = field(default_factory=dict)  # a width-split block -> [kept, all] hidden channels
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
            ValueError: a custom super network without its factory, a factory returning something else, a
                recorded config the super network cannot be built from, or gates it does not have.
        """
        net = self._rebuild(supernet)
        unknown = sorted((set(self.gates) | set(self.kept) | set(self.dropped) | set(self.added)
                         | set(self.exchanged))
                         - set(net.gate_names))
        if unknown:
            raise ValueError(f"the architecture names gates its super network does not have: {unknown[:5]}")
        return net

    def _rebuild(self, supernet: SupernetSource) -> SuperNetwork:
        from bsnet.fabrics import create_supernet
        from bsnet.from_model import as_supernet
        if supernet is None:
            if self.supernet is None:
                raise ValueError("this architecture comes from a custom super network: pass its factory "
                                 "(supernet=... in Python, --model package.module:factory on the command line)")
            try:
                return create_supernet(self.supernet, **self.supernet_config)
            except Exception as e:  # noqa: BLE001 - a recorded setting the fabric's code cannot build from
                why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                raise ValueError(f"cannot build the super network {self.supernet} from the architecture's "
                                 f"supernet_config: {why}") from None
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
                           leaf_modules=config.get("leaf_modules", ()), inputs=config.get("inputs"),
                           width_groups=config.get("width_groups", 1))

    def to_json(self, path: str | Path) -> None:
        from bsnet.runs import atomic_write_text
        atomic_write_text(Path(path), json.dumps(asdict(self), indent=1))

    @classmethod
    def from_json(cls, path: str | Path) -> "Architecture":
        """Read and validate `path` (an architecture.json, or the run directory holding one).

        Raises:
            ValueError: one line naming the file and the field: unreadable, another format version, a wrong type
                or value.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "architecture.json"
        try:
            doc = json.loads(path.read_text())
        except RecursionError:
            raise ValueError(f"cannot read architecture file {path}: its JSON is nested too deeply") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise ValueError(f"cannot read architecture file {path}: {why}") from None
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: Any, source: str) -> "Architecture":
        """An Architecture from a decoded architecture.json (`source` names it in errors), every field checked:
        types, probabilities in [0, 1], finite non-negative costs, kept, dropped, added and exchanged gates among
        `gates`' names (where it records none, as one built by hand may, `supernet_network` checks them against the
        network)."""
        if not isinstance(doc, dict):
            raise ValueError(f"{source} is not an architecture file (a JSON object)")
        version = doc.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ValueError(f"{source} has format version {version}; this bsnet reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
        check = _Checker(source)
        supernet = doc.get("supernet")
        if supernet is not None and not _is_name(supernet):
            check.fail("supernet", "must be the name of a registered super network, or null for your own model")
        gates = check.mapping(doc.get("gates"), "gates", lambda v: _is_number(v, 0.0, 1.0),
                              "a probability in [0, 1]")
        kept = check.gate_list(doc.get("kept"), "kept", gates)
        costs = {k: check.mapping(doc.get(k, {}), k, _is_number, "a finite number >= 0")
                 for k in ("cost", "budget", "full_cost")}
        projected = doc.get("projected", False)
        if not isinstance(projected, bool):
            check.fail("projected", "must be true or false")
        bsnet_version = doc.get("bsnet_version", "")
        if not isinstance(bsnet_version, str) or len(bsnet_version) > 100:
            check.fail("bsnet_version", "must be a version string")
        return cls(supernet=supernet, supernet_config=check.supernet_config(doc.get("supernet_config", {})),
                   gates=gates, kept=kept, projected=projected,
                   dropped=check.gate_list(doc.get("dropped", []), "dropped", gates),
                   added=check.gate_list(doc.get("added", []), "added", gates),
                   exchanged=check.gate_list(doc.get("exchanged", []), "exchanged", gates),
                   metrics=check.metrics(doc.get("metrics", {}), gates), widths=check.widths(doc.get("widths", {})),
                   format_version=version,
                   bsnet_version=bsnet_version, **costs)


def _is_name(value: Any) -> bool:
    """A gate, cost or super network name: a short one-line string (printable, so it never breaks a line)."""
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


def _is_number(value: Any, low: float = 0.0, high: float = math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


class _Checker:
    """The field checks of `Architecture.from_dict`, each failing with one line naming the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field_name: str, why: str) -> None:
        raise ValueError(f"{self.source}: field {field_name!r} {why}")

    def mapping(self, value: Any, name: str, ok: Callable[[Any], bool], what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(name, f"must map names to {what}s")
        for k, v in value.items():
            if not _is_name(k):
                self.fail(name, f"has the key {str(k)[:40]!r}, not a one-line name")
            if not ok(v):
                self.fail(name, f"maps {k!r} to {str(v)[:40]!r}, not {what}")
        return value

    def gate_list(self, value: Any, name: str, gates: dict[str, float]) -> list[str]:
        if not isinstance(value, list) or not all(_is_name(g) for g in value):
            self.fail(name, "must be a list of gate names")
        unknown = [g for g in value if g not in gates] if gates else []  # no gates recorded: the network checks
        if unknown:
            self.fail(name, f"names gates that 'gates' does not have: {unknown[:3]}")
        if len(set(value)) != len(value):
            self.fail(name, "names a gate twice")
        return value

    def supernet_config(self, value: Any) -> dict[str, Any]:
        """Keys are names; a converted model's own settings are typed (the registry checks a fabric's)."""
        if not isinstance(value, dict) or not all(_is_name(k) for k in value):
            self.fail("supernet_config", "must map setting names to values")
        if "from_model" in value:
            shape, gate, leaves = value.get("input_shape"), value.get("gate", "residual"), value.get("leaf_modules", [])
            if not isinstance(shape, list) or not shape or not all(type(d) is int and d > 0 for d in shape):
                self.fail("supernet_config", "input_shape must be a list of positive integers")
            if not (_is_name(gate) or isinstance(gate, list) and all(_is_name(g) for g in gate)):
                self.fail("supernet_config", "gate must be a name or a list of names")
            if not isinstance(leaves, list) or not all(_is_name(n) for n in leaves):
                self.fail("supernet_config", "leaf_modules must be a list of names")
            if not (type(value.get("width_groups", 1)) is int and value.get("width_groups", 1) >= 1):
                self.fail("supernet_config", "width_groups must be an integer >= 1")
            if "inputs" in value:
                try:
                    check_spec(value["inputs"])
                except ValueError as e:
                    self.fail("supernet_config", str(e))
        return value

    def widths(self, value: Any) -> dict[str, list[int]]:
        self.mapping(value, "widths", lambda v: isinstance(v, list) and len(v) == 2 and all(
            type(c) is int for c in v) and 0 < v[0] <= v[1], "[kept, all] channels")
        return value

    def metrics(self, value: Any, gates: dict[str, float]) -> dict[str, Any]:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            self.fail("metrics", "must map names to values")
        for k in FRACTION_METRICS:
            if k in value and not (value[k] is None or _is_number(value[k], 0.0, 1.0)):
                self.fail("metrics", f"{k} must be a fraction in [0, 1], got {str(value[k])[:40]!r}")
        if "epochs" in value and not (type(value["epochs"]) is int and value["epochs"] >= 0):
            self.fail("metrics", "epochs must be an integer >= 0")
        selection = value.get("selection", [])
        if not isinstance(selection, list) or not all(
                isinstance(c, dict) and _is_number(c.get("val_acc"), 0.0, 1.0) for c in selection):
            self.fail("metrics", "selection must be a list of candidates, each with its val_acc in [0, 1]")
        for c in selection:
            self.gate_list(c.get("kept", []), "metrics.selection.kept", gates)
        if ("selected" in value or selection) and not (
                type(value.get("selected")) is int and 0 <= value["selected"] < len(selection)):
            self.fail("metrics", "selected must be the index of one of the selection's candidates")
        return value
