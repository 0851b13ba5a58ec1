"""Capturing a user's model as one torch.fx program: its one input, its leaf modules, the tracer and its errors."""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import traceback
from typing import Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

Leaf = type | nn.Module | str  # a class, an instance, a submodule path or a class name


def single_input(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(example_inputs, (tuple, list)):
        if len(example_inputs) != 1:
            raise ValueError(f"from_model takes models with one tensor input; got {len(example_inputs)} inputs")
        example_inputs = example_inputs[0]
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 1:
        raise ValueError("example_inputs must be a batch of inputs: a tensor with a batch dimension")
    return example_inputs


# ---- leaf modules -----------------------------------------------------------------------------------
def class_name(cls: type) -> str:
    """`module.QualName`: how a leaf class is written down (matched again against the model, never imported)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_leaves(model: nn.Module, leaves: Sequence[Leaf]) -> list[type | str]:
    """`leaves` as module classes and submodule paths (an instance becomes its path; a string is a submodule path,
    else a class name, `QualName` or `module.QualName`, matched against the classes of the model's submodules)."""
    first_path = {id(m): p for p, m in model.named_modules() if p}  # the name torch.fx knows a module by
    paths = {p: first_path[id(m)] for p, m in model.named_modules(remove_duplicate=False) if p}
    resolved: list[type | str] = []
    for leaf in leaves:
        if isinstance(leaf, type) and issubclass(leaf, nn.Module):
            resolved.append(leaf)
        elif isinstance(leaf, nn.Module):
            if id(leaf) not in first_path:
                raise ValueError(f"leaf_modules holds a {type(leaf).__qualname__} that is not a submodule of "
                                 f"{type(model).__qualname__}")
            resolved.append(first_path[id(leaf)])
        elif isinstance(leaf, str) and leaf:
            resolved.append(paths[leaf] if leaf in paths else _class_named(model, leaf))
        else:
            raise ValueError(f"leaf_modules takes module classes, instances, submodule paths or class names, "
                             f"not {leaf!r}")
    return list(dict.fromkeys(resolved))


def _class_named(model: nn.Module, name: str) -> type:
    classes: dict[type, None] = {}
    for path, m in model.named_modules():
        for cls in type(m).__mro__ if path else ():
            if cls is nn.Module:
                break
            classes[cls] = None
    found = [c for c in classes if name in (class_name(c), c.__qualname__)]
    if not found:
        raise ValueError(f"leaf_modules names {name!r}: {type(model).__qualname__} has no submodule at that path "
                         f"nor of that class")
    if len(found) > 1:
        raise ValueError(f"leaf_modules names {name!r}: several classes have that name "
                         f"({', '.join(class_name(c) for c in found)}); write the one meant in full")
    return found[0]


def leaves_record(model: nn.Module, leaves: Sequence[type | str]) -> list[str]:
    """Resolved leaves as data (`module.QualName`, submodule paths), for converting the model again. A class no
    submodule is an instance of changes nothing and is left out."""
    present = [type(m) for p, m in model.named_modules() if p]
    return [leaf if isinstance(leaf, str) else class_name(leaf)
            for leaf in leaves if isinstance(leaf, str) or any(issubclass(t, leaf) for t in present)]


# ---- tracing ----------------------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    """A tracer that keeps `leaves` (classes or submodule paths) whole and remembers where it failed."""

    def __init__(self, leaves: Sequence[type | str]) -> None:
        super().__init__()
        self.leaf_types = tuple(l for l in leaves if isinstance(l, type))
        self.leaf_paths = {l for l in leaves if isinstance(l, str)}
        self.failed: tuple[str, type] | None = None  # the innermost module whose forward raised

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (super().is_leaf_module(m, module_qualified_name) or isinstance(m, self.leaf_types)
                or module_qualified_name in self.leaf_paths)

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


def capture(model: nn.Module, x: torch.Tensor, leaves: Sequence[type | str]) -> fx.GraphModule:
    """`model`'s forward on one tensor as an fx program, every node's shape recorded (`meta["tensor_meta"]`)."""
    tracer = _Tracer(leaves)
    concrete = _default_arguments(model)
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as e:
        raise ValueError(_trace_error(model, tracer, e)) from e
    _drop_specialised_arguments(graph, model)
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints what it raises
            ShapeProp(gm).propagate(x)
    except Exception as e:  # the user's model on an input it cannot take: theirs to read, in one line
        cause = e.__cause__ or e  # ShapeProp wraps the model's own error
        raise ValueError(f"{type(model).__qualname__} cannot run on inputs shaped {tuple(x.shape[1:])}: "
                         f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from None
    return gm


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
    skip = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)  # the user's line, not ours
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skip)]
    where = f" at `{frames[-1].line}` ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    reason = f"{type(e).__name__}: {e}".strip()
    if tracer.failed is None or tracer.failed[0] == "":
        return (f"cannot trace {type(model).__qualname__} with torch.fx: its own forward failed{where}: {reason}. "
                f"Move that code into a submodule and pass the submodule in leaf_modules, so it is kept whole")
    path, cls = tracer.failed
    return (f"cannot trace {type(model).__qualname__} with torch.fx: submodule {path!r} ({cls.__qualname__}) "
            f"failed{where}: {reason}. Pass it in leaf_modules (leaf_modules=[{cls.__qualname__}], or the module "
            f"instance, or its path {path!r}) so that it is kept whole as one operation")
