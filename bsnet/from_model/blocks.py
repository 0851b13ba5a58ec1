"""Finding the gated blocks of a traced program: its cuts, its residual additions and their branches, or the
modules named in `gate=[...]`; and naming each gate after the modules it switches."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.fx as fx
from torch import nn

MODE_LAYER = "bsnet_mode_"  # a layer bsnet.from_model.capture put in place of a captured operation
_ADDS = {operator.add, operator.iadd, torch.add, torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}


@dataclass
class Block:
    """One gated part of the traced program: from the cut `x` to `join`, the node whose value the join starts from."""

    x: fx.Node
    join: fx.Node
    start: int  # boundary index of x: the block's nodes are order[start + 1 : end]
    end: int  # position of `join` in the order
    branch: list[fx.Node] = field(default_factory=list)
    branch_out: fx.Node | None = None
    skip: list[fx.Node] = field(default_factory=list)
    skip_out: fx.Node | None = None  # None: the skip is the identity
    module: str | None = None  # gated module mode: the module's qualified name
    name: str = ""


# ---- the gate argument ------------------------------------------------------------------------------
def gate_names(model: nn.Module, gate: str | Sequence[str]) -> list[str]:
    """The modules `gate` names, checked; [] for `"residual"` and `"width"`."""
    if isinstance(gate, str):
        if gate not in ("residual", "width"):
            raise ValueError(f"gate must be 'residual', 'width' or a list of module names, not {gate!r} "
                             f"(to gate one module, pass gate=[{gate!r}])")
        return []
    names = list(gate)
    if not names:
        raise ValueError("gate=[] names no module to gate")
    modules = dict(model.named_modules())
    for n in names:
        if not isinstance(n, str) or not n or n not in modules:
            raise ValueError(f"{type(model).__qualname__} has no submodule named {n!r}")
        inside = [o for o in names if o != n and n.startswith(o + ".")]
        if inside:
            raise ValueError(f"gated module {n!r} lies inside gated module {inside[0]!r}")
    if len(set(names)) != len(names):
        raise ValueError("gate names a module twice")
    return names


@torch.no_grad()
def check_shapes(model: nn.Module, x: torch.Tensor, names: list[str]) -> None:
    """Run the model once and check that every named module maps one tensor to a tensor of the same shape."""
    seen: dict[str, list[str]] = {n: [] for n in names}

    def hook(name):
        def check(module, args, kwargs, output):
            if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
                seen[name].append("it is called with other arguments than one tensor")
            elif not isinstance(output, torch.Tensor):
                seen[name].append(f"it returns {type(output).__name__}, not a tensor")
            elif output.shape != args[0].shape:
                seen[name].append(f"it changes the shape {tuple(args[0].shape)} -> {tuple(output.shape)}")
            else:
                seen[name].append("")
        return check

    handles = [model.get_submodule(n).register_forward_hook(hook(n), with_kwargs=True) for n in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    for n, calls in seen.items():
        problems = [c for c in calls if c]
        if not calls:
            raise ValueError(f"cannot gate module {n!r}: the model's forward does not call it")
        if len(calls) > 1:
            raise ValueError(f"cannot gate module {n!r}: the model calls it {len(calls)} times")
        if problems:
            raise ValueError(f"cannot gate module {n!r}: {problems[0]}; a gated module must keep its input's "
                             f"shape, so that dropping it (the identity) fits")


def parameter_of(root: nn.Module, n: object) -> nn.Parameter | None:
    """The parameter a `get_attr` node of `root`'s program reads, or None (a buffer, a constant, not such a node)."""
    if not isinstance(n, fx.Node) or n.op != "get_attr":
        return None
    obj = root
    for part in n.target.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, nn.Parameter) else None


# ---- cutting the program ----------------------------------------------------------------------------
def is_tensor(n: fx.Node) -> bool:
    t = n.meta.get("type")  # torch.fx's record; torch.export's is the value itself
    return (isinstance(t, type) and issubclass(t, torch.Tensor)) or isinstance(n.meta.get("val"), torch.Tensor)


def _shape(n: fx.Node) -> tuple | None:
    """A node's shape, symbolic sizes (torch.export's batch) as text."""
    value = n.meta.get("val")
    if isinstance(value, torch.Tensor):
        return tuple(str(s) for s in value.shape)
    meta = n.meta.get("tensor_meta")
    return None if meta is None else tuple(str(s) for s in meta.shape)


def cuts(order: list[fx.Node]) -> list[fx.Node | None]:
    """For each boundary b (between order[b] and order[b+1]): the one tensor alive across it, or None.

    Parameters (get_attr nodes) are not in `order`: every node module reads them itself.
    """
    pos = {n: i for i, n in enumerate(order)}
    last_use = {n: max((pos[u] for u in n.users if u in pos), default=pos[n]) for n in order}
    ends: dict[int, list[fx.Node]] = {}
    for n, e in last_use.items():
        ends.setdefault(e, []).append(n)
    alive: set[fx.Node] = set()
    found: list[fx.Node | None] = []
    for b in range(len(order) - 1):
        if last_use[order[b]] > b:
            alive.add(order[b])
        alive.difference_update(ends.get(b, ()))
        only = next(iter(alive)) if len(alive) == 1 else None
        found.append(only if only is not None and is_tensor(only) else None)
    return found


def _is_residual_add(n: fx.Node) -> bool:
    if n.kwargs or len(n.args) != 2 or not all(isinstance(a, fx.Node) for a in n.args):
        return False
    if not ((n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target == "add")):
        return False
    if not all(is_tensor(a) and a.op != "get_attr" for a in (n, *n.args)):
        return False
    shapes = [_shape(a) for a in (n, *n.args)]
    return all(s is not None for s in shapes) and len(set(shapes)) == 1  # no broadcasting


