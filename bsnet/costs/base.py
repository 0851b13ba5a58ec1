"""The cost interface: a cost reads the super network's graph and profile and never modifies them."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch

from bsnet.supernet import SuperNetwork


class Cost(ABC):
    """C(H): the cost of the live part of architectures, per example.

    `__call__(net, masks)` takes masks `[B, G]` (or `[G]`) and returns costs `[B]` (or `[]`), in the cost's
    absolute unit. A disconnected architecture is computed nowhere and costs 0.
    """

    name: str = "cost"
    unit: str = ""

    @abstractmethod
    def __call__(self, net: SuperNetwork, masks: torch.Tensor) -> torch.Tensor: ...

    def cheapest(self, net: SuperNetwork) -> tuple[float, torch.Tensor] | None:
        """A lower bound of any connected architecture's cost and a mask reaching it; None when unknown."""
        return None


class AdditiveCost(Cost):
    """A cost that is the sum of per-node costs over live nodes."""

    @abstractmethod
    def node_costs(self, net: SuperNetwork) -> torch.Tensor:
        """`[N]` per-node costs, in the graph's topological order."""

    def __call__(self, net: SuperNetwork, masks: torch.Tensor) -> torch.Tensor:
        live = net.graph.live(masks).to(torch.float64)
        return live @ self.node_costs(net).to(torch.float64)

    def cheapest(self, net: SuperNetwork) -> tuple[float, torch.Tensor]:
        return net.graph.shortest_path(self.node_costs(net).tolist())


class FunctionCost(Cost):
    """A user's own cost from a function `f(net, live) -> [B]` of the live nodes `live` (`[B, N]` bool)."""

    def __init__(self, fn: Callable[[SuperNetwork, torch.Tensor], torch.Tensor], name: str | None = None,
                 unit: str = "") -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")
        self.unit = unit

    def __call__(self, net: SuperNetwork, masks: torch.Tensor) -> torch.Tensor:
        single = masks.dim() == 1
        live = net.graph.live(masks.reshape(-1, net.num_gates))
        out = torch.as_tensor(self.fn(net, live), dtype=torch.float64).reshape(-1)
        out = out * net.graph.connected(masks.reshape(-1, net.num_gates)).to(torch.float64)
        return out[0] if single else out
