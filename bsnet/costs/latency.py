"""Inference latency, per node, measured on the device that will run the network.

A latency table (JSON) holds one median forward time per node, keyed by the device, dtype, batch size and
input shape it was measured at, and by the super network's structure. `bsnet profile` writes one on the
target device; a search elsewhere reads it with `LatencyCost.from_table`.

A width split's groups run as one fused layer pair, whose time is not the sum of its groups' times: the table
holds one entry per number k of live groups, `"<split>/<k>"`, measured on the fused pair of k groups (the groups
have equal shapes, so which k does not matter), and none for the group nodes.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

from bsnet.costs.base import AdditiveCost
from bsnet.costs.registry import register_cost
from bsnet.inputs import to_device
from bsnet.supernet import SuperNetwork
from bsnet.width import fuse_groups

TABLE_VERSION = 1


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"


def fingerprint(net: SuperNetwork) -> str:
    """A digest of the structure that latencies depend on: nodes, their modules and their input shapes."""
    h = hashlib.sha256()
    for n in net.graph.order:
        h.update(f"{n}|{net.blocks[n]!r}|{net.profile[n].in_shape}\n".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def measure_latency(net: SuperNetwork, *, device: torch.device | str = "cpu", batch_size: int = 1,
                    dtype: torch.dtype = torch.float32, min_run_time: float = 0.02) -> dict[str, Any]:
    """Measure every node's forward time (median over timed blocks after a warm-up) and return the table."""
    device = torch.device(device)
    was_training = net.training
    net.eval()
    nodes = {}
    context = None  # what a captured program computes from its inputs alone (bsnet.supernet): nodes read it
    if net.context is not None:
        inputs = to_device(net.example_inputs(batch_size), device)
        context_module = copy.deepcopy(net.context).to(device=device)
        context = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                   for k, v in context_module(inputs).items()}  # masks in the nodes' dtype; ids stay integers
    try:
        for key, module, in_shape in _timed(net):
            module = copy.deepcopy(module).to(device=device, dtype=dtype)  # never move the user's net
            x = torch.randn(batch_size, *in_shape, device=device, dtype=dtype)
            stmt = "m(x, c)" if getattr(module, "reads_context", False) else "m(x)"
            if context is not None and key == net.graph.input:  # the inputs, through the context it computes
                module, x = torch.nn.Sequential(context_module, module), inputs
            module(x, context) if stmt == "m(x, c)" else module(x)  # warm-up (allocations, cuDNN algorithms)
            timer = benchmark.Timer(stmt=stmt, globals={"m": module, "x": x, "c": context})
            nodes[key] = float(timer.blocked_autorange(min_run_time=min_run_time).median)
    finally:
        net.train(was_training)
    return {"format_version": TABLE_VERSION, "device": device_name(device), "dtype": str(dtype).replace("torch.", ""),
            "batch_size": batch_size, "input_shape": list(net.input_shape), "supernet": net.name,
            "fingerprint": fingerprint(net), "nodes": nodes}


def _timed(net: SuperNetwork) -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    """(table key, module, input shape) of everything the table times: each node outside width splits, and each
    split's fused pair of k groups for k = 1 .. its number of groups."""
    out = [(n, net.blocks[n], net.profile[n].in_shape) for n in net.graph.order if net.graph.width_split(n) is None]
    for split in net.graph.width_splits:
        groups = [net.blocks[m] for m in split.groups]
        out += [(f"{split.name}/{k}", fuse_groups(groups[:k]), net.profile[split.source].out_shape)
                for k in range(1, len(groups) + 1)]
    return out


def table_keys(net: SuperNetwork) -> list[str]:
    """The keys a latency table of `net` holds (see the module's docstring)."""
    keys = [n for n in net.graph.order if net.graph.width_split(n) is None]
    return keys + [f"{s.name}/{k}" for s in net.graph.width_splits for k in range(1, len(s.groups) + 1)]


def split_times(nodes: dict[str, float], split: str, groups: int) -> torch.Tensor:
    """`[groups]`: the time of the split's fused pair with 1 .. `groups` live groups, never less than with fewer (a
    wider layer measured faster is timing noise): so one group is the split's cheapest, as `cheapest` assumes."""
    times = torch.tensor([float(nodes[f"{split}/{k}"]) for k in range(1, groups + 1)], dtype=torch.float64)
    return times.cummax(0).values


def is_latency_table(path: Path) -> bool:
    """Whether `path` holds a latency table bsnet wrote (`bsnet profile` replaces only such a file)."""
    try:
        table = check_table(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, RecursionError, ValueError):
        return False
    return {"format_version", "device", "fingerprint"} <= set(table)  # what measure_latency writes


