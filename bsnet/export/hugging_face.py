"""A variant of a Hugging Face model as a `save_pretrained` directory, where the model's config can say what the
variant is: whole layers removed (every gate inside a layer dropped), the rest renumbered, and one MLP width in every
layer (the same number of width groups kept in each). A variant that keeps part of a layer (its attention without
its MLP), MLP widths that differ between layers, or fewer heads in a config that derives a head's size from the
hidden size (BERT, ViT, GPT-2) has no such config: `save_pretrained` says why in one line, and the pt and onnx formats
write it."""
from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from bsnet.inputs import random, to_device
from bsnet.supernet import SuperNetwork
from bsnet.width import Bias

if TYPE_CHECKING:
    from bsnet.from_model.pairs import Source


def save_pretrained(model: nn.Module, net: SuperNetwork, mask: torch.Tensor, path: str | Path) -> Path:
    """Write the variant of `model` that `mask` keeps in `net` (made from `model` by `from_model`, sharing its weights)
    with `model.save_pretrained(path)`; the library's `from_pretrained` reads it back.

    Raises:
        ValueError: not a Hugging Face model, `net` was not made from it, `path` exists, or the config cannot express
            the variant (the message says which layer keeps what).
    """
    path = Path(path)
    config = getattr(model, "config", None)
    if not hasattr(model, "save_pretrained") or not hasattr(config, "num_hidden_layers"):
        raise ValueError(f"{type(model).__qualname__} is not a Hugging Face model with numbered layers")
    if net.config.get("from_model") != type(model).__qualname__ or not _shares_weights(model, net):
        raise ValueError("the super network was not made from this model (from_model shares the model's weights)")
    if path.exists():
        raise ValueError(f"{path} exists: name a new directory")
    layers, where = _layer_list(model, net.gate_names)
    kept = dict(zip(net.gate_names, (mask > 0.5).tolist()))
    gate_of = {e.dst: net.gate_names[e.gate] for e in net.graph.edges if e.gate is not None}  # node -> its gate
    groups = {s.name: [n for n in s.groups if kept[gate_of[n]]] for s in net.graph.width_splits}  # kept, in order
    in_groups = {gate_of[n] for s in net.graph.width_splits for n in s.groups}
    branches = [g for g in net.gate_names if g not in in_groups]
    live = {b: kept[b] and bool(groups.get(f"{b}.width", [1])) and bool(groups.get(f"{b}.heads", [1]))
            for b in branches}  # a branch whose every group is dropped is dropped too
    outside = [b for b in branches if not live[b] and not b.startswith(f"{where}.")]
    if outside:
        raise ValueError(f"the variant drops {', '.join(outside)}, outside the model's layers: a Hugging Face config "
                         f"cannot say so; write it as pt or onnx")
    keep: list[int] = []
    for i in range(len(layers)):
        inside = [b for b in branches if b == f"{where}.{i}" or b.startswith(f"{where}.{i}.")]
        if all(live[b] for b in inside):
            keep.append(i)
        elif any(live[b] for b in inside):
            dropped = [b for b in inside if not live[b]]
            raise ValueError(f"layer {where}.{i} keeps part of itself (drops {', '.join(dropped)}): a Hugging Face "
                             f"config removes whole layers only; write the variant as pt or onnx")
    kept_splits = {n: g for n, g in groups.items() if any(n.startswith(f"{where}.{i}.") for i in keep)}
    variant = copy.deepcopy(model)
    _write_splits(model, variant, net, kept_splits)
    parent, _, name = where.rpartition(".")
    owner = variant.get_submodule(parent) if parent else variant
    setattr(owner, name, nn.ModuleList([getattr(owner, name)[i] for i in keep]))
    variant.config.num_hidden_layers = len(keep)
    for new, layer in enumerate(getattr(owner, name)):  # attention layers that know their index (caches)
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new
    _check_same(net, mask, variant)
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar: the library prints nothing
        variant.save_pretrained(path)
    return path


@torch.no_grad()
def _check_same(net: SuperNetwork, mask: torch.Tensor, variant: nn.Module) -> None:
    """The variant the config describes must compute what the super network computes under the mask. It does not
    where a removed layer normalises after its residual sum (a post-norm layer, BERT's): the super network keeps
    that LayerNorm when every branch of the layer is dropped, the renumbered model has no layer left to hold it."""
    from bsnet.from_model.capture import prediction
    was = net.training, variant.training
    net.eval()
    variant.eval()
    try:
        device = next(net.parameters()).device
        x = to_device(random(net.input_spec, tuple(net.input_shape), 2), device)
        mine = prediction(variant(**x) if isinstance(x, dict) else variant(x))
        theirs = net(x, mask)
    finally:
        net.train(was[0])
        variant.train(was[1])
    gap = float((mine - theirs).abs().max())
    if gap > 1e-4 * (1 + float(theirs.abs().max())):
        raise ValueError(f"the model its config describes computes other outputs than the variant (by up to "
                         f"{gap:.2g}): a removed layer takes with it what runs after its residual sums (for example a "
                         f"post-norm layer's LayerNorm); write the variant as pt or onnx")


