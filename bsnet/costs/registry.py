"""A tiny registry of costs: `@register_cost(name)` fills it, `create_cost(name, **options)` builds."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence, TypeVar

import torch

from bsnet.costs.base import Cost
from bsnet.supernet import SuperNetwork

F = TypeVar("F", bound=Callable[..., Cost])

_REGISTRY: dict[str, Callable[..., Cost]] = {}


def register_cost(name: str) -> Callable[[F], F]:
    """Register a `Cost` class or a factory returning one under `name` (the name budgets use: `name=30%`).

    The factory's keyword parameters are the options it reads (`parallel_workers`, `latency_table`, `device`, or
    the user's own); a class without parameters needs none.
    """

    def wrap(factory: F) -> F:
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_costs() -> list[str]:
    return sorted(_REGISTRY)


def create_cost(name: str, **options: Any) -> Cost:
    """Build the registered cost `name`. Each cost gets only the options its factory names, so one set of settings
    (the command line's) can be passed to every cost."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown cost {name!r} (known: {', '.join(list_costs())})")
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        options = {k: v for k, v in options.items() if k in names}
    return factory(**options)


def all_costs(net: SuperNetwork, mask: torch.Tensor, extra: Sequence[Cost] = (),
              parallel_workers: int | None = None) -> dict[str, float]:
    """FLOPs, parameters and parallel steps of one architecture, and any other cost given, keyed by cost name.

    Latency is left out unless given in `extra`: it needs a table or a measurement.
    """
    costs = {name: create_cost(name, parallel_workers=parallel_workers) for name in ("flops", "params", "parallel")}
    for c in extra:
        costs[c.name] = c
    return {name: float(c(net, mask)) for name, c in costs.items()}
