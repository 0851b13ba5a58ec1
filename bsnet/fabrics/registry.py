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
    return config_cls(**{k: _of_field_type(config_cls, k, v, name) for k, v in cfg.items()})


def _of_field_type(config_cls: type, key: str, value: Any, name: str) -> Any:
    """`value` checked against the type of the field's default (an int, a list of ints, ...), converted where
    lossless (2.0 -> 2, a tuple -> a list): a wrong type fails here, in one line, not deep inside the builder."""
    f = next(f for f in dataclasses.fields(config_cls) if f.name == key)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if default is dataclasses.MISSING or default is None:
        return value

    def convert(v: Any, like: Any) -> Any:
        if isinstance(like, bool) or isinstance(v, bool):
            return v if isinstance(v, bool) and isinstance(like, bool) else None
        if isinstance(like, int):
            return int(v) if isinstance(v, (int, float)) and float(v).is_integer() else None
        if isinstance(like, float):
            return float(v) if isinstance(v, (int, float)) else None
        if isinstance(like, list):
            items = [convert(x, like[0]) if like else x for x in v] if isinstance(v, (list, tuple)) else None
            return None if items is None or any(x is None for x in items) else items
        return v if isinstance(v, type(like)) else None

    out = convert(value, default)
    if out is None:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
            type(default), f"a list like {default}" if isinstance(default, list) else type(default).__name__)
        raise ValueError(f"{name} setting {key} must be {kind}, got {value!r}")
    return out


def create_supernet(name: str, **cfg: Any) -> SuperNetwork:
    """Build the registered super network `name` with its config's fields overridden by `cfg`."""
    config = supernet_config(name, **cfg)
    net = _REGISTRY[name][1](config)
    net.name = name
    net.config = dataclasses.asdict(config)
    return net
