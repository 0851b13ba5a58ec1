"""Parameters of the live sub-graph (the memory the found network needs for its weights)."""
from __future__ import annotations

import torch

from bsnet.costs.base import AdditiveCost
from bsnet.costs.registry import register_cost
from bsnet.supernet import SuperNetwork


@register_cost("params")
class ParamsCost(AdditiveCost):
    """Number of parameters of live nodes (BatchNorm's affine weights included, running buffers not).

    A parameter held by several nodes (a layer the model calls in two places) is stored once: it counts once,
    when any of its nodes is live. `node_costs` splits it evenly between them, so that the cheapest path stays a
    lower bound of every architecture's cost.
    """

    name = "params"
    unit = "parameters"

    def node_costs(self, net: SuperNetwork) -> torch.Tensor:
        own, shared, sizes = _parameter_owners(net)
        return own + (shared / shared.sum(1, keepdim=True).clamp(min=1)).T @ sizes

    def __call__(self, net: SuperNetwork, masks: torch.Tensor) -> torch.Tensor:
        own, shared, sizes = _parameter_owners(net)
        live = net.graph.live(masks).to(torch.float64)
        return live @ own + ((live @ shared.T) > 0).to(torch.float64) @ sizes


def _parameter_owners(net: SuperNetwork) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[N]` each node's parameters that no other node holds; `[S, N]` which nodes hold each shared parameter;
    `[S]` the shared parameters' sizes."""
    holders: dict[int, list[int]] = {}
    size: dict[int, int] = {}
    for j, n in enumerate(net.graph.order):
        for p in net.blocks[n].parameters():
            holders.setdefault(id(p), []).append(j)
            size[id(p)] = p.numel()
    own = torch.zeros(len(net.graph.order), dtype=torch.float64)
    shared_ids = [k for k, js in holders.items() if len(js) > 1]
    for k, js in holders.items():
        if len(js) == 1:
            own[js[0]] += size[k]
    shared = torch.zeros(len(shared_ids), len(net.graph.order), dtype=torch.float64)
    for i, k in enumerate(shared_ids):
        shared[i, holders[k]] = 1.0
    return own, shared, torch.tensor([float(size[k]) for k in shared_ids], dtype=torch.float64)
