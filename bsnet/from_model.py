"""from_model: a super network made from a user's own (trained) PyTorch model, traced with torch.fx.

The model's forward is traced once into an fx graph and cut into a chain of bsnet nodes. A *cut* is a point of
the traced program where exactly one tensor is alive: everything after it depends on what came before only
through that tensor, so the program can be split there into two modules joined by one bsnet edge.

With `gate="residual"` every residual addition `out = branch(x) + skip(x)` whose operands both come from the
same cut `x` (and that is itself a cut) becomes a gated block:

    pre ──> branch ──(gated)──> join       join = the engine's sum, then the code up to the next block
     │                           ^
     └──> skip (or a plain edge) ┘

`branch` holds the fx nodes computing the branch from `x`, `skip` the identity or a projection (1x1 conv + BN);
dropping the gate leaves the skip path and the branch is not executed. Everything else (`torch.cat`, attention
matmuls, heads) stays inside fixed nodes, so only single tensors and additions ever cross bsnet edges. Nested
residuals (an addition inside a gated branch) stay inside their branch.

With `gate=["layer1.0", ...]` the named modules (which must keep their input's shape) are traced whole and made
optional: the module's node computes `module(x) - x` and feeds the join through a gated edge, beside a fixed
identity edge, so the join's sum is `module(x)` when kept and `x` when dropped.

The node modules are `torch.fx.GraphModule`s over the model's own submodules and parameters (shared, not
copied): the super network starts from the trained weights, and training it trains the model. Pass
`copy.deepcopy(model)` to keep the original untouched.
"""
from __future__ import annotations

import copy
import inspect
import operator
import os
import re
import traceback
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from bsnet.graph import Graph
from bsnet.supernet import SuperNetwork

_ADDS = {operator.add, operator.iadd, torch.add}


