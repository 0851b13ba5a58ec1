"""Inference latency, per node, measured on the device that will run the network.

A latency table (JSON) holds one median forward time per node, keyed by the device, dtype, batch size and
input shape it was measured at, and by the super network's structure. `bsnet profile` writes one on the
target device; a search elsewhere reads it with `LatencyCost.from_table`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

from bsnet.costs.base import AdditiveCost
from bsnet.costs.registry import register_cost
from bsnet.supernet import SuperNetwork

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
    try:
        for n in net.graph.order:
            module = copy.deepcopy(net.blocks[n]).to(device=device, dtype=dtype)  # never move the user's net
            x = torch.randn(batch_size, *net.profile[n].in_shape, device=device, dtype=dtype)
            module(x)  # warm-up (allocations, cuDNN algorithm choice)
            timer = benchmark.Timer(stmt="m(x)", globals={"m": module, "x": x})
            nodes[n] = float(timer.blocked_autorange(min_run_time=min_run_time).median)
    finally:
        net.train(was_training)
    return {"format_version": TABLE_VERSION, "device": device_name(device), "dtype": str(dtype).replace("torch.", ""),
            "batch_size": batch_size, "input_shape": list(net.input_shape), "supernet": net.name,
            "fingerprint": fingerprint(net), "nodes": nodes}


class LatencyCost(AdditiveCost):
    """Latency in seconds: the sum of the measured forward times of live nodes.

    Build it from a table (`from_table`) or let it measure the current device once; measurements are cached
    under `$XDG_CACHE_HOME/bsnet/latency/` (or `~/.cache/...`) so a second run does not measure again.
    """

    name = "latency"
    unit = "s"

    def __init__(self, table: dict[str, Any] | None = None, *, device: torch.device | str = "cpu",
                 batch_size: int = 1, cache: bool = True, min_run_time: float = 0.02) -> None:
        self.table = table
        self.device = device
        self.batch_size = batch_size
        self.cache = cache
        self.min_run_time = min_run_time

    @classmethod
    def from_table(cls, path: str | os.PathLike) -> "LatencyCost":
        try:
            table = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read latency table {path}: {e}") from None
        if not isinstance(table, dict) or "nodes" not in table:
            raise ValueError(f"{path} is not a bsnet latency table (no 'nodes')")
        return cls(table)

    def table_for(self, net: SuperNetwork) -> dict[str, Any]:
        """The per-node table of `net`: the given one, checked to be of `net`, or measured once on this device."""
        if self.table is None:
            self.table = self._cached_measure(net)
        missing = [n for n in net.graph.order if n not in self.table["nodes"]]
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
                return json.loads(path.read_text())
            except json.JSONDecodeError:
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
        nodes = self.table_for(net)["nodes"]
        return torch.tensor([float(nodes[n]) for n in net.graph.order], dtype=torch.float64)


@register_cost("latency")
def _latency_cost(latency_table: str | None = None, device: str = "cpu") -> LatencyCost:
    """The table's latencies where one is given (measured on the target device), else this device's, measured."""
    return LatencyCost.from_table(latency_table) if latency_table else LatencyCost(device=device)
