"""Capturing a model with torch.export, for what symbolic torch.fx cannot follow (Hugging Face transformers, models
with data-dependent Python) and for models of several inputs (token ids and an attention mask).

torch.export runs the model's own Python on example inputs and records the ATen program, with the batch size kept
symbolic. What the program computes from the inputs alone (an attention mask, position ids, the batch size) is the
*context*: it is computed once per forward and read by every node module that needs it (bsnet.supernet), so that
only the *stream* (what depends on the model's parameters) is cut into nodes. Two things eval-mode capture would
freeze follow the network's training flag again: dropout becomes an `nn.Dropout`, and batch normalisation calls the
model's own BatchNorm module (so its running statistics stay the model's). Dropout inside
`scaled_dot_product_attention` stays as captured (off).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import traceback
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from bsnet.from_model.blocks import MODE_LAYER, parameter_of
from bsnet.inputs import Inputs

_ASSERTS = {torch.ops.aten._assert_tensor_metadata.default, torch.ops.aten._assert_scalar.default,
            torch.ops.aten.sym_constrain_range_for_size.default}
PREFIX = "model."  # the user's model inside `Prediction`


def prediction(out: Any) -> torch.Tensor:
    """What bsnet trains and scores: the model's output tensor, its `logits` (Hugging Face), or its first output."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    first = next(iter(out.values()), None) if isinstance(out, Mapping) else \
        out[0] if isinstance(out, (tuple, list)) and out else None
    if isinstance(first, torch.Tensor):
        return first
    raise ValueError(f"from_model needs a model that returns a tensor, logits or a first output that is a tensor; "
                     f"it returns {type(out).__qualname__}")


