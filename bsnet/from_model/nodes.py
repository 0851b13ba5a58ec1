"""The node modules of a converted model: segments of the captured program between its cuts, the input node and the
context of a torch.export program (what it computes from its inputs alone), and the helpers that make them."""
from __future__ import annotations

import copy
import re
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from bsnet.from_model.capture import Program
from bsnet.inputs import Inputs


class Start(nn.Module):
    """The input node of a captured program: its code up to the first cut, on the context (which holds the inputs)."""

    def __init__(self, module: nn.Module, reads: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.reads = list(reads)

    def forward(self, context: Mapping[str, Any]) -> torch.Tensor:
        return self.module(*[context[n] for n in self.reads])


class ReadsContext(nn.Module):
    """A node module that reads values of the context (an attention mask, the batch size) beside its input."""

    reads_context = True

    def __init__(self, module: nn.Module, reads: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.reads = list(reads)

    def forward(self, x: torch.Tensor, context: Mapping[str, Any]) -> torch.Tensor:
        return self.module(x, *[context[n] for n in self.reads])


class Context(nn.Module):
    """What a captured program computes from its inputs alone, as a dict by node name (bsnet.supernet)."""

    def __init__(self, program: fx.GraphModule, names: Sequence[str] | None) -> None:
        super().__init__()
        self.program = program
        self.names = None if names is None else list(names)

    def forward(self, inputs: Inputs) -> dict[str, Any]:
        if self.names is None:
            return self.program(inputs)
        return self.program(*[inputs[n] for n in self.names])


def context_module(program: Program, needed: list[str]) -> Context:
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    want = {n for n in program.context if n.name in needed}
    keep, todo = set(), list(want)
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo.extend(n.all_input_nodes)
    for n in program.gm.graph.nodes:
        if n.op == "placeholder" or n in keep:
            env[n] = g.node_copy(n, env.__getitem__)
    g.output({n.name: env[n] for n in program.gm.graph.nodes if n in want})
    return Context(fx.GraphModule(program.gm, g, class_name="Context"), program.names)


def segment(root: nn.Module, nodes: list[fx.Node], start: fx.Node | None, end: fx.Node, *,
             out_of_place: bool = False, context: set[fx.Node] = frozenset()) -> nn.Module:
    """A module computing `end` from the value of `start` by running `nodes` (in program order); values of the
    `context` it reads come as further arguments (`ReadsContext`), and with no `start` they are all it reads
    (`Start`)."""
    if not nodes:
        if start is not end:
            raise AssertionError("an empty segment must pass its input through")
        return nn.Identity()
    if len(nodes) == 1 and nodes[0] is end and end.op == "call_module" and end.args == (start,) \
            and not end.kwargs and not out_of_place:
        return root.get_submodule(end.target)  # a single layer needs no generated code
    g = fx.Graph()
    env = {} if start is None else {start: g.placeholder("x")}
    reads = list(dict.fromkeys(i for n in nodes for i in n.all_input_nodes if i in context))
    for i in reads:
        env[i] = g.placeholder(f"context_{i.name}")
    for n in nodes:
        for i in n.all_input_nodes:
            if i not in env:
                if i.op != "get_attr":
                    raise AssertionError(f"{n.name} reads {i.name} from outside its segment")
                env[i] = g.node_copy(i)
        env[n] = g.node_copy(n, env.__getitem__)
    g.output(env[end])
    module = fx.GraphModule(root, g, class_name="Segment")
    if out_of_place:
        no_inplace(module)
    names = [i.name for i in reads]
    if start is None:
        return Start(module, names)
    return ReadsContext(module, names) if names else module


def no_inplace(module: fx.GraphModule) -> None:
    """Turn in-place activations out of place.

    A join with one live input receives its source's tensor itself, not a fresh sum as in the model, and an
    in-place ReLU there would overwrite a tensor autograd saved. Copies of parameter-free layers replace them;
    in-place ATen operations (`relu_`, captured by torch.export) become their out-of-place forms.
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
        elif n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
            packet = n.target.overloadpacket.__name__
            if packet.endswith("_") and not packet.startswith("_") and hasattr(torch.ops.aten, packet[:-1]):
                n.target = getattr(getattr(torch.ops.aten, packet[:-1]), n.target._overloadname)
    module.recompile()


def node_name(text: str, taken: set[str]) -> str:
    name = re.sub(r"\W", "_", text) or "block"
    unique, k = name, 2
    while unique in taken:
        unique, k = f"{name}_{k}", k + 1
    taken.add(unique)
    return unique
