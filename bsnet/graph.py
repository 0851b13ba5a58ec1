"""The super network's DAG: named nodes, fixed and gated edges, topological order and live sets.

The graph holds structure only (no modules, no tensors of weights). A mask is a vector over the gated
edges; an edge is *kept* if it is fixed or its gate is 1. A node is *live* when it is reachable from the
input through kept edges and reaches the output through kept edges: only live nodes cost anything and
only they are computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Graph:
    """A DAG with one input node (fed by the network's input) and one output node."""

    input: str
    output: str
    _nodes: dict[str, Node] = field(default_factory=dict)
    _edges: list[Edge] = field(default_factory=list)
    _gate_names: list[str] = field(default_factory=list)
    _frozen: bool = False

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

    def freeze(self) -> "Graph":
        """Fix the structure: check it and compute the topological order used by everything else."""
        if self._frozen:
            return self
        for n in (self.input, self.output):
            if n not in self._nodes:
                raise ValueError(f"the graph has no node named {n!r}")
        indeg = {n: 0 for n in self._nodes}
        for e in self._edges:
            indeg[e.dst] += 1
        # Kahn's algorithm, stable: ties keep insertion order so that orders (and names) are reproducible.
        order, ready = [], [n for n in self._nodes if indeg[n] == 0]
        succ: dict[str, list[str]] = {n: [] for n in self._nodes}
        for e in self._edges:
            succ[e.src].append(e.dst)
        while ready:
            n = ready.pop(0)
            order.append(n)
            for m in succ[n]:
                indeg[m] -= 1
                if indeg[m] == 0:
                    ready.append(m)
        if len(order) != len(self._nodes):
            raise ValueError("the graph has a cycle")
        if indeg[self.input] != 0 or any(e.dst == self.input for e in self._edges):
            raise ValueError(f"the input node {self.input!r} cannot have incoming edges")
        self._order = order
        self._index = {n: i for i, n in enumerate(order)}
        # Edges sorted by their destination's position so that one pass in order propagates reachability.
        self._edges.sort(key=lambda e: (self._index[e.dst], self._index[e.src]))
        self._in_edges = {n: [i for i, e in enumerate(self._edges) if e.dst == n] for n in order}
        self._out_edges = {n: [i for i, e in enumerate(self._edges) if e.src == n] for n in order}
        self._src_idx = np.array([self._index[e.src] for e in self._edges], dtype=np.int64)
        self._dst_idx = np.array([self._index[e.dst] for e in self._edges], dtype=np.int64)
        self._edge_gate = np.array([-1 if e.gate is None else e.gate for e in self._edges], dtype=np.int64)
        self._frozen = True
        return self

    def _check_mutable(self) -> None:
        if self._frozen:
            raise RuntimeError("the graph is frozen: build a new one to change its structure")

    # ---- reading --------------------------------------------------------------------------------
    @property
    def order(self) -> list[str]:
        """Node names in topological order."""
        return list(self._order)

    @property
    def nodes(self) -> list[Node]:
        return [self._nodes[n] for n in self._order]

    def node(self, name: str) -> Node:
        return self._nodes[name]

    @property
    def edges(self) -> list[Edge]:
        return list(self._edges)

    @property
    def gate_names(self) -> list[str]:
        return list(self._gate_names)

    @property
    def num_gates(self) -> int:
        return len(self._gate_names)

    @property
    def num_nodes(self) -> int:
        return len(self._order)

    def index(self, name: str) -> int:
        return self._index[name]

    def in_edges(self, name: str) -> list[Edge]:
        return [self._edges[i] for i in self._in_edges[name]]

    def gated_edge(self, gate: int) -> Edge:
        return next(e for e in self._edges if e.gate == gate)

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
        kept = np.ones((m.shape[0], len(self._edges)), dtype=bool)
        gated = self._edge_gate >= 0
        kept[:, gated] = m[:, self._edge_gate[gated]]
        return kept

    def _live(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Live nodes [B, N] and live edges [B, E] for boolean masks [B, G]."""
        kept = self._kept(m)
        b, n = m.shape[0], self.num_nodes
        fwd = np.zeros((b, n), dtype=bool)
        fwd[:, self._index[self.input]] = True
        for i, e in enumerate(self._edges):  # sorted by destination: sources are final when read
            fwd[:, self._dst_idx[i]] |= fwd[:, self._src_idx[i]] & kept[:, i]
        bwd = np.zeros((b, n), dtype=bool)
        bwd[:, self._index[self.output]] = True
        for i in range(len(self._edges) - 1, -1, -1):
            bwd[:, self._src_idx[i]] |= bwd[:, self._dst_idx[i]] & kept[:, i]
        live = fwd & bwd
        live_edges = kept & live[:, self._src_idx] & live[:, self._dst_idx]
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
        return live[..., self._index[self.output]]

    def prune(self, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The same architecture with the gates of dead edges set to 0 (float, same shape)."""
        m, single = self._as_bool(mask)
        _, live_edges = self._live(m)
        out = np.zeros(m.shape, dtype=np.float32)
        for i, g in enumerate(self._edge_gate):
            if g >= 0:
                out[:, g] = live_edges[:, i]
        t = torch.from_numpy(out)
        return t[0] if single else t

    def shortest_path(self, node_cost: Sequence[float] | None = None,
                      gate_cost: Sequence[float] | None = None) -> tuple[float, torch.Tensor]:
        """Cheapest input→output path for non-negative node and gate costs: its cost and the mask keeping it.

        Every connected architecture contains such a path with all its nodes live, so for additive costs the
        path's cost is a lower bound of any connected architecture's cost, reached by the returned mask
        unless fixed edges pull other nodes in. With `gate_cost` (the price of keeping each gate) it finds
        the cheapest set of gates to add to connect an architecture.
        """
        n = self.num_nodes
        node_cost = np.zeros(n) if node_cost is None else np.asarray(node_cost, dtype=np.float64)
        gate_cost = np.zeros(self.num_gates) if gate_cost is None else np.asarray(gate_cost, dtype=np.float64)
        best = np.full(n, np.inf)
        via = np.full(n, -1, dtype=np.int64)
        best[self._index[self.input]] = node_cost[self._index[self.input]]
        for i in range(len(self._edges)):  # edges sorted by destination: a single relaxation pass suffices
            s, d, g = self._src_idx[i], self._dst_idx[i], self._edge_gate[i]
            c = best[s] + node_cost[d] + (gate_cost[g] if g >= 0 else 0.0)
            if c < best[d]:
                best[d], via[d] = c, i
        out = self._index[self.output]
        if not np.isfinite(best[out]):
            raise ValueError("the output cannot be reached from the input")
        mask = torch.zeros(self.num_gates)
        d = out
        while via[d] >= 0:
            g = self._edge_gate[via[d]]
            if g >= 0:
                mask[g] = 1.0
            d = self._src_idx[via[d]]
        return float(best[out]), mask
