"""Parameters of the live sub-graph (the memory the found network needs for its weights)."""
from __future__ import annotations

import torch

from bsnet.costs.base import AdditiveCost
from bsnet.supernet import SuperNetwork


class ParamsCost(AdditiveCost):
    """Number of parameters of live nodes (BatchNorm's affine weights included, running buffers not)."""

    name = "params"
    unit = "parameters"

    def node_costs(self, net: SuperNetwork) -> torch.Tensor:
        return torch.tensor([float(net.profile[n].params) for n in net.graph.order], dtype=torch.float64)
