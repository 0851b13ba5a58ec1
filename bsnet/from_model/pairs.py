"""Width in a converted model: in each gated branch, the first layer pair whose hidden channels only its second layer
reads (a basic block's conv-BN-ReLU-conv, a bottleneck's first conv-BN-ReLU-conv, an inverted residual's expansion
through its depthwise convolution, an MLP's Linear-act-Linear, GPT-2's Conv1D-GELU-Conv1D) is split into
`width_groups` channel groups, each a gated branch of its own (bsnet.width). An activation may be one operation or
several element-wise ones on plain numbers (GPT-2's tanh-GELU), run as one per-channel step.

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
from bsnet.from_model.nodes import segment
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
    for i, f in enumerate(branch):
        found = _layer(root, f, calls)
        if found is None or getattr(found[0], "groups", 1) != 1:
            continue
        layer, span = found
        nodes, layers, complete, j = list(span), [layer], False, i + len(span)
        while j < len(branch):
            n, tail = branch[j], nodes[-1]
            if list(tail.users) != [n] or [a for a in n.all_input_nodes if a.op != "get_attr"] != [tail]:
                region = _elementwise_region(branch, j, tail)  # an activation written as several operations
                if region is None:
                    break
                nodes += region
                layers.append(segment(root, region, tail, region[-1]))
                j += len(region)
                continue
            per_channel = _per_channel(root, n, calls)
            if per_channel is not None:
                nodes.append(n)
                layers.append(per_channel)
                j += 1
                continue
            second = _layer(root, n, calls)
            if second is not None:
                complete = type(second[0]) is type(layer) and getattr(second[0], "groups", 1) == 1 and \
                    len(layers) > 1
                if complete:
                    nodes += second[1]
                    layers.append(second[0])
            break
        if not complete:
            continue
        if branch[i:i + len(nodes)] != nodes:  # the pair's nodes must be one stretch of the branch
            continue
        pre, post = branch[:i], branch[i + len(nodes):]
        # Values of the inputs alone (a symbolic batch size) may shape a Conv1D's views, which its layer replaces
        kept = [n for n in (*pre, *nodes, *post) if n not in set(span) | set(second[1])]
        if _separate(block.x, pre, nodes, post) and not any(a in context for n in kept for a in n.all_input_nodes):
            return Pair(pre, nodes, layers, post)
    return None


def _layer(root: nn.Module, n: fx.Node, calls: dict[str, int]) -> tuple[nn.Module, list[fx.Node]] | None:
    """The layer that starts at `n` and the program's nodes it spans: a layer module, `aten.linear` / `aten.conv2d`,
    or a `Conv1D` (Hugging Face GPT-2: `view(addmm(bias, view(x, [-1, in]), weight), [..., out])`)."""
    if n.op == "call_function":
        layer = _aten_layer(root, n)
        return (layer, [n]) if layer is not None else conv1d(root, n)
    if n.op != "call_module" or n.kwargs or len(n.args) != 1 or calls.get(n.target, 0) != 1:
        return None
    m = root.get_submodule(n.target)
    return (m, [n]) if isinstance(m, _LAYERS) else None


def conv1d(root: nn.Module, n: fx.Node) -> tuple[nn.Module, list[fx.Node]] | None:
    """A `Conv1D` as the `nn.Linear` it computes (its weight transposed), from the view that flattens its input."""
    view = torch.ops.aten.view.default
    if n.target is not view or len(n.users) != 1:
        return None
    (mm,) = n.users
    if mm.target is not torch.ops.aten.addmm.default or mm.kwargs or len(mm.args) != 3 or mm.args[1] is not n \
            or len(mm.users) != 1:
        return None
    (out,) = mm.users
    bias, weight = (parameter_of(root, a) for a in (mm.args[0], mm.args[2]))
    if out.target is not view or bias is None or weight is None or weight.dim() != 2 or \
            any(len(a.users) != 1 for a in (mm.args[0], mm.args[2])):
        return None
    x, y = (getattr(v, "meta", {}).get("val") for v in (n.args[0], out))
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() < 2 or \
            x.shape[-1] != weight.shape[0] or tuple(y.shape) != (*x.shape[:-1], weight.shape[1]):
        return None  # only a flatten of the leading dimensions and back is what a linear layer computes
    layer = nn.Linear(weight.shape[0], weight.shape[1], device="meta")
    layer.weight = nn.Parameter(weight.detach().t())
    layer.bias = nn.Parameter(bias.detach())
    layer.bsnet_source = (Source(weight, None, True), Source(bias, None, False))  # where its weights live
    return layer, [n, mm, out]


@dataclass(frozen=True)
class Source:
    """Where a layer's weight lives in the model: `(param.t() if transposed else param)[rows]` (`nn.Linear`'s
    layout), so that `bsnet.export.save_pretrained` can write a kept part back."""

    param: torch.Tensor
    rows: slice | None
    transposed: bool


def sources(layer: nn.Module) -> tuple[Source | None, Source | None]:
    """A layer's weight and bias sources: recorded for one read from a Conv1D, else its own parameters."""
    given = getattr(layer, "bsnet_source", None)
    if given is not None:
        return given
    return tuple(None if p is None else Source(p, None, False)
                 for p in (getattr(layer, "weight", None), getattr(layer, "bias", None)))


# Element-wise operations that act on each channel alone when their other operands are plain numbers.
_aten = torch.ops.aten
_ELEMENTWISE = {_aten.mul.Tensor, _aten.mul.Scalar, _aten.add.Tensor, _aten.add.Scalar, _aten.sub.Tensor,
                _aten.sub.Scalar, _aten.div.Tensor, _aten.div.Scalar, _aten.pow.Tensor_Scalar, _aten.tanh.default,
                _aten.sigmoid.default, _aten.erf.default, _aten.neg.default, _aten.exp.default, _aten.relu.default,
                _aten.silu.default, _aten.gelu.default}


def _elementwise_region(branch: list[fx.Node], j: int, tail: fx.Node) -> list[fx.Node] | None:
    """The nodes from `branch[j]` on that compute, element by element, one value from `tail` alone (NewGELU's
    `0.5 * x * (1 + tanh(c * (x + 0.044715 * x ** 3)))`), or None. Read only inside the region, but for its last
    node, which one node after it reads."""
    region: list[fx.Node] = []
    for n in branch[j:]:
        scalars = all(isinstance(a, (int, float)) for a in (*n.args, *n.kwargs.values()) if not isinstance(a, fx.Node))
        if n.op != "call_function" or n.target not in _ELEMENTWISE or not scalars or \
                not set(n.all_input_nodes) <= {tail, *region}:
            break
        region.append(n)
    while region:  # the region ends where every value but the last is read inside it
        inside = {tail, *region}
        if all(set(v.users) <= inside for v in (tail, *region[:-1])) and len(region[-1].users) == 1:
            return region
        region.pop()
    return None


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