class Prediction(nn.Module):
    """The user's model called on bsnet's inputs (one tensor, or a dict of named tensors), returning its prediction.
    Arguments that are not tensors keep the example's values."""

    def __init__(self, model: nn.Module, names: Sequence[str] | None, fixed: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.names = None if names is None else list(names)
        self.fixed = dict(fixed)

    def forward(self, inputs: Inputs) -> torch.Tensor:
        if self.names is None:
            return prediction(self.model(inputs, **self.fixed))
        return prediction(self.model(**{n: inputs[n] for n in self.names}, **self.fixed))


def bind(model: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> tuple[Inputs, dict[str, Any]]:
    """The example inputs as bsnet takes them (a tensor for a model of one tensor argument, else a dict by
    parameter name) and the other arguments, kept fixed."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"example inputs do not fit {type(model).__qualname__}.forward: {e}") from None
    params = inspect.signature(model.forward).parameters
    values: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise ValueError(f"from_model passes inputs by name; {type(model).__qualname__}.forward takes them "
                                 f"as *{name}")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            values.update(value)
        else:
            values[name] = value
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    fixed = {k: v for k, v in values.items() if not isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError("example inputs hold no tensor")
    if any(v.dim() < 1 for v in tensors.values()) or len({v.shape[0] for v in tensors.values()}) != 1:
        raise ValueError("every example input must be a batch: tensors with one batch dimension first, of one size")
    first = next(iter(params))
    if len(tensors) == 1 and first in tensors and not fixed:
        return tensors[first], {}
    return tensors, fixed


@dataclass
class Program:
    """A captured program: `gm` runs on the inputs' tensors in `names`' order (None: one tensor); `context` holds
    its nodes computed from the inputs alone."""

    gm: fx.GraphModule
    names: list[str] | None
    context: set[fx.Node]
    output: fx.Node


def export_program(model: nn.Module, inputs: Inputs, fixed: Mapping[str, Any]) -> Program:
    """`model` on `inputs` as one ATen program whose parameters are the model's own (shared)."""
    names = None if isinstance(inputs, torch.Tensor) else list(inputs)
    example = _two_examples(inputs)
    batch = torch.export.Dim("batch", min=1)
    dynamic = {0: batch} if names is None else {n: {0: batch} for n in names}
    wrapper = Prediction(model, names, fixed)
    logging.disable(logging.WARNING)  # torch.export logs and prints what it could not guard; the error says it once
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            gm = torch.export.export(wrapper, (example,), dynamic_shapes=(dynamic,), strict=False).module()
    except Exception as e:
        raise ValueError(_export_error(model, e)) from None
    finally:
        logging.disable(logging.NOTSET)
    _clean(gm)
    _drop_empty_concatenations(gm)
    _follow_training_flag(gm, model)
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
    gm.recompile()
    return Program(gm, names, _context(gm), out)


def _two_examples(inputs: Inputs) -> Inputs:
    """torch.export fixes a size of 1 as a constant: capture a batch of at least two."""
    def grow(t: torch.Tensor) -> torch.Tensor:
        return t if t.shape[0] > 1 else t.expand(2, *t.shape[1:]).contiguous()
    return grow(inputs) if isinstance(inputs, torch.Tensor) else {k: grow(v) for k, v in inputs.items()}


def _clean(gm: fx.GraphModule) -> None:
    """Drop the input guards and shape assertions (checks of the capture, not computations), and the wrapper's
    name from the module paths gates are named after."""
    for n in reversed(list(gm.graph.nodes)):
        if (n.op == "call_module" and n.target == "_guards_fn") or (n.op == "call_function" and n.target in _ASSERTS):
            if not n.users:
                gm.graph.erase_node(n)
        stack = n.meta.get("nn_module_stack")
        if stack:
            n.meta["nn_module_stack"] = {k: (path.removeprefix(PREFIX) if path != "model" else "", cls)
                                         for k, (path, cls) in stack.items()}
    if hasattr(gm, "_guards_fn"):
        gm.delete_submodule("_guards_fn")


def _drop_empty_concatenations(gm: fx.GraphModule) -> None:
    """`cat([an empty constant, x])` is x: a key-value cache that starts empty (GPT-2's) would otherwise fix the
    attention's head count in a constant of the capture."""
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target is not torch.ops.aten.cat.default:
            continue
        parts, dim = n.args[0], n.args[1] if len(n.args) > 1 else 0
        values = [getattr(p, "meta", {}).get("val") for p in parts]
        if not all(isinstance(v, torch.Tensor) for v in values):
            continue
        # empty: no size along `dim`, or the 1-D `torch.tensor([])` that cat skips whatever the others' shape
        empty = [v.shape == (0,) or (-v.dim() <= dim < v.dim() and isinstance(v.shape[dim], int) and v.shape[dim] == 0)
                 for v in values]
        full = [p for p, e in zip(parts, empty) if not e]
        if len(full) != 1 or values[parts.index(full[0])].dtype != n.meta["val"].dtype or \
                any(e and p.op == "placeholder" for p, e in zip(parts, empty)):
            continue  # an input may be empty today and not tomorrow; a dtype promotion is a computation
        n.replace_all_uses_with(full[0])
        gm.graph.erase_node(n)
        todo = [p for p, e in zip(parts, empty) if e]
        while todo:  # what made the empty constants, now read by nothing
            m = todo.pop()
            if not m.users and m.op in ("call_function", "get_attr"):
                todo.extend(m.all_input_nodes)
                gm.graph.erase_node(m)


def _follow_training_flag(gm: fx.GraphModule, model: nn.Module) -> None:
    aten = torch.ops.aten
    count = 0
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in (aten.dropout.default, aten.batch_norm.default):
            continue
        if n.target is aten.dropout.default:
            layer: nn.Module = nn.Dropout(float(n.args[1]))
        else:
            stack = n.meta.get("nn_module_stack") or {}
            path = next(reversed(stack.values()))[0] if stack else ""
            layer = model.get_submodule(path) if path else None
            if not isinstance(layer, nn.modules.batchnorm._BatchNorm):
                continue  # functional batch norm: stays as captured
        name = f"{MODE_LAYER}{count}"
        count += 1
        gm.add_submodule(name, layer)
        with gm.graph.inserting_before(n):
            call = gm.graph.call_module(name, (n.args[0],))
        call.meta = dict(n.meta)
        n.replace_all_uses_with(call)
        gm.graph.erase_node(n)


def _context(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes that read no parameter, directly or through other nodes: computed from the inputs alone."""
    stream: set[fx.Node] = set()
    context: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op in ("get_attr", "output"):
            continue
        owns = n.op == "call_module" and any(True for _ in gm.get_submodule(n.target).parameters())
        if owns or any(i in stream or parameter_of(gm, i) is not None for i in n.all_input_nodes):
            stream.add(n)
        else:
            context.add(n)
    return context


def _export_error(model: nn.Module, e: Exception) -> str:
    skip = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skip)]
    where = f" at `{frames[-1].line}` ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    # The message may open with the program captured so far: its first line that is prose says what failed.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith((" ", "def "))]
    reason = next((ln for ln in lines if "could not" in ln.lower() or "unsupported" in ln.lower()),
                  lines[0] if lines else "")
    return f"cannot capture {type(model).__qualname__} with torch.export{where}: {type(e).__name__}: {reason[:300]}"
