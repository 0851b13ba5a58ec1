"""A variant of a Hugging Face model as a `save_pretrained` directory, where the model's config can say what the
variant is: whole layers removed (every gate inside a layer dropped), the rest renumbered. A variant that keeps part
of a layer (its attention without its MLP) or cuts a width has no such config: `save_pretrained` says why in one
line, and the pt and onnx formats write it."""
from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import torch
from torch import nn

from bsnet.supernet import SuperNetwork


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
    if net.graph.width_splits:
        raise ValueError("a Hugging Face config has one width for every layer: a variant of cut widths is written "
                         "as pt or onnx")
    layers, where = _layer_list(model, net.gate_names)
    kept = dict(zip(net.gate_names, (mask > 0.5).tolist()))
    outside = [g for g in net.gate_names if not kept[g] and not g.startswith(f"{where}.")]
    if outside:
        raise ValueError(f"the variant drops {', '.join(outside)}, outside the model's layers: a Hugging Face config "
                         f"cannot say so; write it as pt or onnx")
    keep: list[int] = []
    for i in range(len(layers)):
        inside = [g for g in net.gate_names if g == f"{where}.{i}" or g.startswith(f"{where}.{i}.")]
        if all(kept[g] for g in inside):
            keep.append(i)
        elif any(kept[g] for g in inside):
            dropped = [g for g in inside if not kept[g]]
            raise ValueError(f"layer {where}.{i} keeps part of itself (drops {', '.join(dropped)}): a Hugging Face "
                             f"config removes whole layers only; write the variant as pt or onnx")
    variant = copy.deepcopy(model)
    parent, _, name = where.rpartition(".")
    owner = variant.get_submodule(parent) if parent else variant
    setattr(owner, name, nn.ModuleList([getattr(owner, name)[i] for i in keep]))
    variant.config.num_hidden_layers = len(keep)
    for new, layer in enumerate(getattr(owner, name)):  # attention layers that know their index (caches)
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar: the library prints nothing
        variant.save_pretrained(path)
    return path


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