def residual_blocks(order: list[fx.Node], cut: list[fx.Node | None]) -> list[Block]:
    """Every residual addition that is a cut and whose operands both come from the cut before it."""
    pos = {n: i for i, n in enumerate(order)}
    blocks = []
    for p, a in enumerate(order):
        if p == 0 or p == len(order) - 1 or cut[p] is not a or not _is_residual_add(a):
            continue
        start = max((b for b in range(p) if cut[b] is not None), default=None)
        block = None if start is None else _split_block(order, pos, cut[start], a, start, p)
        if block is not None:
            blocks.append(block)
    return blocks


def _split_block(order: list[fx.Node], pos: dict[fx.Node, int], x: fx.Node, a: fx.Node, start: int,
                 end: int) -> Block | None:
    """The branch and skip of `a = u + v` inside the cuts `x` (boundary `start`) and `a`, or None if it is none."""
    inner = order[start + 1:end]
    inside = set(inner)

    def ancestors(v: fx.Node) -> set[fx.Node]:
        found, todo = set(), [v] if v in inside else []
        while todo:
            n = todo.pop()
            if n not in found:
                found.add(n)
                todo.extend(i for i in n.all_input_nodes if i in inside)
        return found

    u, v = a.args
    if any(o is not x and o not in inside for o in (u, v)):
        return None
    side_u, side_v = ancestors(u), ancestors(v)
    if side_u & side_v or not (side_u or side_v):
        return None
    if any(side and not any(x in n.all_input_nodes for n in side) for side in (side_u, side_v)):
        return None  # a side that never reads x adds something else (token-type embeddings), not a branch of x
    # Nodes on neither side compute nothing the addition reads, but may act in place: keep them with their side.
    for n in inner:
        if n in side_u or n in side_v:
            continue
        ins = set(n.all_input_nodes) & inside
        if ins and ins <= side_u:
            side_u.add(n)
        elif ins and ins <= side_v:
            side_v.add(n)
        else:
            return None
    if u is x:
        branch, skip = (v, side_v), (None, set())
    elif v is x:
        branch, skip = (u, side_u), (None, set())
    elif len(side_v) <= len(side_u):  # the shorter side is the skip (a projection); a tie: `branch(x) + skip(x)`
        branch, skip = (u, side_u), (v, side_v)
    else:
        branch, skip = (v, side_v), (u, side_u)
    skip_nodes = sorted(skip[1], key=pos.__getitem__)
    if skip_nodes and all(_is_identity(n) for n in skip_nodes):
        skip, skip_nodes = (None, set()), []  # an nn.Identity skip is a plain edge
    return Block(x, a, start, end, sorted(branch[1], key=pos.__getitem__), branch[0], skip_nodes, skip[0])


def _is_identity(n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(n.graph.owning_module.get_submodule(n.target), nn.Identity)


def gated_modules(order: list[fx.Node], cut: list[fx.Node | None], names: list[str]) -> list[Block]:
    """One block per named module, which must be a call between two cuts."""
    blocks = []
    for name in names:
        calls = [(p, n) for p, n in enumerate(order) if n.op == "call_module" and n.target == name]
        if len(calls) != 1:
            raise ValueError(f"cannot gate module {name!r}: the traced program calls it {len(calls)} times")
        p, m = calls[0]
        x = m.args[0] if len(m.args) == 1 and not m.kwargs else None
        if x is None or cut[p - 1] is not x or cut[p] is not m:
            raise ValueError(f"cannot gate module {name!r}: other values flow around it (its input or its output "
                             f"is also used elsewhere, e.g. by a residual connection); gate the block around it")
        blocks.append(Block(x, m, p - 1, p, [m], m, module=name, name=name))
    return sorted(blocks, key=lambda b: b.end)


# ---- naming the gates -------------------------------------------------------------------------------
def _module_path(n: fx.Node) -> str:
    if n.op == "call_module" and not n.target.startswith(MODE_LAYER):
        return n.target
    stack = n.meta.get("nn_module_stack")
    return next(reversed(stack.values()))[0] if stack else ""


def name_branches(model: nn.Module, blocks: list[Block]) -> None:
    """Name each gate after the deepest module holding all of its branch (`layer1.0`, `blocks.3.attn`), or that
    module's largest child the branch runs where the module holds other branches too (a BERT layer's MLP:
    `encoder.layer.0.output`, beside `encoder.layer.0.attention`)."""
    prefixes = []
    for b in blocks:
        paths = [_module_path(n).split(".") if _module_path(n) else [] for n in b.branch]
        common = paths[0]
        for p in paths[1:]:
            k = 0
            while k < min(len(common), len(p)) and common[k] == p[k]:
                k += 1
            common = common[:k]
        prefixes.append((common, paths))
    counts: dict[str, int] = {}
    for common, _ in prefixes:
        for k in range(len(common) + 1):  # a module counts the branches inside it, at any depth
            counts[".".join(common[:k])] = counts.get(".".join(common[:k]), 0) + 1
    used: set[str] = set()
    for b, (common, paths) in zip(blocks, prefixes):
        name = ".".join(common)
        if counts[name] > 1:  # several branches in one module (a transformer layer): its largest child
            children = {p[len(common)] for p in paths if len(p) > len(common)}
            if children:
                best = max(sorted(children), key=lambda c: sum(
                    q.numel() for q in model.get_submodule(".".join([*common, c])).parameters()))
                name = ".".join([*common, best])
        name = name or "residual"
        unique, k = name, 2
        while unique in used:
            unique, k = f"{name}#{k}", k + 1
        used.add(unique)
        b.name = unique
