"""What a super network takes: one batch-first tensor, or a dict of named batch-first tensors (token ids and an
attention mask, for a text model), and the few things the engine does with either (move, split, count, make)."""
from __future__ import annotations

from typing import Mapping, Union

import torch

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]
# One example's inputs as data: name -> (dtype name, shape without the batch dimension).
InputSpec = dict[str, tuple[str, tuple[int, ...]]]


def batch_size(inputs: Inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    return next(iter(inputs.values())).shape[0]


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    return {k: v.to(device) for k, v in inputs.items()}


def available_device(device: torch.device | str) -> torch.device:
    """`device` as a `torch.device`, checked on this machine: a CUDA device that is not here is one clear error at the
    start, not a failure deep in the first batch.

    Raises:
        ValueError: not a device name, CUDA where it is not available, or a CUDA index this machine does not have.
    """
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"not a device: {device!r} (cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def split(inputs: Inputs, k: int) -> list[Inputs]:
    """`torch.tensor_split` into k consecutive slices of the batch; every tensor of a dict alike."""
    if isinstance(inputs, torch.Tensor):
        return list(torch.tensor_split(inputs, k))
    parts = {name: torch.tensor_split(v, k) for name, v in inputs.items()}
    return [{name: p[i] for name, p in parts.items()} for i in range(k)]


def spec_of(inputs: Mapping[str, torch.Tensor]) -> InputSpec:
    return {name: (str(v.dtype).removeprefix("torch."), tuple(int(s) for s in v.shape[1:]))
            for name, v in inputs.items()}


def zeros(spec: InputSpec | None, shape: tuple[int, ...], batch: int = 1,
          device: torch.device | str = "cpu") -> Inputs:
    """Inputs of `batch` examples for measuring a network: zeros of the input shape, or of every named input's
    dtype and shape (token id 0 exists in every vocabulary)."""
    if spec is None:
        return torch.zeros(batch, *shape, device=device)
    return {name: torch.zeros(batch, *s, dtype=getattr(torch, dtype), device=device)
            for name, (dtype, s) in spec.items()}


def random(spec: InputSpec | None, shape: tuple[int, ...], batch: int = 1) -> Inputs:
    """Random inputs to tell networks apart: normal floats, integers 0 and 1 (valid token ids and mask values)."""
    if spec is None:
        return torch.randn(batch, *shape)
    return {n: torch.randn(batch, *s) if getattr(torch, d).is_floating_point else
            torch.randint(0, 2, (batch, *s), dtype=getattr(torch, d)) for n, (d, s) in spec.items()}


def check_spec(value: object) -> InputSpec:
    """A recorded input specification, validated as data (from a config or an architecture file)."""
    if not isinstance(value, dict) or not value:
        raise ValueError("inputs must map input names to [dtype, shape]")
    spec: InputSpec = {}
    for name, entry in value.items():
        ok = isinstance(name, str) and name.isidentifier() and isinstance(entry, (list, tuple)) and len(entry) == 2
        dtype, shape = entry if ok else (None, None)
        ok = ok and isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype)
        ok = ok and isinstance(shape, (list, tuple)) and all(isinstance(s, int) and s >= 1 for s in shape)
        if not ok:
            raise ValueError(f"inputs: {name!r} must be [a torch dtype name, a list of positive sizes]")
        spec[name] = (dtype, tuple(shape))
    return spec
