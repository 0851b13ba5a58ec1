"""Building the super network: the traced program cut into node modules around its gated blocks; `from_model`, the
whole conversion; `as_supernet`, what every command does with the object a user's factory returns."""
from __future__ import annotations

import copy
import re
from typing import Sequence

import torch
import torch.fx as fx
from torch import nn

from bsnet.from_model.blocks import Block, check_shapes, cuts, gate_names, gated_modules, is_tensor, name_branches, \
    residual_blocks
from bsnet.from_model.trace import Leaf, capture, leaves_record, resolve_leaves, single_input
from bsnet.graph import Graph
from bsnet.supernet import SuperNetwork


class Increment(nn.Module):
    """`module(x) - x`: what a gated module adds to its input, so that `x + Increment(module)(x) == module(x)`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) - x


def from_model(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
               gate: str | Sequence[str] = "residual", leaf_modules: Sequence[Leaf] = ()) -> SuperNetwork:
    """A super network whose gates switch the residual branches (or the named modules) of `model`.

    Its `config` records how to convert the model again: `from_model` (the class name), `input_shape`, `gate` and
    `leaf_modules` (as `module.QualName` class names and submodule paths; nothing that needs an import).

    Args:
        model: the network, with its trained weights; it must take one tensor and return one tensor.
        example_inputs: one batch of inputs (a tensor, or a one-tensor tuple); its shape less the batch
            dimension is the super network's input shape.
        gate: `"residual"` gates every residual branch; a list of qualified module names gates those modules
            (each must return a tensor shaped like its input; dropping it makes it the identity).
        leaf_modules: modules traced as single operations (needed for modules with data-dependent control flow,
            which torch.fx cannot trace through): classes, instances, submodule paths (`"body.1"`) or class names
            (`"Flip"` or `"pkg.layers.Flip"`, matched against the classes of the model's submodules).

    Raises:
        ValueError: the model cannot be traced (the message names the submodule to put in `leaf_modules`), a
            leaf or a gated module is not in the model, a gated module changes its input's shape, or nothing can
            be gated.
    """
    x = single_input(example_inputs)
    names = gate_names(model, gate)
    leaves = resolve_leaves(model, leaf_modules)
    was_training = model.training
    model.eval()  # trace and measure in inference mode: no running statistics change, no dropout
    try:
        if names:
            check_shapes(model, x, names)
        gm = capture(model, x, [*leaves, *names])
        order = [n for n in gm.graph.nodes if n.op != "get_attr"]
        out = order[-1].args[0]
        if not isinstance(out, fx.Node) or not is_tensor(out):
            kind = "a dict" if isinstance(out, dict) else "a tuple" if isinstance(out, (tuple, list)) else "no tensor"
            raise ValueError(f"from_model needs a model that returns one tensor; {type(model).__qualname__} "
                             f"returns {kind}")
        cut = cuts(order)
        blocks = gated_modules(order, cut, names) if names else residual_blocks(order, cut)
        if not blocks:
            raise ValueError(f"found no residual branch to gate in {type(model).__qualname__} (an addition whose "
                             f"operands both come from one tensor); name modules to gate with gate=[...]")
        if not names:
            name_branches(model, blocks)
        config = {"from_model": type(model).__qualname__, "input_shape": list(x.shape[1:]),
                  "gate": list(names) if names else "residual", "leaf_modules": leaves_record(model, leaves)}
        net = _build(model, order, blocks, tuple(x.shape[1:]), config)
    finally:
        model.train(was_training)
    net.train(was_training)
    return net


def as_supernet(obj: object, input_shape: Sequence[int] | None = None, *, gate: str | Sequence[str] = "residual",
                leaf_modules: Sequence[Leaf] = ()) -> SuperNetwork:
    """A super network from what a user hands bsnet: a SuperNetwork as it is, a plain model through `from_model`.

    Args:
        obj: a bsnet SuperNetwork, or a torch model (whose weights the super network shares, not copies).
        input_shape: one example's shape, e.g. `(3, 32, 32)`: needed for a model, checked for a SuperNetwork.
        gate: as in `from_model`; not used for a SuperNetwork.
        leaf_modules: as in `from_model` (names are matched against the model's submodules); not used for a
            SuperNetwork.

    Raises:
        ValueError: `obj` is not a torch module; a model without `input_shape`; a SuperNetwork of another input
            shape; or what `from_model` raises.
    """
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    if isinstance(obj, SuperNetwork):
        if shape is not None and shape != obj.input_shape:
            raise ValueError(f"the super network takes inputs shaped {obj.input_shape}, not {shape}")
        return obj
    if not isinstance(obj, nn.Module):
        kind = f"the callable {getattr(obj, '__qualname__', '')}" if callable(obj) else f"a {type(obj).__qualname__}"
        raise ValueError(f"expected a torch model or a bsnet SuperNetwork, got {kind}")
    if shape is None:
        raise ValueError(f"making a super network of {type(obj).__qualname__} needs its input shape")
    device = next((p.device for p in obj.parameters()), None)
    return from_model(obj, torch.zeros(1, *shape, device=device), gate=gate, leaf_modules=leaf_modules)


# ---- node modules -----------------------------------------------------------------------------------
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


def _build(model: nn.Module, order: list[fx.Node], blocks: list[Block], input_shape: tuple[int, ...],
           config: dict) -> SuperNetwork:
    """The chain input -> (branch, skip) -> join -> ... : one gated edge per block, into the join's sum."""
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
    return SuperNetwork(g, modules, input_shape, name=None, config=config)
