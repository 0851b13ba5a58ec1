"""A tiny registry of super networks: `@register_supernet` fills it, `create_supernet(name, **cfg)` builds."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from bsnet.supernet import SuperNetwork

_REGISTRY: dict[str, tuple[type, Callable[[Any], SuperNetwork]]] = {}


def register_supernet(name: str, config_cls: type) -> Callable:
    """Register `fn(config) -> SuperNetwork` under `name`, configured by the dataclass `config_cls`."""

    def wrap(fn: Callable[[Any], SuperNetwork]) -> Callable[[Any], SuperNetwork]:
        _REGISTRY[name] = (config_cls, fn)
        return fn

    return wrap


def list_supernets() -> list[str]:
    return sorted(_REGISTRY)


def supernet_config(name: str, **cfg: Any) -> Any:
    """The config dataclass of `name` filled with `cfg` (unknown keys are a ValueError)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown super network {name!r} (known: {', '.join(list_supernets())})")
    config_cls = _REGISTRY[name][0]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"unknown {name} setting(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    return config_cls(**cfg)


def create_supernet(name: str, **cfg: Any) -> SuperNetwork:
    """Build the registered super network `name` with its config's fields overridden by `cfg`."""
    config = supernet_config(name, **cfg)
    net = _REGISTRY[name][1](config)
    net.name = name
    net.config = dataclasses.asdict(config)
    return net
