"""FLOPs of the live sub-graph, per example, as PyTorch's FlopCounterMode counts them."""
from __future__ import annotations

import torch

from bsnet.costs.base import AdditiveCost
from bsnet.costs.registry import register_cost
from bsnet.supernet import SuperNetwork


@register_cost("flops")
class FlopsCost(AdditiveCost):
    """Per-node FLOPs measured once with `torch.utils.flop_counter.FlopCounterMode` at batch size 1.

    Its convention: 2 FLOPs per multiply-add, counted for convolutions and matrix products; element-wise
    operations (BatchNorm, ReLU, sums, resampling) count 0.
    """

    name = "flops"
    unit = "FLOPs"

    def node_costs(self, net: SuperNetwork) -> torch.Tensor:
        return torch.tensor([float(net.profile[n].flops) for n in net.graph.order], dtype=torch.float64)