def check_table(table: Any, source: str = "the latency table") -> dict[str, Any]:
    """`table` if it is a latency table bsnet can use: `nodes` maps node names to finite, non-negative seconds, and
    `format_version` (where given) is this bsnet's. A table is data: nothing in it is ever evaluated.

    Raises:
        ValueError: one line naming `source` and what is wrong.
    """
    if not isinstance(table, dict) or "nodes" not in table:
        raise ValueError(f"{source} is not a bsnet latency table (no 'nodes')")
    version = table.get("format_version", TABLE_VERSION)
    if type(version) is not int or version != TABLE_VERSION:
        raise ValueError(f"{source} has format version {version!r}; this bsnet reads version {TABLE_VERSION}")
    nodes = table["nodes"]
    if not isinstance(nodes, dict) or not nodes:
        raise ValueError(f"{source}: 'nodes' must map node names to seconds")
    for name, seconds in nodes.items():
        if not isinstance(name, str):
            raise ValueError(f"{source}: 'nodes' has the key {name!r}, not a node name")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds < 0:
            raise ValueError(f"{source}: node {name[:60]!r} takes {str(seconds)[:40]!r} seconds, not a finite "
                             "number >= 0")
    if not isinstance(table.get("fingerprint"), (str, type(None))):
        raise ValueError(f"{source}: 'fingerprint' must be a string")
    return table


class LatencyCost(AdditiveCost):
    """Latency in seconds: the sum of the measured forward times of live nodes.

    Build it from a table (`from_table`) or let it measure the current device once; measurements are cached
    under `$XDG_CACHE_HOME/bsnet/latency/` (or `~/.cache/...`) so a second run does not measure again.
    """

    name = "latency"
    unit = "s"

    def __init__(self, table: dict[str, Any] | None = None, *, device: torch.device | str = "cpu",
                 batch_size: int = 1, cache: bool = True, min_run_time: float = 0.02) -> None:
        self.table = None if table is None else check_table(table)
        self.device = device
        self.batch_size = batch_size
        self.cache = cache
        self.min_run_time = min_run_time

    @classmethod
    def from_table(cls, path: str | os.PathLike) -> "LatencyCost":
        """The cost of the table at `path` (written by `bsnet profile`), checked by `check_table`."""
        try:
            table = json.loads(Path(path).read_text())
        except RecursionError:
            raise ValueError(f"cannot read latency table {path}: its JSON is nested too deeply") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read latency table {path}: "
                             f"{e.strerror if isinstance(e, OSError) and e.strerror else e}") from None
        return cls(check_table(table, f"latency table {path}"))

    def table_for(self, net: SuperNetwork) -> dict[str, Any]:
        """The per-node table of `net`: the given one, checked to be of `net`, or measured once on this device."""
        if self.table is None:
            self.table = self._cached_measure(net)
        missing = [n for n in table_keys(net) if n not in self.table["nodes"]]
        if missing or self.table.get("fingerprint") not in (None, fingerprint(net)):
            raise ValueError(f"the latency table was measured on another super network or input shape "
                             f"({len(missing)} nodes missing); profile this one with `bsnet profile`")
        return self.table

    def _cached_measure(self, net: SuperNetwork) -> dict[str, Any]:
        key = f"{device_name(self.device)}|{self.batch_size}|{fingerprint(net)}"
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bsnet" / "latency"
        path = root / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")
        if self.cache and path.exists():
            try:
                return check_table(json.loads(path.read_text()))
            except (OSError, UnicodeDecodeError, RecursionError, ValueError):
                pass  # a damaged cache entry is measured again
        table = measure_latency(net, device=self.device, batch_size=self.batch_size, min_run_time=self.min_run_time)
        if self.cache:
            try:
                root.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(table, indent=1))
                tmp.replace(path)
            except OSError:
                pass  # caching is an optimisation; a read-only home must not stop a search
        return table

    def node_costs(self, net: SuperNetwork) -> torch.Tensor:
        """Per node; a width group gets its split's time with one live group: exact on a path through one group
        (what `cheapest` takes), while `__call__` times a split by its number of live groups."""
        nodes = self.table_for(net)["nodes"]
        return torch.tensor([float(nodes[n]) if split is None else float(split_times(nodes, split.name, 1)[0])
                             for n, split in ((n, net.graph.width_split(n)) for n in net.graph.order)],
                            dtype=torch.float64)

    def __call__(self, net: SuperNetwork, masks: torch.Tensor) -> torch.Tensor:
        splits = net.graph.width_splits
        if not splits:
            return super().__call__(net, masks)
        nodes = self.table_for(net)["nodes"]  # checked once per call: the fingerprint hashes every module
        live = net.graph.live(masks).to(torch.float64)
        per_node = torch.tensor([0.0 if net.graph.width_split(n) else float(nodes[n]) for n in net.graph.order],
                                dtype=torch.float64)  # the groups are timed by their split, below
        out = live @ per_node
        for split in splits:  # the fused pair of its k live groups
            times = torch.cat([torch.zeros(1, dtype=torch.float64), split_times(nodes, split.name, len(split.groups))])
            k = live[..., [net.graph.index(m) for m in split.groups]].sum(-1).long()
            out = out + times[k]
        return out


@register_cost("latency")
def _latency_cost(latency_table: str | None = None, device: str = "cpu") -> LatencyCost:
    """The table's latencies where one is given (measured on the target device), else this device's, measured."""
    return LatencyCost.from_table(latency_table) if latency_table else LatencyCost(device=device)
