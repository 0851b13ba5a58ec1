"""Width search: a layer pair split into channel groups, each group a gated branch of the super network.

In a pair `first -> per-channel layers -> second` whose hidden channels only `second` reads (a basic block's
conv-BN-ReLU-conv; per-channel layers are BatchNorm, depthwise convolutions and activations), `second`'s output
without its bias is a sum over groups of hidden channels: group j computes
`first`'s output channels of group j, their BatchNorm channels and activation, and `second`'s matching input slice.
BatchNorm and the activation act per channel, so the split is exact. The bias of `second` and what follows it
(BatchNorm, activation) belong to the node where the groups are summed.

Each group is a node owning its slice of the weights (so FLOPs and parameters are counted per group), and the
groups are declared together with `Graph.add_width_split`. The live-subgraph modes run a pair's live groups as one
narrower layer pair whose weights are the live slices concatenated (`fused_forward`); the reference mode runs each
group as its own node.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class WidthGroup(nn.Sequential):
    """One channel group of a split pair: `first` (its output slice), per-channel layers, `second` (its input
    slice, without bias). Called alone it computes its term of the pair's sum; `fused_forward` runs several at once.
    """

    def __init__(self, first: Layer, *rest: nn.Module) -> None:
        super().__init__(first, *rest)
        layers = list(self)
        if len(layers) < 2 or not isinstance(layers[0], _LAYERS) or not isinstance(layers[-1], type(layers[0])):
            raise ValueError("a width group is a linear or convolution layer, per-channel layers, then a second layer "
                             "of the same kind")
        for layer in (layers[0], layers[-1]):
            if getattr(layer, "groups", 1) != 1:
                raise ValueError("grouped convolutions cannot be split into width groups")
        if layers[-1].bias is not None:
            raise ValueError("the second layer's bias belongs to the node where the groups are summed, not to a group")
        hidden = _width(layers[0], out=True)
        for m in layers[1:-1]:
            if isinstance(m, _BatchNorm) or is_depthwise(m):
                if _width_of(m, 0) != hidden:
                    raise ValueError(f"a width group's {type(m).__name__} has {_width_of(m, 0)} channels, not {hidden}")
                if is_depthwise(m) and m.padding_mode != "zeros":
                    raise ValueError("a width group's depthwise convolution must pad with zeros")
            elif any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                raise ValueError(f"{type(m).__name__} between the layers of a width group must act per channel "
                                 "(BatchNorm, a depthwise convolution, or a layer without parameters such as ReLU)")
        if _width(layers[-1], out=False) != hidden:
            raise ValueError(f"a width group's second layer reads {_width(layers[-1], out=False)} channels, "
                             f"its first writes {hidden}")

    @property
    def channels(self) -> int:
        """The group's hidden channels."""
        return _width(self[0], out=True)


class Bias(nn.Module):
    """Adds a per-channel bias: the second layer's bias, kept where the groups are summed. Channels are on dim 1
    after a convolution, on the last dim after a linear layer (`last`)."""

    def __init__(self, bias: torch.Tensor, last: bool = False) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.bias if self.last else self.bias.view(1, -1, *([1] * (x.dim() - 2))))


