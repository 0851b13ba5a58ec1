"""Attention heads as gated groups: in a branch of a torch.export program that computes
`linear(x, Wq) -> heads -> scaled_dot_product_attention <- heads <- linear(x, Wk), linear(x, Wv)`, then
`linear(attention, Wo)`, each head is a group of the split `<branch>.heads` holding its rows of Wq, Wk, Wv (and their
biases) and its columns of Wo, gated `<branch>.h<j>`. The attention code itself is kept once (`core`) and run on the
live heads' weights side by side, as one attention of fewer heads: the program must find its head count from the
weights (Hugging Face's `view(batch, length, -1, head_dim)`), which is checked numerically before any head is split.
Wo's bias, and what follows Wo in the branch, run where the heads' outputs are summed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from bsnet.from_model.blocks import Block, parameter_of

_SHAPE_OPS = {torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten.transpose.int,
              torch.ops.aten.permute.default, torch.ops.aten.contiguous.default, torch.ops.aten.clone.default,
              torch.ops.aten.flatten.using_ints, torch.ops.aten.unflatten.int}


@dataclass
class Attention:
    """Where a branch's attention lies: `pre` and `post` (the branch before its projections and after its output
    projection), `core` (from the projections to the output projection) and the seven weights by role."""

    pre: list[fx.Node]
    core: list[fx.Node]
    post: list[fx.Node]
    x: fx.Node  # what the projections read
    out: fx.Node  # the output projection
    weights: dict[str, fx.Node]  # q_w q_b k_w k_b v_w v_b o_w (get_attr nodes)
    o_b: fx.Node | None
    heads: int
    head_dim: int


def find_attention(root: nn.Module, block: Block, context: set[fx.Node]) -> Attention | None:
    """The attention of `block`'s branch, if it has one whose heads split (see the module's docstring)."""
    branch = block.branch
    sdpa = [n for n in branch if n.op == "call_function"
            and n.target is torch.ops.aten.scaled_dot_product_attention.default]
    if len(sdpa) != 1:
        return None
    s = sdpa[0]
    projections = [_projection_of(a) for a in s.args[:3]]
    if any(p is None for p in projections) or len({p.args[0] for p in projections}) != 1:
        return None
    out = _output_projection(s)
    if out is None:
        return None
    q_val = s.args[0].meta.get("val")
    if not isinstance(q_val, torch.Tensor) or q_val.dim() != 4 or not isinstance(q_val.shape[1], int):
        return None
    heads, head_dim = int(q_val.shape[1]), int(q_val.shape[3])
    weights: dict[str, fx.Node] = {}
    for role, p in zip("qkv", projections):
        if len(p.args) < 3 or p.args[2] is None:
            return None
        weights[f"{role}_w"], weights[f"{role}_b"] = p.args[1], p.args[2]
    weights["o_w"] = out.args[1]
    o_b = out.args[2] if len(out.args) > 2 else None
    if any(parameter_of(root, w) is None or len(w.users) != 1 for w in (*weights.values(), *([o_b] if o_b else []))):
        return None
    if any(parameter_of(root, weights[r]).shape[0] != heads * head_dim for r in ("q_w", "k_w", "v_w")) or heads < 2:
        return None  # grouped-query attention (fewer key/value heads) is not split
    if any(k not in ("scale", "is_causal") for k in s.kwargs):
        return None
    x = projections[0].args[0]
    inside = set(branch)
    before, todo = set(), [x]  # x and what computes it within the branch
    while todo:
        n = todo.pop()
        if n in inside and n not in before:
            before.add(n)
            todo.extend(n.all_input_nodes)
    if x is not block.x and x not in before:
        return None
    end = branch.index(out)
    pre = [n for n in branch if n in before]
    core = [n for n in branch[:end + 1] if n not in before]
    post = branch[end + 1:]
    attrs = lambda n: {i for i in n.all_input_nodes if i.op == "get_attr"}  # noqa: E731
    allowed_pre = {block.x, *pre}
    if any(not set(n.all_input_nodes) <= allowed_pre | attrs(n) or
           not set(n.users) <= {*pre, *(projections if n is x else ())} for n in pre):
        return None
    if x is block.x and not set(p for p in projections) <= set(x.users):
        return None
    allowed_core = {x, *core, *context}
    if any(not set(n.all_input_nodes) <= allowed_core | attrs(n) for n in core):
        return None
    if any(not set(n.all_input_nodes) <= {out, *post} | attrs(n) for n in post):
        return None
    return Attention(pre, core, post, x, out, weights, o_b, heads, head_dim)


def _projection_of(n: fx.Node) -> fx.Node | None:
    while n.op == "call_function" and n.target in _SHAPE_OPS and len(n.users) == 1:
        n = n.args[0]
    ok = n.op == "call_function" and n.target is torch.ops.aten.linear.default and len(n.users) == 1
    return n if ok else None


def _output_projection(s: fx.Node) -> fx.Node | None:
    n = s
    while len(n.users) == 1:
        (n,) = n.users
        if n.op == "call_function" and n.target is torch.ops.aten.linear.default:
            return n
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
    """The heads of `att` as groups, and Wo's bias (added where they are summed)."""
    g = fx.Graph()
    env = {att.x: g.placeholder("x")}
    for role in HeadGroup.ROLES:
        env[att.weights[role]] = g.placeholder(role)
    reads = list(dict.fromkeys(i for n in att.core for i in n.all_input_nodes if i in context))
    for i in reads:
        env[i] = g.placeholder(f"context_{i.name}")
    for n in att.core:
        for i in n.all_input_nodes:
            if i not in env:
                if i.op != "get_attr" or i is att.o_b:
                    if i is att.o_b:
                        continue
                    raise AssertionError(f"{n.name} reads {i.name} from outside the attention")
                env[i] = g.node_copy(i)
        if n is att.out:  # Wo without its bias: the bias is added once, after the heads' sum
            env[n] = g.call_function(torch.ops.aten.linear.default, (env[n.args[0]], env[n.args[1]]))
        else:
            env[n] = g.node_copy(n, env.__getitem__)
    g.output(env[att.out])
    core = fx.GraphModule(root, g, class_name="AttentionCore")
    w = {r: parameter_of(root, att.weights[r]) for r in HeadGroup.ROLES}
    d = att.head_dim
    groups = []
    for h in range(att.heads):
        rows = slice(h * d, (h + 1) * d)
        groups.append(HeadGroup(core, {r: (w[r][:, rows] if r == "o_w" else w[r][rows]) for r in HeadGroup.ROLES},
                                [i.name for i in reads], d))
    bias = None if att.o_b is None else parameter_of(root, att.o_b)
    return groups, bias
