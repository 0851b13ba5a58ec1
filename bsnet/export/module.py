"""export_module: a found architecture as a plain network, generated code with no gates and no dead code.

The plain network is a `torch.fx.GraphModule` built directly from the live sub-graph: one submodule per live node
(named after the node), and a generated `forward` that calls them in topological order and adds their outputs
where nodes meet. `print(module.code)` shows it. Its only lines that compute nothing are `release(...)` calls,
which free the values that fed summed branches where those branches meet, as eager code would.
"""
from __future__ import annotations

import copy
import keyword
import operator
import re

import torch
import torch.fx
from torch import nn

from bsnet.architecture import Architecture, SupernetSource
from bsnet.supernet import SuperNetwork
from bsnet.width import fuse_groups


RESERVED = ("forward", "training", "code", "context")  # "context": a captured program's, see export_module


def attribute_name(node: str) -> str:
    """A node name as a Python identifier (`C-2_1-3_1` -> `C_2_1_3_1`)."""
    name = re.sub(r"\W", "_", node)
    if not name or name[0].isdigit() or keyword.iskeyword(name) or name in RESERVED:
        name = f"n_{name}"
    return name


def build_network(architecture: Architecture, supernet: SupernetSource = None) -> torch.fx.GraphModule:
    """The plain network of `architecture` with fresh weights, its super network rebuilt by
    `Architecture.supernet_network(supernet)` (from the registry, or from `supernet` for a custom one).

    Raises:
        ValueError: disconnected architecture, or a custom super network without its factory.
    """
    return export_module(architecture.supernet_network(supernet), architecture, copy_weights=False)


def export_module(net: SuperNetwork, architecture: Architecture | torch.Tensor, *,
                  copy_weights: bool = True) -> torch.fx.GraphModule:
    """The plain network of `architecture` (an `Architecture` or a mask), carrying `net`'s current weights.

    Raises:
        ValueError: the architecture is disconnected (no path from the input to the output).
    """
    mask = architecture if isinstance(architecture, torch.Tensor) else architecture.mask(net.gate_names)
    mask = mask.detach().cpu().float()
    graph = net.graph
    if not bool(graph.connected(mask)):
        raise ValueError("the architecture is disconnected (its output cannot be reached from its input): "
                         "there is no network to build")
    live = dict(zip(graph.order, graph.live(mask).tolist()))
    kept = (mask > 0.5).tolist()
    root = nn.Module()
    fx = torch.fx.Graph()
    copied: dict[int, object] = {}  # one deep-copy memo for all nodes: a layer two nodes share stays shared
    x = fx.placeholder("x")
    context = None  # what a captured program computes from its inputs alone (bsnet.supernet)
    if net.context is not None:
        root.add_module("context", copy.deepcopy(net.context, copied) if copy_weights else net.context)
        context = fx.call_module("context", (x,))
    values: dict[str, torch.fx.Node] = {}
    fed: dict[str, torch.fx.Node] = {}  # the value each node's module was called on
    for n in graph.order:
        if not live[n]:
            continue
        split = graph.width_split(n)
        if split is not None:  # a width split's live groups become one plain narrower layer pair, named after it
            if split.name not in values:
                attr = _add(root, split.name, fuse_groups([net.blocks[m] for m in split.groups if live[m]]))
                fed[split.name] = values[split.source]
                fused = root.get_submodule(attr)
                values[split.name] = fx.call_module(attr, (values[split.source], context)) \
                    if getattr(fused, "reads_context", False) else _call(fx, attr, fused, values[split.source])
            continue
        attr = _add(root, n, copy.deepcopy(net.blocks[n], copied) if copy_weights else net.blocks[n])
        meets: list[str] = []  # the live sources summed into this node, where two or more meet
        if n == graph.input:
            h = x
        else:
            sources = [(_value_of(graph, e.src), live[e.src] and (e.gate is None or kept[e.gate]))
                       for e in graph.in_edges(n)]
            sources = list(dict.fromkeys(sources))  # a split's groups: their sum, once
            if graph.node(n).combine == "concat":
                parts = [values[s] if on else _zeros_like_batch(fx, x, net.profile[s].out_shape) for s, on in sources]
                h = fx.call_function(torch.cat, (parts, 1))
            else:
                ins = [values[s] for s, on in sources if on]
                meets = [s for s, on in sources if on] if len(ins) > 1 else []
                h = ins[0]
                for other in ins[1:]:
                    h = fx.call_function(operator.add, (h, other))
        fed[n] = h
        module = root.get_submodule(attr)
        if context is not None and n == graph.input:
            values[n] = fx.call_module(attr, (context,))
        elif getattr(module, "reads_context", False):
            values[n] = fx.call_module(attr, (h, context))
        else:
            values[n] = _call(fx, attr, module, h)
        # Where branches are summed, free what fed them only now, as an eager block's forward does when it returns:
        # freeing it right after its last use changes the order of frees, and glibc then hands more memory back to
        # the OS between calls and faults it in again (BENCHMARKS.md, export).
        feeding = list(dict.fromkeys(fed[s] for s in meets if fed[s] is not x))
        if feeding:
            fx.call_function(release, tuple(feeding))
    fx.output(values[graph.output])
    module = torch.fx.GraphModule(root, fx, class_name="FoundNetwork")
    module.train(net.training)
    return module


def _add(root: nn.Module, node: str, module: nn.Module) -> str:
    attr = attribute_name(node)
    if hasattr(root, attr):
        raise ValueError(f"two nodes map to the attribute name {attr!r}")
    root.add_module(attr, module)
    return attr


def _value_of(graph, node: str) -> str:
    """The value a node's output edge carries: its own, or for a width split's group the sum of the split's."""
    split = graph.width_split(node)
    return node if split is None else split.name


def release(*values: torch.Tensor) -> None:
    """Does nothing: a last use that keeps `values` alive up to this line of the generated forward."""


def _call(fx: torch.fx.Graph, target: str, module: nn.Module, h: torch.fx.Node) -> torch.fx.Node:
    """Call `module` on `h` in the generated code, inlining what costs Python calls and computes nothing
    special: identities pass values through, ReLUs become `torch.relu`, Sequential containers call their
    layers one by one. Parameter names (and so state dicts) are unchanged."""
    if type(module) is nn.Identity:
        return h
    if type(module) is nn.ReLU and not module.inplace:
        return fx.call_function(torch.relu, (h,))
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        for name, child in module.named_children():
            h = _call(fx, f"{target}.{name}", child, h)
        return h
    return fx.call_module(target, (h,))


def _zeros_like_batch(fx: torch.fx.Graph, x: torch.fx.Node, shape: tuple[int, ...]) -> torch.fx.Node:
    batch = fx.call_method("size", (x, 0))
    return fx.call_method("new_zeros", (x, (batch, *shape)))
