"""The `onnx` format: `torch.onnx.export` with a dynamic batch size, checked once with ONNX Runtime."""
from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from bsnet.inputs import InputSpec, random


def export_onnx(module: torch.nn.Module, input_shape: tuple[int, ...], path: str | Path, *,
                check: bool = True, atol: float = 1e-4, input_spec: InputSpec | None = None) -> Path:
    """`module` as an ONNX file whose batch axis is symbolic: one input named `input`, or for a network of several
    inputs (`input_spec`, bsnet.inputs) one per input, by name."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ValueError("ONNX export needs the onnx extra: pip install 'bsnet[onnx]'") from None
    path = Path(path)
    module = module.eval()
    x = random(input_spec, input_shape, 2)
    batch = torch.export.Dim("batch")
    names = ["input"] if input_spec is None else list(input_spec)
    dynamic = {0: batch} if input_spec is None else {n: {0: batch} for n in names}
    # The torch.export-based exporter (PyTorch's default since 2.9), the batch axis symbolic.
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # torchvision-op notices
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        # A dict as the last positional argument would be read as keyword arguments: pass it by name.
        first = next(iter(inspect.signature(module.forward).parameters))
        args, kwargs = ((x,), None) if input_spec is None else ((), {first: x})
        with warnings.catch_warnings():  # the exporter's own deprecation notices are not the user's to act on
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(module, args, str(path), kwargs=kwargs, input_names=names, output_names=["output"],
                              dynamic_shapes=(dynamic,) if input_spec is None else {first: dynamic}, dynamo=True,
                              verbose=False)
        if check:
            _check(module, input_shape, input_spec, path, atol)
    except Exception as e:  # no half-checked file is left behind
        path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"ONNX export failed: {type(e).__name__}: {first}") from None
    finally:
        quiet.setLevel(level)
    return path


def _check(module: torch.nn.Module, input_shape: tuple[int, ...], spec: InputSpec | None, path: Path,
           atol: float) -> None:
    """ONNX Runtime must agree with PyTorch, at batch sizes other than the traced one (the axis is dynamic)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        xb = random(spec, input_shape, batch)
        feed = {"input": xb.numpy()} if spec is None else {n: v.numpy() for n, v in xb.items()}
        got = sess.run(None, feed)[0]
        with torch.no_grad():
            want = module(xb).numpy()
        if got.shape != want.shape or not np.allclose(got, want, atol=atol):
            raise RuntimeError(f"ONNX Runtime disagrees with PyTorch on the exported network "
                               f"(max abs difference {np.abs(got - want).max():.3g})")
