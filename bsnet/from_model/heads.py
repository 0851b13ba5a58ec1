"""Attention heads as gated groups: in a branch of a torch.export program that computes
`linear(x, Wq) -> heads -> scaled_dot_product_attention <- heads <- linear(x, Wk), linear(x, Wv)`, then
`linear(attention, Wo)`, each head is a group of the split `<branch>.heads` holding its rows of Wq, Wk, Wv (and their
biases) and its columns of Wo, gated `<branch>.h<j>`. A projection may also be a Conv1D (GPT-2: a transposed weight
behind views) or a third of a fused one (`split` of one q-k-v projection). The attention code itself is kept once
(`core`, each projection a `linear` on the heads' weights) and run on the live heads' weights side by side, as one
attention of fewer heads: the program must find its head count from the weights (Hugging Face's
`view(batch, length, -1, head_dim)`), checked numerically when the network is built (bsnet.from_model.build: where
the code fixes the head count, the branch keeps one gate).
Wo's bias, and what follows Wo in the branch, run where the heads' outputs are summed.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from bsnet.from_model.blocks import Block, parameter_of
from bsnet.from_model.pairs import Source, conv1d, sources

_SHAPE_OPS = {torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten.transpose.int,
              torch.ops.aten.permute.default, torch.ops.aten.contiguous.default, torch.ops.aten.clone.default,
              torch.ops.aten.flatten.using_ints, torch.ops.aten.unflatten.int}


@dataclass
class _Projection:
    """A linear map in the program: the value it gives (`start`), what it reads (`x`), its weight (as `nn.Linear`
    holds it, out x in) and bias, the program's nodes that compute it (`span`), and where its weight and bias live
    in the model (`params`: a parameter, maybe transposed or a slice of rows of it: GPT-2's fused Conv1D)."""

    start: fx.Node
    x: fx.Node
    weight: torch.Tensor
    bias: torch.Tensor | None
    span: list[fx.Node]
    params: tuple[Source | None, Source | None] = (None, None)


@dataclass
class Attention:
    """Where a branch's attention lies: `pre` and `post` (the branch before its projections and after its output
    projection), `core` (from the projections to the output projection), the seven weights by role (as `nn.Linear`
    holds them) and how the program computes the projections (`projections`: q, k, v, o)."""

    pre: list[fx.Node]
    core: list[fx.Node]
    post: list[fx.Node]
    x: fx.Node  # what the projections read
    out: fx.Node  # the output projection's value
    weights: dict[str, torch.Tensor]  # q_w q_b k_w k_b v_w v_b o_w
    o_b: torch.Tensor | None
    heads: int
    head_dim: int
    projections: dict[str, _Projection]

    @property
    def sources(self) -> dict[str, Source | None]:
        """Where each role's weights live in the model (what `save_pretrained` writes into)."""
        out = {}
        for r, p in self.projections.items():
            out[f"{r}_w"], bias = p.params
            if r != "o" or p.bias is not None:
                out[f"{r}_b"] = bias
        return out


def find_attention(root: nn.Module, block: Block, context: set[fx.Node]) -> Attention | None:
    """The attention of `block`'s branch, if it has one whose heads split (see the module's docstring)."""
    branch = block.branch
    sdpa = [n for n in branch if n.op == "call_function"
            and n.target is torch.ops.aten.scaled_dot_product_attention.default]
    if len(sdpa) != 1:
        return None
    s = sdpa[0]
    projections = [_projection_of(root, a) for a in s.args[:3]]
    if any(p is None for p in projections) or len({p.x for p in projections}) != 1:
        return None
    out = _output_projection(root, s)
    if out is None:
        return None
    q_val = s.args[0].meta.get("val")
    if not isinstance(q_val, torch.Tensor) or q_val.dim() != 4 or not isinstance(q_val.shape[1], int):
        return None
    heads, head_dim = int(q_val.shape[1]), int(q_val.shape[3])
    if any(p.bias is None for p in projections) or heads < 2:
        return None
    if any(p.weight.shape[0] != heads * head_dim for p in projections):
        return None  # grouped-query attention (fewer key/value heads) is not split
    if any(k not in ("scale", "is_causal") for k in s.kwargs):
        return None
    x = projections[0].x
    inside = set(branch)
    before, todo = set(), [x]  # x and what computes it within the branch
    while todo:
        n = todo.pop()
        if n in inside and n not in before:
            before.add(n)
            todo.extend(n.all_input_nodes)
    if x is not block.x and x not in before:
        return None
    end = branch.index(out.start)
    pre = [n for n in branch if n in before]
    core = [n for n in branch[:end + 1] if n not in before]
    post = branch[end + 1:]
    entries = {p.span[0] for p in projections}  # the nodes that read x
    attrs = lambda n: {i for i in n.all_input_nodes if i.op == "get_attr"}  # noqa: E731
    allowed_pre = {block.x, *pre}
    if any(not set(n.all_input_nodes) <= allowed_pre | attrs(n) or
           not set(n.users) <= {*pre, *(entries if n is x else ())} for n in pre):
        return None
    if x is block.x and not entries <= set(x.users):
        return None
    allowed_core = {x, *core, *context}
    if any(not set(n.all_input_nodes) <= allowed_core | attrs(n) for n in core):
        return None
    if any(not set(n.all_input_nodes) <= {out.start, *post} | attrs(n) for n in post):
        return None
    weights = {f"{r}_{k}": getattr(p, "weight" if k == "w" else "bias")
               for r, p in zip("qkv", projections) for k in "wb"}
    weights["o_w"] = out.weight
    return Attention(pre, core, post, x, out.start, weights, out.bias, heads, head_dim,
                     dict(zip("qkvo", (*projections, out))))


def _linear(root: nn.Module, n: fx.Node) -> _Projection | None:
    """`n` as a linear map: `aten.linear` on parameters read there alone, or the flattening view of a Conv1D."""
    if n.op == "call_function" and n.target is torch.ops.aten.linear.default and len(n.users) == 1:
        bias_node = n.args[2] if len(n.args) > 2 else None
        w, b = parameter_of(root, n.args[1]), parameter_of(root, bias_node)
        if w is None or (bias_node is not None and b is None) or \
                any(len(a.users) != 1 for a in n.args[1:3] if isinstance(a, fx.Node)):
            return None  # weights that are not parameters read here alone (a buffer, a shared or computed tensor)
        src = tuple(None if p is None else Source(p, None, False) for p in (w, b))
        return _Projection(n, n.args[0], w, b, [n], src)
    found = conv1d(root, n)
    if found is None:
        return None
    layer, span = found
    return _Projection(span[-1], n.args[0], layer.weight, layer.bias, span, sources(layer))


def _projection_of(root: nn.Module, n: fx.Node) -> _Projection | None:
    """The projection that gives an attention's query, key or value: a linear map, or one third of a fused one
    (`split` on its last dimension, GPT-2's c_attn), through shape operations."""
    while n.op == "call_function" and n.target in _SHAPE_OPS and len(n.users) == 1:
        n = n.args[0]
    if n.op == "call_function" and n.target is torch.ops.aten.linear.default:
        return _linear(root, n)
    if n.op != "call_function" or n.target is not operator.getitem or len(n.users) != 1:
        return None
    split, i = n.args
    if split.target is not torch.ops.aten.split.Tensor or split.kwargs:
        return None
    fused, size, dim = (*split.args, 0)[:3]  # aten.split's default dimension is 0
    val = fused.meta.get("val")
    if not isinstance(val, torch.Tensor) or dim not in (-1, val.dim() - 1) or fused.op != "call_function":
        return None
    # the fused value is the end of a Conv1D span (or an aten.linear): find its start
    head = fused.args[0].args[1] if fused.target is torch.ops.aten.view.default and fused.args[0].op == \
        "call_function" and fused.args[0].target is torch.ops.aten.addmm.default else fused
    p = _linear(root, head) if isinstance(head, fx.Node) else None
    if p is None or p.start is not fused or len(fused.users) != 1:
        return None
    rows = slice(i * size, (i + 1) * size)
    w, b = (None if src is None else Source(src.param, rows, src.transposed) for src in p.params)
    return _Projection(n, p.x, p.weight[rows], None if p.bias is None else p.bias[rows], [*p.span, split, n], (w, b))


def _output_projection(root: nn.Module, s: fx.Node) -> _Projection | None:
    n = s
    while len(n.users) == 1:
        (n,) = n.users
        p = _linear(root, n) if n.op == "call_function" else None
        if p is not None:
            return p
        if not (n.op == "call_function" and n.target in _SHAPE_OPS):
            return None
    return None


class HeadGroup(nn.Module):
    """One attention head of a split: its rows of Wq, Wk, Wv and biases, its columns of Wo, and the attention code
    (`core`, shared by the split's heads) that runs any number of heads side by side."""

    reads_context = True
    ROLES = ("q_w", "q_b", "k_w", "k_b", "v_w", "v_b", "o_w")

    def __init__(self, core: fx.GraphModule, weights: Mapping[str, torch.Tensor], reads: Sequence[str],
                 head_dim: int) -> None:
        super().__init__()
        self.core = core
        for role in self.ROLES:
            setattr(self, role, nn.Parameter(weights[role].detach().clone()))
        self.reads = list(reads)
        self.channels = head_dim  # what `kept_widths` counts: each head's share of the attention width

    def forward(self, x: torch.Tensor, context: Mapping[str, Any]) -> torch.Tensor:
        return self.core(x, *[getattr(self, r) for r in self.ROLES], *[context[n] for n in self.reads])

    @staticmethod
    def run_fused(groups: Sequence["HeadGroup"], x: torch.Tensor, context: Mapping[str, Any]) -> torch.Tensor:
        head = groups[0]
        weights = [torch.cat([getattr(g, r) for g in groups], dim=1 if r == "o_w" else 0) for r in HeadGroup.ROLES]
        return head.core(x, *weights, *[context[n] for n in head.reads])

    @staticmethod
    def fuse(groups: Sequence["HeadGroup"]) -> "HeadGroup":
        """The live heads as one attention of fewer heads (copies of their weights side by side)."""
        weights = {r: torch.cat([getattr(g, r).detach() for g in groups], dim=1 if r == "o_w" else 0)
                   for r in HeadGroup.ROLES}
        return HeadGroup(groups[0].core, weights, groups[0].reads, groups[0].channels * len(groups))

    @staticmethod
    def check(groups: Sequence["HeadGroup"], name: str) -> None:
        if len({id(g.core) for g in groups}) != 1:
            raise ValueError(f"width split {name!r}: its heads run different attention code")


def head_groups(root: nn.Module, att: Attention, context: set[fx.Node]) -> tuple[list[HeadGroup], torch.Tensor | None]:
    """The heads of `att` as groups, and Wo's bias (added where they are summed). The shared code computes each
    projection as one `linear` on the heads' weights, whatever form the program gave it (a fused, transposed Conv1D)."""
    g = fx.Graph()
    env = {att.x: g.placeholder("x")}
    weights = {role: g.placeholder(role) for role in HeadGroup.ROLES}
    spans = {n for p in att.projections.values() for n in p.span}
    reads = list(dict.fromkeys(i for n in att.core if n not in spans for i in n.all_input_nodes if i in context))
    for i in reads:
        env[i] = g.placeholder(f"context_{i.name}")
    linear = torch.ops.aten.linear.default
    for r in "qkv":
        env[att.projections[r].start] = g.call_function(linear, (env[att.x], weights[f"{r}_w"], weights[f"{r}_b"]))
    out = att.projections["o"]
    for n in att.core:
        if n is att.out:  # Wo without its bias: the bias is added once, after the heads' sum
            env[n] = g.call_function(linear, (env[out.x], weights["o_w"]))
            continue
        if n in spans:
            continue
        for i in n.all_input_nodes:
            if i not in env:
                if i.op != "get_attr":
                    raise AssertionError(f"{n.name} reads {i.name} from outside the attention")
                env[i] = g.node_copy(i)
        env[n] = g.node_copy(n, env.__getitem__)
    g.output(env[att.out])
    core = fx.GraphModule(root, g, class_name="AttentionCore")
    d = att.head_dim
    groups = []
    for h in range(att.heads):
        rows = slice(h * d, (h + 1) * d)
        groups.append(HeadGroup(core, {r: (w[:, rows] if r == "o_w" else w[rows]) for r, w in att.weights.items()},
                                [i.name for i in reads], d))
    return groups, att.o_b
