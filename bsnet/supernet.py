"""SuperNetwork: a graph of modules run under an explicit architecture mask.

Three ways to run it, chosen by the mask passed to `forward` (the mask is never stored on modules):

* `mask` shaped `[G]`: one architecture for the whole batch; only live nodes are executed.
* `mask` shaped `[B, G]`: one architecture per example, the reference code's mode: every node is
  computed and each gated edge's output is multiplied by its gate.
* `grouped=True` with `mask` shaped `[K, G]`: the batch is split into K groups (`torch.tensor_split`)
  and each group runs only its own live sub-graph.

A disconnected architecture (output unreachable) predicts from a zero input to the output node.

The channel groups of a width split (`Graph.add_width_split`, bsnet.width) are nodes like any other, except that the
live modes run a pair's live groups as one layer pair of their concatenated weights, not one small layer per group.

The inputs are one batch-first tensor or a dict of them (bsnet.inputs). A network may have a `context` module: what
it computes from the inputs alone (an attention mask, position ids, the batch size) every node module marked
`reads_context` gets beside its input, `module(h, context)`, and the input node gets it instead of the inputs. It is
computed per architecture's slice of the batch, so it always matches the examples it is read with.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import add
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bsnet.graph import Graph
from bsnet import inputs as batches
from bsnet.inputs import Inputs, InputSpec, batch_size, zeros
from bsnet.width import check_split, fused_forward


@dataclass(frozen=True)
class NodeProfile:
    """What one node costs, measured once at the network's input shape with batch size 1."""

    in_shape: tuple[int, ...]  # per example, after combining inputs
    out_shape: tuple[int, ...]
    flops: int  # FlopCounterMode's count (2 per multiply-add)
    params: int
    steps: bool  # takes a computation step when scheduled (ParallelCost)


