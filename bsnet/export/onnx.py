"""The `onnx` format: `torch.onnx.export` with a dynamic batch size, checked once with ONNX Runtime."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch


def export_onnx(module: torch.nn.Module, input_shape: tuple[int, ...], path: str | Path, *,
                check: bool = True, atol: float = 1e-4) -> Path:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ValueError("ONNX export needs the onnx extra: pip install 'bsnet[onnx]'") from None
    path = Path(path)
    module = module.eval()
    x = torch.randn(2, *input_shape)
    # The torch.export-based exporter (PyTorch's default since 2.9), the batch axis symbolic.
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # torchvision-op notices
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
        if check:
            _check(module, input_shape, path, atol)
    except Exception as e:  # no half-checked file is left behind
        path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"ONNX export failed: {type(e).__name__}: {first}") from None
    finally:
        quiet.setLevel(level)
    return path


def _check(module: torch.nn.Module, input_shape: tuple[int, ...], path: Path, atol: float) -> None:
    """ONNX Runtime must agree with PyTorch, at batch sizes other than the traced one (the axis is dynamic)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        xb = torch.randn(batch, *input_shape)
        got = sess.run(None, {"input": xb.numpy()})[0]
        with torch.no_grad():
            want = module(xb).numpy()
        if got.shape != want.shape or not np.allclose(got, want, atol=atol):
            raise RuntimeError(f"ONNX Runtime disagrees with PyTorch on the exported network "
                               f"(max abs difference {np.abs(got - want).max():.3g})")
