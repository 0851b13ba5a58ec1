"""The paper's distributed cost: sequential steps when live nodes run on n parallel workers."""
from __future__ import annotations

import numpy as np
import torch

from bsnet.costs.base import Cost
from bsnet.costs.registry import register_cost
from bsnet.supernet import SuperNetwork


class ParallelCost(Cost):
    """Number of sequential computation steps of a greedy schedule on `workers` parallel workers.

    The schedule: at each step, up to `workers` live computing nodes whose live computing ancestors are all
    done run at once, chosen in topological order. Nodes that compute nothing (sums, identities, ReLUs:
    FlopCounterMode counts 0 FLOPs in them, unless the graph says otherwise) take no step; they pass their
    inputs through. With `workers=None` (unlimited) the cost is the depth of the live graph counted in
    computing nodes. The groups of a width split run as one layer pair: they are one unit, one step if any is live.
    """

    name = "parallel"
    unit = "steps"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def __call__(self, net: SuperNetwork, masks: torch.Tensor) -> torch.Tensor:
        single = masks.dim() == 1
        live = net.graph.live(masks.reshape(-1, net.num_gates)).numpy()
        live_edges = net.graph.live_edges(masks.reshape(-1, net.num_gates)).numpy()
        out = torch.tensor([float(self._steps(net, l, e)) for l, e in zip(live, live_edges)], dtype=torch.float64)
        return out[0] if single else out

    def _steps(self, net: SuperNetwork, live: np.ndarray, live_edges: np.ndarray) -> int:
        g = net.graph
        order = g.order
        computes = [net.profile[n].steps for n in order]
        # unit[i]: what node i is scheduled as, itself or (for a width group) its split's first group.
        unit = list(range(len(order)))
        for split in g.width_splits:
            first = min(g.index(m) for m in split.groups)
            for m in split.groups:
                unit[g.index(m)] = first
        edges = g.edges
        # deps[u]: the nearest live computing units before unit u (through non-computing nodes).
        deps: dict[int, set[int]] = {}
        reach: list[set[int]] = [set() for _ in order]  # what a consumer of node i must wait for
        preds: list[list[int]] = [[] for _ in order]
        for e_i, e in enumerate(edges):
            if live_edges[e_i]:
                preds[g.index(e.dst)].append(g.index(e.src))
        for i in range(len(order)):
            if not live[i]:
                continue
            before = set().union(*(reach[p] for p in preds[i])) if preds[i] else set()
            if computes[i]:
                deps.setdefault(unit[i], set()).update(before)
            reach[i] = {unit[i]} if computes[i] else before
        todo = sorted(deps)  # a unit's number is its first node's position: topological order
        if self.workers is None:  # depth: longest chain of computing units
            depth: dict[int, int] = {}
            for u in todo:
                depth[u] = 1 + max((depth[d] for d in deps[u]), default=0)
            return max(depth.values(), default=0)
        done: set[int] = set()
        steps = 0
        while len(done) < len(todo):
            ready = [u for u in todo if u not in done and deps[u] <= done][: self.workers]
            done.update(ready)
            steps += 1
        return steps

    def cheapest(self, net: SuperNetwork) -> tuple[float, torch.Tensor]:
        # Any connected architecture contains an input→output path, and needs at least as many steps as
        # that path has computing nodes: the shortest such path is a lower bound, reached by the path alone.
        return net.graph.shortest_path([float(net.profile[n].steps) for n in net.graph.order])


@register_cost("parallel")
def _parallel_cost(parallel_workers: int | None = None) -> ParallelCost:
    return ParallelCost(parallel_workers)