class SuperNetwork(nn.Module):
    """A DAG of named modules whose gated edges an architecture mask switches on and off.

    Args:
        graph: the structure; frozen here.
        modules: one module per node, keyed by node name. The input node's module gets the network's input.
        input_shape: one example's input shape, e.g. `(3, 32, 32)`.
        name: registry name (for rebuilding from an architecture file), if any.
        config: the configuration the registry builds it from.
        context: computes the side values node modules marked `reads_context` read, from the inputs.
        input_spec: for dict inputs, each input's dtype and per-example shape (bsnet.inputs.InputSpec).
    """

    def __init__(self, graph: Graph, modules: Mapping[str, nn.Module], input_shape: Sequence[int], *,
                 name: str | None = None, config: Mapping[str, Any] | None = None,
                 context: nn.Module | None = None, input_spec: InputSpec | None = None) -> None:
        super().__init__()
        self.graph = graph.freeze()
        missing = [n for n in self.graph.order if n not in modules]
        extra = [n for n in modules if n not in self.graph.order]
        if missing or extra:
            raise ValueError(f"modules do not match the graph's nodes (missing {missing}, unknown {extra})")
        self.blocks = nn.ModuleDict({n: modules[n] for n in self.graph.order})
        self.input_shape = tuple(int(s) for s in input_shape)
        self.name = name
        self.config = dict(config or {})
        self.context = context
        self.input_spec = None if input_spec is None else dict(input_spec)
        self._reads = frozenset(n for n, m in self.blocks.items() if getattr(m, "reads_context", False))
        # Per-node inputs, precomputed as (source name, gate index or None) for the forward loops.
        self._inputs = {n: [(e.src, e.gate) for e in self.graph.in_edges(n)] for n in self.graph.order}
        for split in self.graph.width_splits:
            check_split([modules[n] for n in split.groups], split.name)
        self._plans: dict[bytes, tuple | None] = {}  # see _plan
        self.profile = self._measure()

    def __getstate__(self) -> dict:
        # A copy or a pickle starts without the plan cache: deep-copying up to 4096 plans took about 1 s per search
        # epoch (the validation scores a copy of the network) on the digits demo.
        return {**super().__getstate__(), "_plans": {}}

    # ---- description ----------------------------------------------------------------------------
    @property
    def num_gates(self) -> int:
        return self.graph.num_gates

    @property
    def gate_names(self) -> list[str]:
        return self.graph.gate_names

    def full_mask(self) -> torch.Tensor:
        return torch.ones(self.num_gates)

    def example_inputs(self, batch: int = 1, device: torch.device | str = "cpu") -> Inputs:
        """Zero inputs of `batch` examples, of the network's input shape or specification."""
        return zeros(self.input_spec, self.input_shape, batch, device)

    def _node(self, n: str, h: Any, context: Any) -> torch.Tensor:
        """Node `n`'s module on its combined input `h` (the inputs, for the input node)."""
        if self.context is None:
            return self.blocks[n](h)
        if n == self.graph.input:
            return self.blocks[n](context)
        return self.blocks[n](h, context) if n in self._reads else self.blocks[n](h)

    @torch.no_grad()
    def _measure(self) -> dict[str, NodeProfile]:
        """Shapes, FLOPs and parameters of every node, on one zero example of the input shape."""
        was_training = self.training
        self.eval()  # BatchNorm cannot take training statistics from one 1x1 example
        try:
            device = next((p.device for p in self.parameters()), torch.device("cpu"))
            inputs = self.example_inputs(1, device)
            with FlopCounterMode(display=False) as counter:  # what the inputs alone give: the input node's cost
                context = None if self.context is None else self.context(inputs)
            context_flops = int(counter.get_total_flops())
            outs: dict[str, torch.Tensor] = {}
            prof = {}
            for n in self.graph.order:
                if n == self.graph.input:
                    h = inputs
                else:
                    ins = [outs[s] for s, _ in self._inputs[n]]
                    if not ins:
                        raise ValueError(f"node {n!r} has no inputs")
                    h = self._combine(n, ins)
                with FlopCounterMode(display=False) as counter:
                    y = self._node(n, h, context)
                outs[n] = y
                flops = int(counter.get_total_flops()) + (context_flops if n == self.graph.input else 0)
                params = sum(p.numel() for p in self.blocks[n].parameters())
                steps = self.graph.node(n).steps
                in_shape = self.input_shape if n == self.graph.input else tuple(h.shape[1:])
                prof[n] = NodeProfile(in_shape, tuple(y.shape[1:]), flops, params,
                                      bool(flops > 0) if steps is None else steps)
            return prof
        finally:
            self.train(was_training)

    def _combine(self, node: str, ins: list[torch.Tensor]) -> torch.Tensor:
        if self.graph.node(node).combine == "concat":
            return torch.cat(ins, dim=1)
        return ins[0] if len(ins) == 1 else reduce(add, ins)

    # ---- running --------------------------------------------------------------------------------
    def forward(self, x: Inputs, mask: torch.Tensor | None = None, grouped: bool = False) -> torch.Tensor:
        """`x`: the inputs (a tensor or a dict of tensors, batch first). `mask`: [G] one architecture, [B, G] one
        per example (the reference's mode), or [K, G] with `grouped` (K architectures on K consecutive slices of the
        batch). Single and grouped masks only choose which modules run: they are read on the CPU (a GPU mask is
        copied back at every forward)."""
        if mask is None:
            mask = self.full_mask()
        if mask.shape[-1] != self.num_gates:
            raise ValueError(f"mask has {mask.shape[-1]} gates, the network has {self.num_gates}")
        if self.input_spec is not None:  # a captured program runs on the shapes it was captured with
            if not isinstance(x, Mapping) or set(x) != set(self.input_spec):
                raise ValueError(f"the network takes a dict of {', '.join(self.input_spec)}")
            for name, (_, shape) in self.input_spec.items():
                if tuple(x[name].shape[1:]) != tuple(shape):
                    raise ValueError(f"input {name!r} must be shaped (batch, {', '.join(map(str, shape))}), got "
                                     f"{tuple(x[name].shape)}")
        if grouped:
            if mask.dim() != 2 or mask.shape[0] > batch_size(x):
                raise ValueError("grouped mode takes masks shaped [K, num_gates] with K <= batch size")
            return torch.cat([self._forward_live(c, m) for c, m in zip(batches.split(x, mask.shape[0]), mask)])
        if mask.dim() == 1:
            return self._forward_live(x, mask)
        if mask.dim() == 2 and mask.shape[0] == batch_size(x):
            return self._forward_masked(x, mask)
        raise ValueError(f"mask must be [num_gates] or [batch, num_gates], got {tuple(mask.shape)}")

    def _plan(self, mask: torch.Tensor) -> tuple[tuple[str, tuple, bool, tuple[str, ...] | None], ...] | None:
        """One architecture's live sub-graph as (value, inputs, concat?, groups) operations in topological order, an
        input being a value's name or, for a concatenation, the per-example shape of the zeros standing in for a
        dropped one. A value is a node's output (groups None) or, named after its width split, the sum of the split's
        live `groups` computed as one layer pair. None when the output is unreachable. Cached by mask: training,
        evaluating or fine-tuning one architecture, or a search whose gates have settled, runs the same masks again."""
        kept = mask.detach().cpu() > 0.5
        key = kept.numpy().tobytes()
        if key in self._plans:
            return self._plans[key]
        graph = self.graph
        live = dict(zip(graph.order, graph.live(kept).tolist()))
        gates = kept.tolist()
        plan = None
        if live[graph.output]:
            ops: list[tuple[str, tuple, bool, tuple[str, ...] | None]] = []
            fused: set[str] = set()
            for n in graph.order:
                if not live[n] or n == graph.input:
                    continue
                split = graph.width_split(n)
                if split is not None:  # the first live group stands for all: one op computes their sum
                    if split.name not in fused:
                        fused.add(split.name)
                        ops.append((split.name, (split.source,), False, tuple(m for m in split.groups if live[m])))
                    continue
                concat = graph.node(n).combine == "concat"
                srcs: list = []
                for s, g in self._inputs[n]:
                    if live[s] and (g is None or gates[g]):
                        split = graph.width_split(s)
                        if split is None:
                            srcs.append(s)
                        elif split.name not in srcs:  # a group's only edge leads here: add the sum once
                            srcs.append(split.name)
                    elif concat:  # a concatenation keeps its channel layout: a dropped input becomes zeros
                        srcs.append(self.profile[s].out_shape)
                ops.append((n, tuple(srcs), concat, None))
            plan = tuple(ops)
        if len(self._plans) >= 4096:  # a long search samples many masks: bound the cache
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _forward_live(self, x: Inputs, mask: torch.Tensor) -> torch.Tensor:
        """Execute only the live sub-graph of one architecture."""
        plan = self._plan(mask)
        context = None if self.context is None else self.context(x)
        if plan is None:
            return self._disconnected(x, context)
        start = self._node(self.graph.input, x, context)
        outs = {self.graph.input: start}
        for n, srcs, concat, groups in plan:
            ins = [outs[s] if isinstance(s, str) else start.new_zeros(start.shape[0], *s) for s in srcs]
            h = torch.cat(ins, dim=1) if concat else ins[0] if len(ins) == 1 else reduce(add, ins)
            outs[n] = self._node(n, h, context) if groups is None else \
                fused_forward([self.blocks[m] for m in groups], h, context)
        return outs[self.graph.output]

    def _disconnected(self, x: Inputs, context: Any) -> torch.Tensor:
        out = self.graph.output
        param = next((p for p in self.parameters() if p.is_floating_point()), None)
        like = {} if param is None else {"device": param.device, "dtype": param.dtype}
        zeros = torch.zeros(batch_size(x), *self.profile[out].in_shape, **like)
        return self._node(out, zeros, context)

    def _forward_masked(self, x: Inputs, mask: torch.Tensor) -> torch.Tensor:
        """The reference code's mode: every node computed, gated outputs multiplied per example. A node dead in an
        example's architecture contributes zeros there, also along ungated edges (its BatchNorm shift would leak
        otherwise), so that each example gets what the live mode computes for its architecture."""
        context = None if self.context is None else self.context(x)
        outs: dict[str, torch.Tensor] = {self.graph.input: self._node(self.graph.input, x, context)}
        start = outs[self.graph.input]
        b = start.shape[0]
        live = self.graph.live(mask).to(device=start.device, dtype=start.dtype)  # [B, N], from the mask where it lies
        mask = mask.to(device=start.device, dtype=start.dtype)
        index = self.graph.index
        connected = live[:, index(self.graph.output)]
        for n in self.graph.order:
            if n == self.graph.input:
                continue
            ins = []
            for s, g in self._inputs[n]:
                keep = live[:, index(s)] if g is None else live[:, index(s)] * mask[:, g]
                ins.append(outs[s] * keep.view(b, *([1] * (outs[s].dim() - 1))))
            h = self._combine(n, ins)
            if n == self.graph.output:  # disconnected examples predict from zeros, as the live mode
                h = h * connected.view(b, *([1] * (h.dim() - 1)))
            outs[n] = self._node(n, h, context)
        return outs[self.graph.output]