def split_layer_pair(layers: Sequence[nn.Module], groups: int, name: str = "layer pair"
                     ) -> tuple[list[WidthGroup], nn.Module]:
    """Split `[first, *per-channel layers, second]` into `groups` width groups of equal hidden width.

    Returns the groups (copies holding slices of the weights) and the module that must follow their sum: the second
    layer's bias (`Bias`), or `nn.Identity()` when it has none. The sum of the groups' outputs plus that bias is what
    the layers compute, so the split is an exact rewrite.

    Raises:
        ValueError: the hidden channels do not divide into `groups` (the message names `name`), or the layers do not
            form a pair that splits (see `WidthGroup`).
    """
    layers = list(layers)
    if groups < 1:
        raise ValueError(f"{name}: width groups must be >= 1, got {groups}")
    if not layers or not isinstance(layers[0], _LAYERS):
        raise ValueError(f"{name}: a split pair starts with a linear or convolution layer")
    hidden = _width(layers[0], out=True)
    if hidden % groups:
        raise ValueError(f"{name}: its {hidden} hidden channels do not divide into {groups} width groups")
    k = hidden // groups
    second = layers[-1]
    tail: nn.Module = nn.Identity() if getattr(second, "bias", None) is None else \
        Bias(second.bias, last=isinstance(second, nn.Linear))
    out = []
    for j in range(groups):
        sl = slice(j * k, (j + 1) * k)
        parts = [_sliced(layers[0], sl, dim=0)]
        parts += [_sliced(m, sl, dim=0) if isinstance(m, _BatchNorm) or is_depthwise(m) else copy.deepcopy(m)
                  for m in layers[1:-1]]
        parts.append(_sliced(second, sl, dim=1))
        out.append(WidthGroup(*parts))
    return out, tail


def check_split(groups: Sequence[nn.Module], name: str) -> None:
    """Refuse modules that `fused_forward` cannot run as one pair: not `WidthGroup`s, or layers that differ in
    anything but their hidden channels (kernel, stride, input or output width, normalisation settings). Groups of
    another kind run side by side by their own class (`run_fused`, `fuse`, `check`: attention heads,
    bsnet.from_model.heads)."""
    kind = type(groups[0]) if groups else None
    if kind is not WidthGroup and hasattr(kind, "run_fused") and all(type(g) is kind for g in groups):
        kind.check(groups, name)
        return
    if not all(isinstance(g, WidthGroup) for g in groups):
        raise ValueError(f"width split {name!r}: every group's module must be a WidthGroup (see split_layer_pair)")
    shapes = {tuple(_signature(m, 1 if i == len(g) - 1 else 0) for i, m in enumerate(g)) for g in groups}
    if len(shapes) > 1:
        raise ValueError(f"width split {name!r}: its groups' layers differ beyond their hidden channels")


def fused_forward(groups: Sequence[WidthGroup], x: torch.Tensor, context: Any = None) -> torch.Tensor:
    """The sum of `groups`' outputs on `x`, computed as one narrower layer pair (their slices concatenated): one
    convolution of 16 channels is much faster than four of 4. One group goes the same way: its own forward would hand
    autograd its BatchNorm's running statistics, which a fused forward of another slice of the batch then updates
    in place before the backward pass. Groups of another kind run as their class says, with the network's context."""
    if type(groups[0]) is not WidthGroup:
        return type(groups[0]).run_fused(groups, x, context)
    layers = [list(g) for g in groups]  # [group][layer], read once: Sequential indexing is slow per call
    head = layers[0]
    first = [g[0] for g in layers]
    bias = torch.cat([m.bias for m in first]) if first[0].bias is not None else None
    h = _apply(head[0], x, torch.cat([m.weight for m in first]), bias)  # (B, sum of the groups' channels, ...)
    for i in range(1, len(head) - 1):
        if isinstance(head[i], _BatchNorm):
            h = _norm([g[i] for g in layers], h)
        elif is_depthwise(head[i]):  # one channel per group of the convolution: the slices side by side
            convs = [g[i] for g in layers]
            bias = torch.cat([m.bias for m in convs]) if head[i].bias is not None else None
            conv = (F.conv1d, F.conv2d, F.conv3d)[head[i].weight.dim() - 3]
            h = conv(h, torch.cat([m.weight for m in convs]), bias, head[i].stride, head[i].padding,
                     head[i].dilation, h.shape[1])
        else:
            h = head[i](h)
    return _apply(head[-1], h, torch.cat([g[-1].weight for g in layers], dim=1), None)


