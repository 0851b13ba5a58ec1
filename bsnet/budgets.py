"""Budgets: a cost and the value its found architecture must not exceed, absolute or relative."""
from __future__ import annotations

import importlib
import inspect
import math
import re
import warnings
from dataclasses import dataclass
from typing import Sequence

from bsnet.costs import Cost, FunctionCost, create_cost, list_costs

_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_CODE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")  # package.module:name
_NUMBER = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|[kKMGT]|s|ms|us|µs|ns)?\s*$")


@dataclass
class Budget:
    """`cost(H) <= value` for the found architecture H. `relative`: value is a fraction of the full network's."""

    cost: Cost
    value: float
    relative: bool = False

    def __str__(self) -> str:
        v = f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"
        return f"{self.cost.name}<={v}"


class BudgetWarning(UserWarning):
    """A budget that is legal but almost certainly a mistake: the full network already meets it."""


def parse_value(text: str) -> tuple[float, bool]:
    """`'30%'` -> (0.3, True); `'25M'` -> (2.5e7, False); `'3ms'` -> (0.003, False); `'2.5e7'` -> (2.5e7, False)."""
    m = _NUMBER.match(text)
    if not m:
        raise ValueError(f"cannot read budget value {text!r} (examples: 30%, 2.5e7, 25M, 1.2G, 3ms)")
    value = float(m.group(1))
    if not math.isfinite(value):
        raise ValueError(f"budget value {text!r} is not a finite number")
    suffix = m.group(2) or ""
    if suffix == "%":
        return value / 100.0, True
    return value * _SUFFIX[suffix], False


def load_object(spec: str) -> object:
    """Import `package.module:name`, for the user's own costs and models (named by the user, never a run)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not of the form package.module:name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name!r}: {e}") from None
    except Exception as e:  # the user's own module failed as it ran: theirs to read, in one line
        raise ValueError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None


def make_cost(name: str, *, parallel_workers: int | None = None, latency_table: str | None = None,
              device: str = "cpu") -> Cost:
    """A cost by name: a registered one (`list_costs()`: flops, params, parallel, latency, ...) or a user's
    `package.module:name` (a `Cost` class or instance, or a function of `(net, live)`)."""
    if ":" in name:
        obj = load_object(name)
        if inspect.isclass(obj) and issubclass(obj, Cost):
            obj = obj()
        if isinstance(obj, Cost):
            return obj
        if callable(obj):
            return FunctionCost(obj, name=name.partition(":")[2])
        raise ValueError(f"{name} is neither a bsnet Cost nor a function of (net, live)")
    if name not in list_costs():
        raise ValueError(f"unknown cost {name!r} (known: {', '.join(list_costs())}, or package.module:name)")
    return create_cost(name, parallel_workers=parallel_workers, latency_table=latency_table, device=device)


def check_budget(text: str) -> str:
    """The cost a budget names, the budget's form and value checked (a positive, finite number), nothing
    imported: a registered cost, or a `package.module:name` of the user's, imported only when the budget is made."""
    name, sep, value = text.rpartition("=")
    name = name.strip() if sep else "flops"
    if not name:
        raise ValueError(f"budget {text!r} names no cost before '=' (e.g. params=1.2M, or 30% for FLOPs)")
    value_f, _ = parse_value(value if sep else text)
    if value_f <= 0:
        raise ValueError(f"budget {text!r} must be positive")
    if ":" in name:
        if not _CODE.fullmatch(name):
            raise ValueError(f"budget {text!r}: a cost of your own is named package.module:name")
    elif name not in list_costs():
        raise ValueError(f"unknown cost {name!r} (known: {', '.join(list_costs())}, or package.module:name)")
    return name


def parse_budget(text: str, **cost_options) -> Budget:
    """`'30%'` (FLOPs), `'params=1.2M'`, `'latency=3ms'`, `'mypkg.costs:energy=2e-3'`."""
    name = check_budget(text)
    value_f, relative = parse_value(text.rpartition("=")[2])
    return Budget(make_cost(name, **cost_options), value_f, relative)


def budget_limits(budgets: Sequence[Budget], full_costs: Sequence[float]) -> list[float]:
    """Each budget's limit in its cost's units, given the full network's costs. A budget the full network already
    meets (above 100%, or an absolute value above the full network's cost) constrains nothing: legal, but almost
    certainly a mistake, so it is a `BudgetWarning`."""
    limits = []
    for b, full in zip(budgets, full_costs):
        limit = b.value * full if b.relative else b.value
        if b.relative and b.value > 1:
            warnings.warn(f"budget {b} is above 100% of the full network: it constrains nothing", BudgetWarning,
                          stacklevel=3)
        elif not b.relative and limit > full:
            unit = f" {b.cost.unit}" if b.cost.unit else ""
            warnings.warn(f"budget {b} is above the full network's {b.cost.name} ({full:.4g}{unit}): it constrains "
                          "nothing", BudgetWarning, stacklevel=3)
        limits.append(limit)
    return limits
