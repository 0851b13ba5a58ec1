"""The super network's DAG: named nodes, fixed and gated edges, topological order and live sets.

The graph holds structure only (no modules, no tensors of weights). A mask is a vector over the gated
edges; an edge is *kept* if it is fixed or its gate is 1. A node is *live* when it is reachable from the
input through kept edges and reaches the output through kept edges: only live nodes cost anything and
only they are computed.

A width split (`add_width_split`) declares nodes that are the channel groups of one layer pair (bsnet.width): fed by
one source, summed at one node. They stay ordinary gated nodes for liveness and costs; the network runs a pair's live
groups as one layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

Combine = Literal["sum", "concat"]


@dataclass(frozen=True)
class Node:
    name: str
    combine: Combine = "sum"
    pos: tuple[float, float] | None = None  # where drawings put it (layer, scale) or similar
    steps: bool | None = None  # takes a computation step (ParallelCost); None: decided by its FLOPs


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    gate: int | None  # index into the gate vector, None for a fixed edge


@dataclass(frozen=True)
class WidthSplit:
    """The channel groups of one layer pair: nodes fed by `source` alone and summed at `merge` alone."""

    name: str
    groups: tuple[str, ...]
    source: str
    merge: str


@dataclass(frozen=True)
class _Layout:
    """What freezing computes once, for every query: edges sorted by their destination's position so that one pass
    in order propagates reachability, and the same edges as index arrays."""

    order: list[str]
    index: dict[str, int]
    edges: list[Edge]
    in_edges: dict[str, list[int]]
    src: np.ndarray  # [E] position of each edge's source in `order`
    dst: np.ndarray  # [E] position of each edge's destination
    gate: np.ndarray  # [E] each edge's gate, -1 for a fixed edge
    splits: dict[str, WidthSplit]  # by name
    split_of: dict[str, WidthSplit]  # by group node


class Graph:
    """A DAG with one input node (fed by the network's input) and one output node.

    Build it with `add_node` and `add_edge`. The first query about the whole structure (order, nodes, edges,
    masks) freezes it, as `freeze()` does: the structure is checked once and later changes raise a RuntimeError,
    since networks and costs built from the graph keep its order and gate indices.
    """

    def __init__(self, input: str, output: str) -> None:
        self._input = input
        self._output = output
        self._nodes: dict[str, Node] = {}
        self._edges: list[Edge] = []
        self._gate_names: list[str] = []
        self._splits: dict[str, tuple[str, ...]] = {}
        self._layout: _Layout | None = None

    def __repr__(self) -> str:
        return (f"Graph(input={self._input!r}, output={self._output!r}, nodes={len(self._nodes)}, "
                f"edges={len(self._edges)}, gates={len(self._gate_names)})")

    @property
    def input(self) -> str:
        return self._input

    @input.setter
    def input(self, name: str) -> None:
        self._check_mutable()
        self._input = name

    @property
    def output(self) -> str:
        return self._output

    @output.setter
    def output(self, name: str) -> None:
        self._check_mutable()
        self._output = name

    # ---- building -------------------------------------------------------------------------------
    def add_node(self, name: str, *, combine: Combine = "sum", pos: tuple[float, float] | None = None,
                 steps: bool | None = None) -> str:
        self._check_mutable()
        if name in self._nodes:
            raise ValueError(f"duplicate node name {name!r}")
        if combine not in ("sum", "concat"):
            raise ValueError(f"node {name!r}: combine must be 'sum' or 'concat', not {combine!r}")
        self._nodes[name] = Node(name, combine, pos, steps)
        return name

    def add_edge(self, src: str, dst: str, gate: str | None = None) -> None:
        """Connect `src` to `dst`; `gate` names a new gate that switches this edge (None: always kept)."""
        self._check_mutable()
        for n in (src, dst):
            if n not in self._nodes:
                raise ValueError(f"edge {src!r} -> {dst!r}: unknown node {n!r}")
        index = None
        if gate is not None:
            if gate in self._gate_names:
                raise ValueError(f"duplicate gate name {gate!r}")
            index = len(self._gate_names)
            self._gate_names.append(gate)
        self._edges.append(Edge(src, dst, index))

    def add_width_split(self, name: str, groups: Sequence[str]) -> str:
        """Declare `groups` as the channel groups of one layer pair (see bsnet.width), named `name` (not a node).

        Each group node must have exactly one incoming edge, all from the same source, and exactly one outgoing edge,
        all to the same summing node; gates on those edges switch the groups like any other gated edge. This is
        checked when the graph is frozen (edges may be added after this call).
        """
        self._check_mutable()
        groups = tuple(groups)
        if name in self._splits:
            raise ValueError(f"duplicate width split name {name!r}")
        if not groups or len(set(groups)) != len(groups):
            raise ValueError(f"width split {name!r}: give one or more distinct group nodes")
        for n in groups:
            if n not in self._nodes:
                raise ValueError(f"width split {name!r}: unknown node {n!r}")
            if any(n in other for other in self._splits.values()):
                raise ValueError(f"width split {name!r}: node {n!r} is already a group of another split")
        self._splits[name] = groups
        return name

    def freeze(self) -> "Graph":
        """Fix the structure: check it and compute the topological order used by everything else."""
        if self._layout is None:
            self._layout = self._lay_out()
        return self

    def _lay_out(self) -> _Layout:
        for n in (self._input, self._output):
            if n not in self._nodes:
                raise ValueError(f"the graph has no node named {n!r}")
        indeg = {n: 0 for n in self._nodes}
        succ: dict[str, list[str]] = {n: [] for n in self._nodes}
        for e in self._edges:
            indeg[e.dst] += 1
            succ[e.src].append(e.dst)
        if indeg[self._input]:
            raise ValueError(f"the input node {self._input!r} cannot have incoming edges")
        # Kahn's algorithm, stable: ties keep insertion order so that orders (and names) are reproducible.
        order, ready = [], [n for n in self._nodes if indeg[n] == 0]
        while ready:
            n = ready.pop(0)
            order.append(n)
            for m in succ[n]:
                indeg[m] -= 1
                if indeg[m] == 0:
                    ready.append(m)
        if len(order) != len(self._nodes):
            raise ValueError("the graph has a cycle")
        index = {n: i for i, n in enumerate(order)}
        edges = sorted(self._edges, key=lambda e: (index[e.dst], index[e.src]))
        splits = {name: self._check_split(name, groups) for name, groups in self._splits.items()}
        return _Layout(
            order=order, index=index, edges=edges,
            in_edges={n: [i for i, e in enumerate(edges) if e.dst == n] for n in order},
            src=np.array([index[e.src] for e in edges], dtype=np.int64),
            dst=np.array([index[e.dst] for e in edges], dtype=np.int64),
            gate=np.array([-1 if e.gate is None else e.gate for e in edges], dtype=np.int64),
            splits=splits, split_of={n: s for s in splits.values() for n in s.groups})

    def _check_split(self, name: str, groups: tuple[str, ...]) -> WidthSplit:
        """The split's source and summing node, checked: the network runs its groups as one layer pair, which
        must read one value and whose outputs only a sum reads."""
        if name in self._nodes:
            raise ValueError(f"width split {name!r} has the name of a node")
        ins = {n: [e.src for e in self._edges if e.dst == n] for n in groups}
        outs = {n: [e.dst for e in self._edges if e.src == n] for n in groups}
        if any(len(v) != 1 for v in (*ins.values(), *outs.values())) or {self._input, self._output} & set(groups):
            raise ValueError(f"width split {name!r}: each group needs exactly one incoming and one outgoing edge")
        sources, merges = {v[0] for v in ins.values()}, {v[0] for v in outs.values()}
        if len(sources) != 1 or len(merges) != 1:
            raise ValueError(f"width split {name!r}: its groups must share one source and one summing node")
        merge = merges.pop()
        if self._nodes[merge].combine != "sum":
            raise ValueError(f"width split {name!r}: its groups must meet at a summing node, not at {merge!r}")
        return WidthSplit(name, groups, sources.pop(), merge)

    @property
    def _lay(self) -> _Layout:
        """The frozen layout, freezing the graph on first use."""
        if self._layout is None:
            self._layout = self._lay_out()
        return self._layout

    def _check_mutable(self) -> None:
        if self._layout is not None:
            raise RuntimeError("the graph is frozen (it was queried or used by a network): build a new one to "
                               "change its structure")

    # ---- reading --------------------------------------------------------------------------------
    @property
    def order(self) -> list[str]:
        """Node names in topological order."""
        return list(self._lay.order)

    @property
    def nodes(self) -> list[Node]:
        return [self._nodes[n] for n in self._lay.order]

    def node(self, name: str) -> Node:
        return self._nodes[name]

    @property
    def edges(self) -> list[Edge]:
        """Edges sorted by their destination's position in `order`."""
        return list(self._lay.edges)

    @property
    def gate_names(self) -> list[str]:
        return list(self._gate_names)

    @property
    def num_gates(self) -> int:
        return len(self._gate_names)

    @property
    def num_nodes(self) -> int:
        return len(self._lay.order)

    def index(self, name: str) -> int:
        return self._lay.index[name]

    @property
    def width_splits(self) -> list[WidthSplit]:
        """The declared width splits (`add_width_split`), with their source and summing nodes."""
        return list(self._lay.splits.values())

    def width_split(self, node: str) -> WidthSplit | None:
        """The width split that `node` is a group of, if any."""
        return self._lay.split_of.get(node)

    def in_edges(self, name: str) -> list[Edge]:
        lay = self._lay
        return [lay.edges[i] for i in lay.in_edges[name]]

    # ---- masks ----------------------------------------------------------------------------------
    def _as_bool(self, mask: torch.Tensor | np.ndarray | Sequence[float]) -> tuple[np.ndarray, bool]:
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        single = m.ndim == 1
        m = np.atleast_2d(m) > 0.5
        if m.shape[-1] != self.num_gates:
            raise ValueError(f"mask has {m.shape[-1]} gates, the graph has {self.num_gates}")
        return m, single

    def _kept(self, m: np.ndarray) -> np.ndarray:
        """[B, E] bool: edges kept by each mask (fixed edges always)."""
        gate = self._lay.gate
        kept = np.ones((m.shape[0], len(gate)), dtype=bool)
        gated = gate >= 0
        kept[:, gated] = m[:, gate[gated]]
        return kept

    def _live(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Live nodes [B, N] and live edges [B, E] for boolean masks [B, G]."""
        lay = self._lay
        src, dst = lay.src, lay.dst
        kept = self._kept(m)
        b, n = m.shape[0], len(lay.order)
        fwd = np.zeros((b, n), dtype=bool)
        fwd[:, lay.index[self._input]] = True
        for i in range(len(src)):  # sorted by destination: sources are final when read
            fwd[:, dst[i]] |= fwd[:, src[i]] & kept[:, i]
        bwd = np.zeros((b, n), dtype=bool)
        bwd[:, lay.index[self._output]] = True
        for i in range(len(src) - 1, -1, -1):
            bwd[:, src[i]] |= bwd[:, dst[i]] & kept[:, i]
        live = fwd & bwd
        live_edges = kept & live[:, src] & live[:, dst]
        return live, live_edges

    def live(self, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Live nodes, bool, shaped like the mask with gates replaced by nodes ([N] or [B, N])."""
        m, single = self._as_bool(mask)
        live = torch.from_numpy(self._live(m)[0])
        return live[0] if single else live

    def live_edges(self, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
        m, single = self._as_bool(mask)
        edges = torch.from_numpy(self._live(m)[1])
        return edges[0] if single else edges

    def connected(self, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Whether the output is reachable from the input ([] or [B] bool)."""
        live = self.live(mask)
        return live[..., self._lay.index[self._output]]

    def prune(self, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The same architecture with the gates of dead edges set to 0 (float, same shape)."""
        m, single = self._as_bool(mask)
        _, live_edges = self._live(m)
        out = np.zeros(m.shape, dtype=np.float32)
        for i, g in enumerate(self._lay.gate):
            if g >= 0:
                out[:, g] = live_edges[:, i]
        t = torch.from_numpy(out)
        return t[0] if single else t

    def paths_through(self, gate_cost: Sequence[float]) -> torch.Tensor:
        """[G, G]: row g keeps the cheapest input→output path through one of gate g's edges, for non-negative gate
        costs (a row of zeros where no path goes through gate g). One pass each way, whatever the number of gates."""
        lay = self._lay
        n, cost = len(lay.order), np.asarray(gate_cost, dtype=np.float64)
        weight = np.where(lay.gate >= 0, cost[np.maximum(lay.gate, 0)], 0.0)
        to, to_via = np.full(n, np.inf), np.full(n, -1, dtype=np.int64)  # from the input to each node
        on, on_via = np.full(n, np.inf), np.full(n, -1, dtype=np.int64)  # from each node to the output
        to[lay.index[self._input]] = on[lay.index[self._output]] = 0.0
        for i in range(len(lay.src)):  # sorted by destination: sources are final when read
            if to[lay.src[i]] + weight[i] < to[lay.dst[i]]:
                to[lay.dst[i]], to_via[lay.dst[i]] = to[lay.src[i]] + weight[i], i
        for i in range(len(lay.src) - 1, -1, -1):  # backwards: destinations are final when read
            if on[lay.dst[i]] + weight[i] < on[lay.src[i]]:
                on[lay.src[i]], on_via[lay.src[i]] = on[lay.dst[i]] + weight[i], i
        total = to[lay.src] + weight + on[lay.dst]  # [E] the cheapest path through each edge
        out = torch.zeros(self.num_gates, self.num_gates)
        for g in range(self.num_gates):
            edges = np.nonzero(lay.gate == g)[0]
            if len(edges) == 0 or not np.isfinite(total[edges].min()):
                continue
            e = edges[np.argmin(total[edges])]
            path = [e]
            node = lay.src[e]
            while to_via[node] >= 0:
                path.append(to_via[node])
                node = lay.src[to_via[node]]
            node = lay.dst[e]
            while on_via[node] >= 0:
                path.append(on_via[node])
                node = lay.dst[on_via[node]]
            gates = lay.gate[path]
            out[g, gates[gates >= 0]] = 1.0
        return out

    def shortest_path(self, node_cost: Sequence[float] | None = None,
                      gate_cost: Sequence[float] | None = None) -> tuple[float, torch.Tensor]:
        """Cheapest input→output path for non-negative node and gate costs: its cost and the mask keeping it.

        Every connected architecture contains such a path with all its nodes live, so for additive costs the
        path's cost is a lower bound of any connected architecture's cost, reached by the returned mask
        unless fixed edges pull other nodes in. With `gate_cost` (the price of keeping each gate) it finds
        the cheapest set of gates to add to connect an architecture.
        """
        lay = self._lay
        n = len(lay.order)
        node_cost = np.zeros(n) if node_cost is None else np.asarray(node_cost, dtype=np.float64)
        gate_cost = np.zeros(self.num_gates) if gate_cost is None else np.asarray(gate_cost, dtype=np.float64)
        best = np.full(n, np.inf)
        via = np.full(n, -1, dtype=np.int64)
        start = lay.index[self._input]
        best[start] = node_cost[start]
        for i in range(len(lay.src)):  # edges sorted by destination: a single relaxation pass suffices
            s, d, g = lay.src[i], lay.dst[i], lay.gate[i]
            c = best[s] + node_cost[d] + (gate_cost[g] if g >= 0 else 0.0)
            if c < best[d]:
                best[d], via[d] = c, i
        out = lay.index[self._output]
        if not np.isfinite(best[out]):
            raise ValueError("the output cannot be reached from the input")
        mask = torch.zeros(self.num_gates)
        d = out
        while via[d] >= 0:
            g = lay.gate[via[d]]
            if g >= 0:
                mask[g] = 1.0
            d = lay.src[via[d]]
        return float(best[out]), mask