def fuse_groups(groups: Sequence[WidthGroup]) -> nn.Sequential:
    """The live groups as one plain narrower layer pair (copies of their weights concatenated), computing the sum of
    their outputs: what an exported network holds in place of the groups."""
    if type(groups[0]) is not WidthGroup:
        return type(groups[0]).fuse(groups)
    head = groups[0]
    layers = [_concat([g[i] for g in groups], dim=0 if i < len(head) - 1 else 1)
              if isinstance(head[i], (*_LAYERS, _BatchNorm)) else copy.deepcopy(head[i]) for i in range(len(head))]
    for i in range(1, len(head) - 1):
        if is_depthwise(head[i]):
            layers[i].in_channels = layers[i].groups = layers[i].out_channels
    return nn.Sequential(*layers)


def kept_widths(net: nn.Module, mask: torch.Tensor) -> dict[str, list[int]]:
    """For each width split of `net` (a SuperNetwork) with a live group under `mask`: the node its groups meet at
    -> [hidden channels kept, hidden channels in all], what `bsnet show` prints as "B-1_2 32/64 ch"."""
    live = dict(zip(net.graph.order, net.graph.live(mask).tolist()))
    out = {}
    for split in net.graph.width_splits:
        widths = [(net.blocks[m].channels, live[m]) for m in split.groups]
        kept = sum(c for c, on in widths if on)
        if kept:
            out[split.merge] = [kept, sum(c for c, _ in widths)]
    return out


def keep_strongest(net: nn.Module, mask: torch.Tensor) -> None:
    """Move each width split's channels of largest norm into its groups that are live under `mask`, in place.

    A channel's norm is the L2 norm of every weight that belongs to it (its filter of the first layer with its bias,
    its BatchNorm scale and shift, its depthwise filter, its slice of the second layer). Channels only change groups,
    so the full network computes what it computed; under `mask` the kept channels are the strongest of the pair, as
    a magnitude pruner keeps them. Splits of another kind (attention heads) are left as they are."""
    live = dict(zip(net.graph.order, net.graph.live(mask).tolist()))
    for split in net.graph.width_splits:
        groups = [net.blocks[m] for m in split.groups]
        on = [live[m] for m in split.groups]
        if not all(type(g) is WidthGroup for g in groups) or all(on) or not any(on):
            continue
        pair = fuse_groups(groups)
        last = len(pair) - 1
        with torch.no_grad():
            norm = sum(_per_channel(p.pow(2), 1 if i == last and p.dim() > 1 else 0)
                       for i, m in enumerate(pair) for p in m.parameters(recurse=False))
        strongest = norm.argsort(descending=True).tolist()
        kept = sum(g.channels for g, o in zip(groups, on) if o)
        pools = [sorted(strongest[:kept]), sorted(strongest[kept:])]  # each pool in the channels' own order
        for g, o in zip(groups, on):
            pool = pools[0 if o else 1]
            idx, pool[:] = torch.tensor(pool[:g.channels], device=norm.device), pool[g.channels:]
            for i, m in enumerate(pair):
                if isinstance(m, (*_LAYERS, _BatchNorm)):
                    g[i] = _sliced(m, idx, dim=1 if i == last else 0)


def is_depthwise(m: nn.Module) -> bool:
    """A convolution of one input channel per output channel: it acts per channel, so it splits with them."""
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups == m.in_channels == m.out_channels


# ---- helpers ------------------------------------------------------------------------------------------------
def _width(layer: nn.Module, out: bool) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features if out else layer.in_features
    return layer.out_channels if out else layer.in_channels  # type: ignore[return-value]


def _set_width(layer: nn.Module, n: int, dim: int) -> None:
    if isinstance(layer, _BatchNorm):
        layer.num_features = n
    elif isinstance(layer, nn.Linear):
        setattr(layer, "out_features" if dim == 0 else "in_features", n)
    else:
        setattr(layer, "out_channels" if dim == 0 else "in_channels", n)