class Increment(nn.Module):
    """`module(x) - x`: what a gated module adds to its input, so that `x + Increment(module)(x) == module(x)`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) - x


class _Tracer(fx.Tracer):
    """A tracer that keeps `leaves` (classes, instances or qualified names) whole and remembers where it failed."""

    def __init__(self, leaves: Sequence[type | nn.Module | str]) -> None:
        super().__init__()
        self.leaf_types = tuple(l for l in leaves if isinstance(l, type))
        self.leaf_ids = {id(l) for l in leaves if isinstance(l, nn.Module)}
        self.leaf_names = {l for l in leaves if isinstance(l, str)}
        self.failed: tuple[str, type] | None = None  # the innermost module whose forward raised

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (super().is_leaf_module(m, module_qualified_name) or isinstance(m, self.leaf_types)
                or id(m) in self.leaf_ids or module_qualified_name in self.leaf_names)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:
                try:
                    self.failed = (self.path_of_module(m), type(m))
                except NameError:  # a module built inside forward: no qualified name
                    self.failed = ("<unregistered>", type(m))
            raise


@dataclass
class _Block:
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


def from_model(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
               gate: str | Sequence[str] = "residual",
               leaf_modules: Sequence[type | nn.Module | str] = ()) -> SuperNetwork:
    """A super network whose gates switch the residual branches (or the named modules) of `model`.

    Args:
        model: the network, with its trained weights; it must take one tensor and return one tensor.
        example_inputs: one batch of inputs (a tensor, or a one-tensor tuple); its shape less the batch
            dimension is the super network's input shape.
        gate: `"residual"` gates every residual branch; a list of qualified module names gates those modules
            (each must return a tensor shaped like its input; dropping it makes it the identity).
        leaf_modules: module classes, instances or qualified names traced as single operations (needed for
            modules with data-dependent control flow, which torch.fx cannot trace through).

    Raises:
        ValueError: the model cannot be traced (the message names the submodule to put in `leaf_modules`), a
            named module is missing or changes its input's shape, or nothing can be gated.
    """
    x = _single_input(example_inputs)
    names = _gate_names(model, gate)
    was_training = model.training
    model.eval()  # trace and measure in inference mode: no running statistics change, no dropout
    try:
        if names:
            _check_shapes(model, x, names)
        gm = _trace(model, x, [*leaf_modules, *names])
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
        order = [n for n in gm.graph.nodes if n.op != "get_attr"]
        out = order[-1].args[0]
        if not isinstance(out, fx.Node) or not _is_tensor(out):
            kind = "a dict" if isinstance(out, dict) else "a tuple" if isinstance(out, (tuple, list)) else "no tensor"
            raise ValueError(f"from_model needs a model that returns one tensor; {type(model).__qualname__} "
                             f"returns {kind}")
        cuts = _cuts(order)
        blocks = _gated_modules(order, cuts, names) if names else _residual_blocks(order, cuts)
        if not blocks:
            raise ValueError(f"found no residual branch to gate in {type(model).__qualname__} (an addition whose "
                             f"operands both come from one tensor); name modules to gate with gate=[...]")
        if not names:
            _name_branches(model, blocks)
        net = _build(model, order, blocks, tuple(x.shape[1:]))
    finally:
        model.train(was_training)
    net.config = {"from_model": type(model).__qualname__, "gate": list(names) if names else "residual"}
    net.train(was_training)
    return net


# ---- arguments --------------------------------------------------------------------------------------
def _single_input(example_inputs) -> torch.Tensor:
    if isinstance(example_inputs, (tuple, list)):
        if len(example_inputs) != 1:
            raise ValueError(f"from_model takes models with one tensor input; got {len(example_inputs)} inputs")
        example_inputs = example_inputs[0]
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 1:
        raise ValueError("example_inputs must be a batch of inputs: a tensor with a batch dimension")
    return example_inputs


def _gate_names(model: nn.Module, gate) -> list[str]:
    if isinstance(gate, str):
        if gate != "residual":
            raise ValueError(f"gate must be 'residual' or a list of module names, not {gate!r} "
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
def _check_shapes(model: nn.Module, x: torch.Tensor, names: list[str]) -> None:
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


# ---- tracing ----------------------------------------------------------------------------------------
def _trace(model: nn.Module, x: torch.Tensor, leaves: Sequence) -> fx.GraphModule:
    tracer = _Tracer(leaves)
    concrete = _default_arguments(model)
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as e:
        raise ValueError(_trace_error(model, tracer, e)) from e
    _drop_specialised_arguments(graph, model)
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def _default_arguments(model: nn.Module) -> dict:
    """forward's arguments after the first, fixed to their defaults (the super network passes one tensor)."""
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    concrete = {}
    for p in params[1:]:
        if p.default is p.empty:
            raise ValueError(f"from_model calls {type(model).__qualname__}.forward with one tensor, but its "
                             f"argument {p.name!r} has no default")
        concrete[p.name] = p.default
    return concrete


