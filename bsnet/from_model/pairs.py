"""Width in a converted model: in each gated branch, the first layer pair whose hidden channels only its second layer
reads (a basic block's conv-BN-ReLU-conv, a bottleneck's first conv-BN-ReLU-conv, an inverted residual's expansion
through its depthwise convolution, an MLP's Linear-act-Linear) is split into `width_groups` channel groups, each a
gated branch of its own (bsnet.width).

The branch is cut around the pair: what comes before its first layer (a LayerNorm, say) is one node, the groups are
fed by it, and their sum (plus the second layer's bias) goes on through what follows the second layer. The pair is
found from the program's data flow, never from names: layer modules in a torch.fx program, `aten.linear` and
`aten.conv2d` on the model's parameters in a torch.export one. The groups hold copies of slices of the model's weights
(a layer cannot share half of a parameter).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bsnet.from_model.blocks import Block, parameter_of
from bsnet.width import is_depthwise

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.LeakyReLU,
                       nn.Dropout)  # element-wise, without parameters: they split with the channels
_ACTIVATION_FUNCTIONS = {torch.relu: nn.ReLU, F.relu: nn.ReLU, F.relu6: nn.ReLU6, F.gelu: nn.GELU, F.silu: nn.SiLU,
                         torch.tanh: nn.Tanh, torch.sigmoid: nn.Sigmoid}
_ACTIVATION_METHODS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


@dataclass
class Pair:
    """A branch's split pair: `pre` (branch nodes before `first`), the pair's nodes and modules, `post` (after)."""

    pre: list[fx.Node]
    nodes: list[fx.Node]  # first, per-channel nodes, second
    layers: list[nn.Module]
    post: list[fx.Node]

    @property
    def first(self) -> fx.Node:
        return self.nodes[0]

    @property
    def second(self) -> fx.Node:
        return self.nodes[-1]


def find_pair(root: nn.Module, block: Block, calls: dict[str, int], context: set[fx.Node] = frozenset()
              ) -> Pair | None:
    """The first layer pair of `block`'s branch that splits exactly, or None. `calls`: how often the program calls
    each module (a layer called twice cannot be split in one place); `context`: values computed from the inputs
    alone, which the pieces of a split branch do not read."""
    branch = block.branch
    if any(i in context for n in branch for i in n.all_input_nodes):
        return None
    for i, f in enumerate(branch):
        layer = _layer(root, f, calls)
        if layer is None or getattr(layer, "groups", 1) != 1:
            continue
        nodes, layers, complete = [f], [layer], False
        for n in branch[i + 1:]:
            if list(nodes[-1].users) != [n] or [i for i in n.all_input_nodes if i.op != "get_attr"] != [nodes[-1]]:
                break
            per_channel = _per_channel(root, n, calls)
            if per_channel is not None:
                nodes.append(n)
                layers.append(per_channel)
                continue
            second = _layer(root, n, calls)
            if second is not None:
                complete = type(second) is type(layer) and getattr(second, "groups", 1) == 1 and len(nodes) > 1
                if complete:
                    nodes.append(n)
                    layers.append(second)
            break
        if not complete:
            continue
        pre, post = branch[:i], branch[i + len(nodes):]
        if _separate(block.x, pre, nodes, post):
            return Pair(pre, nodes, layers, post)
    return None


def _layer(root: nn.Module, n: fx.Node, calls: dict[str, int]) -> nn.Module | None:
    if n.op == "call_function":
        return _aten_layer(root, n)
    if n.op != "call_module" or n.kwargs or len(n.args) != 1 or calls.get(n.target, 0) != 1:
        return None
    m = root.get_submodule(n.target)
    return m if isinstance(m, _LAYERS) else None


def _aten_layer(root: nn.Module, n: fx.Node) -> nn.Module | None:
    """`aten.linear` / `aten.conv2d` of a captured program as the layer module it is (holding the same parameters),
    where its weight and bias are parameters read there alone."""
    aten = torch.ops.aten
    if n.target not in (aten.linear.default, aten.conv2d.default) or n.kwargs:
        return None
    weight, bias = n.args[1], n.args[2] if len(n.args) > 2 else None
    params = [parameter_of(root, a) for a in (weight, bias) if a is not None]
    if any(p is None for p in params) or any(len(a.users) != 1 for a in (weight, bias) if a is not None):
        return None
    w = params[0]
    if n.target is aten.linear.default:
        layer: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
    else:
        rest = list(n.args[3:])  # torch.export leaves out trailing defaults: conv2d(x, w) is a plain convolution
        stride, padding, dilation, groups = rest + [1, 0, 1, 1][len(rest):]
        if isinstance(padding, str):
            return None
        layer = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride, padding, dilation, groups,
                          bias=bias is not None, device="meta")
    layer.weight = w
    if bias is not None:
        layer.bias = params[1]
    return layer


def _per_channel(root: nn.Module, n: fx.Node, calls: dict[str, int]) -> nn.Module | None:
    """A module for what `n` computes channel by channel: its BatchNorm, or an activation."""
    if n.op == "call_module" and not n.kwargs and len(n.args) == 1:
        m = root.get_submodule(n.target)
        if ((isinstance(m, _BatchNorm) or is_depthwise(m)) and calls.get(n.target, 0) == 1) or \
                isinstance(m, _ACTIVATION_MODULES):
            return m  # an activation module may serve several places: it holds no state
    if n.op == "call_function" and n.target in _ACTIVATION_FUNCTIONS and len(n.args) == 1 \
            and set(n.kwargs) <= {"inplace"}:  # torch.fx records F.relu(x) as relu(x, inplace=False)
        return _ACTIVATION_FUNCTIONS[n.target]()
    if n.op == "call_method" and n.target in _ACTIVATION_METHODS and len(n.args) == 1 and not n.kwargs:
        return _ACTIVATION_METHODS[n.target]()
    aten = torch.ops.aten
    if n.op == "call_function" and n.target in (aten.gelu.default, aten.gelu_.default):
        return nn.GELU(approximate=n.kwargs.get("approximate", "none"))
    if n.op == "call_function" and not n.kwargs and len(n.args) == 1 and n.target in _ATEN_ACTIVATIONS:
        return _ATEN_ACTIVATIONS[n.target]()
    if n.op == "call_function" and n.target in (aten.hardtanh.default, aten.hardtanh_.default) \
            and tuple(n.args[1:]) == (0.0, 6.0):
        return nn.ReLU6()
    return None


_ATEN_ACTIVATIONS = {torch.ops.aten.relu.default: nn.ReLU, torch.ops.aten.relu_.default: nn.ReLU,
                     torch.ops.aten.silu.default: nn.SiLU, torch.ops.aten.silu_.default: nn.SiLU,
                     torch.ops.aten.tanh.default: nn.Tanh, torch.ops.aten.sigmoid.default: nn.Sigmoid}


def _separate(x: fx.Node, pre: list[fx.Node], pair: list[fx.Node], post: list[fx.Node]) -> bool:
    """Whether the pair is a cut of its branch: `pre` reads only x and itself and feeds only itself and the pair's
    first layer, which reads x or a value of `pre`; `post` reads only the second layer and itself."""
    before = {x, *pre}
    if pair[0].args[0] not in before:
        return False
    for n in pre:
        if not set(n.all_input_nodes) <= before | _attrs(n) or not set(n.users) <= {*pre, pair[0]}:
            return False
    after = {pair[-1], *post}
    return all(set(n.all_input_nodes) <= after | _attrs(n) for n in post)


def _attrs(n: fx.Node) -> set[fx.Node]:
    return {i for i in n.all_input_nodes if i.op == "get_attr"}