def _sliced(layer: nn.Module, sl: slice | torch.Tensor, dim: int) -> nn.Module:
    """A copy of `layer` keeping channels `sl` (a slice or indices) of its output (dim 0) or input (dim 1); a second
    layer's bias is dropped (it is added once, after the sum)."""
    out = copy.deepcopy(layer)
    for name, p in list(layer.named_parameters(recurse=False)):
        if dim == 1 and name == "bias":
            out.register_parameter("bias", None)
        else:
            setattr(out, name, nn.Parameter(p.detach()[(slice(None),) * dim + (sl,)].clone(), p.requires_grad))
    for name, b in layer.named_buffers(recurse=False):
        if b is not None and b.dim() > 0:  # per-channel statistics; a batch counter is copied as it is
            setattr(out, name, b[sl].clone())
    _set_width(out, sl.stop - sl.start if isinstance(sl, slice) else len(sl), dim)
    if is_depthwise(layer):
        out.in_channels = out.groups = out.out_channels
    return out


def _concat(parts: Sequence[nn.Module], dim: int) -> nn.Module:
    """One layer holding `parts`' channels side by side: the inverse of `_sliced`."""
    out = copy.deepcopy(parts[0])
    for name, p in parts[0].named_parameters(recurse=False):
        cat = torch.cat([getattr(m, name).detach() for m in parts], dim=dim if name == "weight" else 0)
        setattr(out, name, nn.Parameter(cat, p.requires_grad))
    for name, b in parts[0].named_buffers(recurse=False):
        if b is not None and b.dim() > 0:
            setattr(out, name, torch.cat([getattr(m, name) for m in parts]))
    _set_width(out, sum(_width_of(m, dim) for m in parts), dim)
    return out


def _per_channel(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The sum of `t` over every dim but `dim`."""
    return t.movedim(dim, 0).reshape(t.shape[dim], -1).sum(1)


def _width_of(m: nn.Module, dim: int) -> int:
    return m.num_features if isinstance(m, _BatchNorm) else _width(m, out=dim == 0)


def _signature(m: nn.Module, hidden_dim: int) -> tuple:
    """What must agree between groups for them to run as one layer: everything but the hidden channels (dim
    `hidden_dim` of a layer's weight)."""
    if isinstance(m, _LAYERS):
        shape = list(m.weight.shape)
        del shape[hidden_dim]
        return (type(m), tuple(shape), m.bias is not None, getattr(m, "stride", None), getattr(m, "padding", None),
                getattr(m, "dilation", None), getattr(m, "padding_mode", None))
    if isinstance(m, _BatchNorm):
        return type(m), m.eps, m.momentum, m.affine, m.track_running_stats
    if isinstance(m, torch.fx.GraphModule):  # element-wise code (bsnet.from_model): each copy has a class of its own
        return torch.fx.GraphModule, m.code
    return type(m), repr(m)


def _apply(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)  # type: ignore[operator]  # honours padding modes


def _norm(norms: Sequence[_BatchNorm], h: torch.Tensor) -> torch.Tensor:
    """The groups' BatchNorms as one over their channels, updating each group's running statistics as its own
    forward would (a group's batch counter, hence a cumulative average's factor, may differ from another's)."""
    bn = norms[0]
    weight = torch.cat([m.weight for m in norms]) if bn.affine else None
    bias = torch.cat([m.bias for m in norms]) if bn.affine else None
    if bn.running_mean is None:
        return F.batch_norm(h, None, None, weight, bias, True, 0.0, bn.eps)
    mean = torch.cat([m.running_mean for m in norms])
    var = torch.cat([m.running_var for m in norms])
    if not bn.training:
        return F.batch_norm(h, mean, var, weight, bias, False, 0.0, bn.eps)
    # With factor 1 the copies receive this batch's statistics; each group then blends them into its own.
    out = F.batch_norm(h, mean, var, weight, bias, True, 1.0, bn.eps)
    sizes = [m.num_features for m in norms]
    with torch.no_grad():
        for m, batch_mean, batch_var in zip(norms, mean.split(sizes), var.split(sizes)):
            m.num_batches_tracked.add_(1)
            factor = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
            m.running_mean.lerp_(batch_mean, factor)
            m.running_var.lerp_(batch_var, factor)
    return out
