"""The tables and lines the command line prints (rich): a search's summary, `bsnet show`, `bsnet eval`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bsnet.architecture import Architecture


def _fmt_cost(cost: str, value: float) -> str:
    """A cost's value as the tables print it: latency in ms, the others with k/M/G."""
    return _fmt(value, "s" if cost == "latency" else "")


def _fmt(value: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    if unit == "s":
        return f"{value * 1e3:.3g}ms"
    return f"{value:.4g}"


def _gates(names: list[str], most: int | None = None) -> str:
    """Gate names as a list line, the first `most` of them where given."""
    shown = names if most is None else names[:most]
    return ", ".join(shown) + (" ..." if len(shown) < len(names) else "")


def _budget(arch: Architecture, cost: str) -> str:
    """A budget's cell: `<= value`, or `> full` where the full network already meets it (a budget such as
    params=1e99 constrains nothing, and would print as `<= 1e+90G`)."""
    if cost not in arch.budget:
        return ""
    full = arch.full_cost.get(cost)
    if full is not None and arch.budget[cost] > full:
        return "> full"
    return "<= " + _fmt_cost(cost, arch.budget[cost])


def print_summary(arch: Architecture, run_dir: Path) -> None:
    """The found architecture against its budgets and the full super network, in 80 columns."""
    from rich.console import Console
    from rich.table import Table
    m = arch.metrics
    segmentation = "test_miou" in m
    t = Table(title=f"bsnet search: {arch.supernet or 'your model'}",
              caption="search weights: before fine-tuning, BatchNorm recalibrated")
    t.add_column("", no_wrap=True)
    t.add_column("pixel acc." if segmentation else "test acc.", justify="right", no_wrap=True)
    if segmentation:
        t.add_column("mean IoU", justify="right", no_wrap=True)
    for name in arch.cost:
        t.add_column(name, justify="right", no_wrap=True)
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    miou = lambda key: [pct(m.get(key))] if segmentation else []  # noqa: E731
    blank = [""] if segmentation else []
    found = "found" + (" (projected)" if arch.projected else "")
    t.add_row(found, pct(m["test_acc"]), *miou("test_miou"), *[_fmt_cost(k, v) for k, v in arch.cost.items()])
    t.add_row("  search weights", pct(m["test_acc_search_weights"]), *blank, *["" for _ in arch.cost])
    t.add_row("budget", "", *blank,
              *[_budget(arch, k) for k in arch.cost])
    t.add_row("full network", pct(m["full_test_acc"]), *miou("full_test_miou"),
              *[_fmt_cost(k, v) for k, v in arch.full_cost.items()])
    t.add_row("found / full", "", *blank,
              *[f"{100 * arch.cost[k] / v:.1f}%" if v else "" for k, v in arch.full_cost.items()])
    Console().print(t)
    if "selection" in m:
        print(_selection_line(m))
    if arch.projected:
        print(f"projected onto the budget: dropped {len(arch.dropped)} gate(s): {_gates(arch.dropped, 8)}")
    if arch.added or arch.exchanged:
        print(f"filled to the budget: added {len(arch.added)} gate(s): {_gates(arch.added, 8)}"
              + (f"; took out {len(arch.exchanged)}: {_gates(arch.exchanged, 8)}" if arch.exchanged else ""))
    print(f"run directory: {run_dir}")


def _selection_line(m: dict[str, Any]) -> str:
    vals = ", ".join(f"{100 * c['val_acc']:.2f}%" for c in m["selection"])
    pick = "the found architecture" if m["selected"] == 0 else f"sample {m['selected']} of the gates"
    return f"chosen on validation among {len(m['selection'])} candidates ({vals}): {pick}"


def eval_table(report: dict[str, Any], arch: Architecture, which: str, task: str) -> Any:
    """What `bsnet eval` measured on the exported network, beside what architecture.json says."""
    from rich.table import Table
    t = Table(title=f"bsnet eval: the exported network, {which} weights")
    t.add_column("measure", no_wrap=True)
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("architecture.json", justify="right")
    label = "pixel accuracy" if task == "segmentation" else "test accuracy"
    t.add_row(label, f"{100 * report['test_acc']:.2f}%", "")
    if "test_miou" in report:
        t.add_row("mean IoU", f"{100 * report['test_miou']:.2f}%", "")
    t.add_row("FLOPs (FlopCounterMode)", _fmt(report["flops"]), _fmt(arch.cost.get("flops", 0)))
    t.add_row("parameters", _fmt(report["params"]), _fmt(arch.cost.get("params", 0)))
    t.add_row(f"latency, batch {report['latency_batch_size']}", f"{report['latency'] * 1e3:.3g}ms",
              f"{report['latency_per_node_estimate'] * 1e3:.3g}ms (sum of nodes)")
    t.add_row("parallel steps", f"{report['parallel']:g}", f"{arch.cost.get('parallel', 0):g}")
    return t


def show_lines(arch: Architecture) -> list[Any]:
    """`bsnet show`: the costs against the budgets and the full network, the accuracies, the kept gates."""
    from rich.table import Table
    t = Table(title=f"{arch.supernet or 'custom super network'}: {len(arch.kept)} of {len(arch.gates)} gates kept"
                    + (" (projected onto the budget)" if arch.projected else ""))
    for col in ("cost", "found", "budget", "full network", "found / full"):
        t.add_column(col, justify="right" if col != "cost" else "left")
    for k, v in arch.cost.items():
        full = arch.full_cost.get(k, 0)
        t.add_row(k, _fmt_cost(k, v), _budget(arch, k),
                  _fmt_cost(k, full), f"{100 * v / full:.1f}%" if full else "")
    lines: list[Any] = [t]
    m = arch.metrics
    if all(m.get(k) is not None for k in ("test_acc", "test_acc_search_weights", "full_test_acc")):
        lines.append(f"test accuracy {100 * m['test_acc']:.2f}% (search weights "
                     f"{100 * m['test_acc_search_weights']:.2f}%, full super network {100 * m['full_test_acc']:.2f}%)")
    if "selection" in m:
        lines.append(_selection_line(m))
    if arch.projected:
        lines.append(f"projected: dropped {_gates(arch.dropped)}")
    if arch.added or arch.exchanged:
        lines.append(f"filled to the budget: added {_gates(arch.added)}"
                     + (f"; took out {_gates(arch.exchanged)}" if arch.exchanged else ""))
    if arch.widths:
        lines.append("kept widths: " + ", ".join(f"{n} {k}/{a} ch" for n, (k, a) in arch.widths.items()))
    lines.append("kept gates: " + ", ".join(arch.kept))
    return lines
