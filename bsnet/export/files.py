"""Writing a loaded found network to a file in one of the export formats."""
from __future__ import annotations

from pathlib import Path

import torch

from bsnet.architecture import Architecture
from bsnet.export.onnx import export_onnx
from bsnet.export.pt import save_weights
from bsnet.export.python_source import export_python

FORMATS = {"pt": ".safetensors", "onnx": ".onnx", "python": ".py"}


def export_file(module: torch.fx.GraphModule, arch: Architecture, fmt: str, out: Path,
                input_shape: tuple[int, ...] | None = None) -> Path:
    """Write `module` (a loaded found network) as `fmt` to the file `out`: `pt` (safetensors, with the
    architecture beside it), `onnx` (for inputs of `input_shape`, checked once with ONNX Runtime) or `python`
    (source and its weights)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    if out.is_dir():
        raise ValueError(f"{out} is a directory: name the file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pt":
        save_weights(module, arch, out)
        arch.to_json(out.with_name(out.stem + ".architecture.json"))
    elif fmt == "onnx":
        if input_shape is None:
            raise ValueError("the onnx format needs the network's input shape")
        export_onnx(module, input_shape, out)
    else:
        export_python(module, arch, out)
    return out