def _write_splits(model: nn.Module, variant: nn.Module, net: SuperNetwork, kept: dict[str, list[str]]) -> None:
    """The kept groups' weights (the super network's copies, trained or not) written into `variant`'s layers, and
    the config's MLP width set; refused where one config cannot say what the groups keep."""
    from bsnet.from_model.heads import HeadGroup
    splits = {s.name: s for s in net.graph.width_splits}
    cut_heads = [n.removesuffix(".heads") for n, g in kept.items()
                 if n.endswith(".heads") and len(g) < len(splits[n].groups)]
    if cut_heads:
        raise ValueError(f"{', '.join(cut_heads)} keep fewer heads: a {type(model.config).__name__} derives a head's "
                         f"size from the hidden size and its head count, so it cannot say so; write the variant as pt "
                         f"or onnx")
    mlp = {n: g for n, g in kept.items() if n.endswith(".width")}
    widths = {len(g) * net.blocks[g[0]].channels for g in mlp.values()}
    if len(widths) > 1:
        raise ValueError(f"the variant's MLP widths differ between layers ({', '.join(map(str, sorted(widths)))}): a "
                         f"Hugging Face config has one; write it as pt or onnx")
    names = {id(p): n for n, p in model.named_parameters()}
    for name, nodes in kept.items():
        roles = getattr(net, "split_sources", {}).get(name, {})
        groups = [net.blocks[n] for n in nodes]
        bias = [m.bias.detach() for m in net.blocks[splits[name].merge].modules() if isinstance(m, Bias)][:1]
        if isinstance(groups[0], HeadGroup):
            new = {r: torch.cat([getattr(g, r).detach() for g in groups], dim=1 if r == "o_w" else 0)
                   for r in HeadGroup.ROLES}
            if bias:
                new["o_b"] = bias[0]
        elif all(len(g) == 3 and isinstance(g[0], nn.Linear) for g in groups):
            new = {"first_w": torch.cat([g[0].weight.detach() for g in groups]),
                   "second_w": torch.cat([g[-1].weight.detach() for g in groups], dim=1)}
            if groups[0][0].bias is not None:
                new["first_b"] = torch.cat([g[0].bias.detach() for g in groups])
            if bias:
                new["second_b"] = bias[0]
        else:
            raise ValueError(f"{name} is not a Linear-activation-Linear MLP: write the variant as pt or onnx")
        if any(roles.get(r) is None or id(roles[r].param) not in names for r in new):
            raise ValueError(f"{name} was not made from this model's own layers: write the variant as pt or onnx")
        for role, tensor in new.items():
            _write(variant, names[id(roles[role].param)], roles[role], tensor)
    if mlp:
        some = next(iter(mlp))
        full = len(splits[some].groups) * net.blocks[splits[some].groups[0]].channels
        config = model.config
        widths_of = {a: getattr(config, a, None) for a in ("intermediate_size", "n_inner", "ffn_dim", "d_ff")}
        if hasattr(config, "n_embd") and widths_of["n_inner"] is None:  # GPT-2's n_inner: None for 4 x n_embd
            widths_of["n_inner"] = 4 * config.n_embd
        attr = next((a for a, w in widths_of.items() if w == full), None)
        if attr is None:
            raise ValueError(f"found no MLP width of {full} in the {type(model.config).__name__}: write the variant "
                             f"as pt or onnx")
        setattr(variant.config, attr, widths.pop())


def _write(variant: nn.Module, path: str, src: "Source", value: torch.Tensor) -> None:
    """`value` (in `nn.Linear`'s layout) into the variant's parameter at `path`, as `src` says it lives there: the
    whole parameter (its layer resized: Linear's features, Conv1D's nf and nx), or rows of a fused one."""
    owner, _, attr = path.rpartition(".")
    layer = variant.get_submodule(owner)
    value = value.t() if src.transposed and value.dim() == 2 else value
    if src.rows is not None:  # a third of a fused projection: same size, written in place
        with torch.no_grad():
            target = getattr(layer, attr)
            (target[:, src.rows] if src.transposed and target.dim() == 2 else target[src.rows]).copy_(value)
        return
    setattr(layer, attr, nn.Parameter(value.clone()))
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = layer.weight.shape
    elif hasattr(layer, "nf") and hasattr(layer, "nx"):  # transformers' Conv1D: weight (nx, nf)
        layer.nx, layer.nf = layer.weight.shape


def _shares_weights(model: nn.Module, net: SuperNetwork) -> bool:
    mine = {id(p) for p in model.parameters()}
    return any(id(p) in mine for p in net.parameters())


def _layer_list(model: nn.Module, gates: list[str]) -> tuple[nn.ModuleList, str]:
    """The model's list of layers the gates lie in (`bert.encoder.layer`), and its path."""
    for path, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == model.config.num_hidden_layers and \
                any(g.startswith(f"{path}.") for g in gates):
            return m, path
    raise ValueError(f"found no list of {model.config.num_hidden_layers} layers holding the gates in "
                     f"{type(model).__qualname__}")