def _drop_specialised_arguments(graph: fx.Graph, model: nn.Module) -> None:
    """Remove the placeholders of arguments fixed to their defaults, and the assertions fx adds about them."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    fixed = set(placeholders[1:])
    for n in graph.nodes:
        if n.op not in ("placeholder", "output") and n.all_input_nodes and set(n.all_input_nodes) <= fixed:
            fixed.add(n)
    for n in fixed:
        if any(u not in fixed for u in n.users):
            raise ValueError(f"from_model calls {type(model).__qualname__}.forward with one tensor; it uses its "
                             f"argument {n.name!r} as a tensor")
    for n in reversed(list(graph.nodes)):
        if n in fixed:
            graph.erase_node(n)


def _trace_error(model: nn.Module, tracer: _Tracer, e: Exception) -> str:
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(torch_dir) and f.filename != __file__]
    where = f" at `{frames[-1].line}` ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    reason = f"{type(e).__name__}: {e}".strip()
    if tracer.failed is None or tracer.failed[0] == "":
        return (f"cannot trace {type(model).__qualname__} with torch.fx: its own forward failed{where}: {reason}. "
                f"Move that code into a submodule and pass the submodule in leaf_modules, so it is kept whole")
    path, cls = tracer.failed
    return (f"cannot trace {type(model).__qualname__} with torch.fx: submodule {path!r} ({cls.__qualname__}) "
            f"failed{where}: {reason}. Pass it in leaf_modules (leaf_modules=[{cls.__qualname__}], or the module "
            f"instance, or its name {path!r}) so that it is kept whole as one operation")


# ---- cutting the program ----------------------------------------------------------------------------
def _is_tensor(n: fx.Node) -> bool:
    t = n.meta.get("type")
    return isinstance(t, type) and issubclass(t, torch.Tensor)


def _cuts(order: list[fx.Node]) -> list[fx.Node | None]:
    """For each boundary b (between order[b] and order[b+1]): the one tensor alive across it, or None.

    Parameters (get_attr nodes) are not in `order`: every node module reads them itself.
    """
    pos = {n: i for i, n in enumerate(order)}
    last_use = {n: max((pos[u] for u in n.users if u in pos), default=pos[n]) for n in order}
    ends: dict[int, list[fx.Node]] = {}
    for n, e in last_use.items():
        ends.setdefault(e, []).append(n)
    alive: set[fx.Node] = set()
    cuts: list[fx.Node | None] = []
    for b in range(len(order) - 1):
        if last_use[order[b]] > b:
            alive.add(order[b])
        alive.difference_update(ends.get(b, ()))
        only = next(iter(alive)) if len(alive) == 1 else None
        cuts.append(only if only is not None and _is_tensor(only) else None)
    return cuts


def _is_residual_add(n: fx.Node) -> bool:
    if n.kwargs or len(n.args) != 2 or not all(isinstance(a, fx.Node) for a in n.args):
        return False
    if not ((n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target == "add")):
        return False
    if not all(_is_tensor(a) and a.op != "get_attr" for a in (n, *n.args)):
        return False
    shapes = [a.meta.get("tensor_meta") for a in (n, *n.args)]
    return all(s is not None for s in shapes) and len({tuple(s.shape) for s in shapes}) == 1  # no broadcasting


def _residual_blocks(order: list[fx.Node], cuts: list[fx.Node | None]) -> list[_Block]:
    pos = {n: i for i, n in enumerate(order)}
    blocks = []
    for p, a in enumerate(order):
        if p == 0 or p == len(order) - 1 or cuts[p] is not a or not _is_residual_add(a):
            continue
        start = max((b for b in range(p) if cuts[b] is not None), default=None)
        block = None if start is None else _split_block(order, pos, cuts[start], a, start, p)
        if block is not None:
            blocks.append(block)
    return blocks


def _split_block(order, pos, x: fx.Node, a: fx.Node, start: int, end: int) -> _Block | None:
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
    return _Block(x, a, start, end, sorted(branch[1], key=pos.__getitem__), branch[0], skip_nodes, skip[0])


def _is_identity(n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(n.graph.owning_module.get_submodule(n.target), nn.Identity)


def _gated_modules(order: list[fx.Node], cuts: list[fx.Node | None], names: list[str]) -> list[_Block]:
    blocks = []
    for name in names:
        calls = [(p, n) for p, n in enumerate(order) if n.op == "call_module" and n.target == name]
        if len(calls) != 1:
            raise ValueError(f"cannot gate module {name!r}: the traced program calls it {len(calls)} times")
        p, m = calls[0]
        x = m.args[0] if len(m.args) == 1 and not m.kwargs else None
        if x is None or cuts[p - 1] is not x or cuts[p] is not m:
            raise ValueError(f"cannot gate module {name!r}: other values flow around it (its input or its output "
                             f"is also used elsewhere, e.g. by a residual connection); gate the block around it")
        blocks.append(_Block(x, m, p - 1, p, [m], m, module=name, name=name))
    return sorted(blocks, key=lambda b: b.end)


def _module_path(n: fx.Node) -> str:
    if n.op == "call_module":
        return n.target
    stack = n.meta.get("nn_module_stack")
    return next(reversed(stack.values()))[0] if stack else ""


def _name_branches(model: nn.Module, blocks: list[_Block]) -> None:
    """Name each gate after the deepest module holding all of its branch (`layer1.0`, `blocks.3.attn`)."""
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
        counts[".".join(common)] = counts.get(".".join(common), 0) + 1
    used: set[str] = set()
    for b, (common, paths) in zip(blocks, prefixes):
        name = ".".join(common)
        if counts[name] > 1:  # several branches in one module (a transformer block): its largest child
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


# ---- building the super network ---------------------------------------------------------------------
def _segment(model: nn.Module, nodes: list[fx.Node], start: fx.Node, end: fx.Node, *,
             out_of_place: bool = False) -> nn.Module:
    """A module computing `end` from the value of `start` by running `nodes` (in program order)."""
    if not nodes:
        if start is not end:
            raise AssertionError("an empty segment must pass its input through")
        return nn.Identity()
    if len(nodes) == 1 and nodes[0] is end and end.op == "call_module" and end.args == (start,) \
            and not end.kwargs and not out_of_place:
        return model.get_submodule(end.target)  # a single layer needs no generated code
    g = fx.Graph()
    env = {start: g.placeholder("x")}
    for n in nodes:
        for i in n.all_input_nodes:
            if i not in env:
                if i.op != "get_attr":
                    raise AssertionError(f"{n.name} reads {i.name} from outside its segment")
                env[i] = g.node_copy(i)
        env[n] = g.node_copy(n, env.__getitem__)
    g.output(env[end])
    module = fx.GraphModule(model, g, class_name="Segment")
    if out_of_place:
        _no_inplace(module)
    return module


def _no_inplace(module: fx.GraphModule) -> None:
    """Turn in-place activations out of place.

    A join with one live input receives its source's tensor itself, not a fresh sum as in the model, and an
    in-place ReLU there would overwrite a tensor autograd saved. Copies of parameter-free layers replace them.
    """
    for n in module.graph.nodes:
        if n.op == "call_module":
            layer = module.get_submodule(n.target)
            if getattr(layer, "inplace", False) is True and not any(True for _ in layer.parameters()) \
                    and not any(True for _ in layer.buffers()):
                layer = copy.deepcopy(layer)
                layer.inplace = False
                module.add_submodule(n.target, layer)
        elif n.op == "call_function" and n.kwargs.get("inplace") is True:
            n.kwargs = {**n.kwargs, "inplace": False}
    module.recompile()


def _node_name(text: str, taken: set[str]) -> str:
    name = re.sub(r"\W", "_", text) or "block"
    unique, k = name, 2
    while unique in taken:
        unique, k = f"{name}_{k}", k + 1
    taken.add(unique)
    return unique


def _build(model: nn.Module, order: list[fx.Node], blocks: list[_Block], input_shape: tuple[int, ...]) -> SuperNetwork:
    taken: set[str] = set()
    g = Graph(input="input", output="")
    modules: dict[str, nn.Module] = {}
    prev = _node_name("input", taken)
    g.add_node(prev)
    modules[prev] = _segment(model, order[1:blocks[0].start + 1], order[0], blocks[0].x)
    for i, b in enumerate(blocks):
        base = _node_name(b.name, taken)
        g.add_node(base)
        if b.module is not None:
            modules[base] = Increment(model.get_submodule(b.module))
        else:
            modules[base] = _segment(model, b.branch, b.x, b.branch_out)
        g.add_edge(prev, base)
        skip = prev
        if b.skip_out is not None:
            skip = _node_name(f"{b.name}_skip", taken)
            g.add_node(skip)
            modules[skip] = _segment(model, b.skip, b.x, b.skip_out)
            g.add_edge(prev, skip)
        join = _node_name(f"{b.name}_add", taken)
        g.add_node(join)
        g.add_edge(base, join, gate=b.name)
        g.add_edge(skip, join)
        last = i + 1 == len(blocks)
        stop = len(order) - 1 if last else blocks[i + 1].start + 1
        end = order[-1].args[0] if last else blocks[i + 1].x
        modules[join] = _segment(model, order[b.end + 1:stop], b.join, end, out_of_place=True)
        prev = join
    g.output = prev
    return SuperNetwork(g, modules, input_shape, name=None, task="classification")
