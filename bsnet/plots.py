"""Every picture bsnet draws (matplotlib, headless).

Each picture has a `*_figure` function that builds a matplotlib `Figure` (what the tests read) and a `plot_*`
function that writes it to a file. Figures are made with `matplotlib.figure.Figure`, not pyplot: drawing keeps no
global state and needs no display. Accuracies come as fractions and are drawn in %.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

    from bsnet.supernet import SuperNetwork


def _save(fig: Figure, path: Path | str) -> None:
    fig.savefig(path, dpi=110)


# ---- cost axes ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostAxis:
    """How one cost is drawn: its axis label, the factor from the cost's own unit to the drawn one, and whether
    ticks get engineering suffixes (k, M, G)."""

    label: str
    scale: float = 1.0
    suffixes: bool = False
    integer: bool = False

    def format(self, axis: Axis) -> None:
        from matplotlib.ticker import EngFormatter, MaxNLocator
        if self.suffixes:
            axis.set_major_formatter(EngFormatter(sep=""))
        if self.integer:
            axis.set_major_locator(MaxNLocator(integer=True))


# The built-in costs (bsnet.costs): FLOPs and parameters are counts, latency is measured in seconds and drawn in
# milliseconds, parallel counts computation steps.
_COST_AXES = {
    "flops": CostAxis("FLOPs", suffixes=True),
    "params": CostAxis("parameters", suffixes=True),
    "latency": CostAxis("latency (ms)", scale=1e3),
    "parallel": CostAxis("parallel (steps)", integer=True),
}


def cost_axis(name: str, unit: str = "") -> CostAxis:
    """The axis of a built-in cost, or of a cost of the user's own named `name` with values in `unit`."""
    if name in _COST_AXES:
        return _COST_AXES[name]
    return CostAxis(f"{name} ({unit})" if unit else name)


def _pct(value: float | None) -> float:
    return math.nan if value is None else 100 * float(value)


def _epoch_axis(ax: Axes, epochs: Sequence[int]) -> None:
    """Whole epochs only, even for one epoch or a panel with nothing to draw."""
    from matplotlib.ticker import MaxNLocator
    ax.set_xlabel("epoch")
    if epochs:
        ax.set_xlim(min(epochs) - 0.3, max(epochs) + 0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


# ---- search.png ---------------------------------------------------------------------------------------------
def search_figure(metrics: Sequence[Mapping[str, Any]], budgets: Mapping[str, float], *,
                  units: Mapping[str, str] | None = None, title: str = "") -> Figure:
    """Accuracy and each budgeted cost against the search's epochs (one record of metrics.jsonl per epoch).

    Args:
        metrics: per-epoch records with `epoch` (from 0), `train_acc`, `val_acc`, `expected_cost` and
            `mode_cost` (dicts by cost name).
        budgets: cost name -> budget, in the cost's own unit; one panel each, the budget dashed.
        units: cost name -> unit, for costs that are not built in.
        title: the figure's title; by default what it shows and over how many epochs.
    """
    from matplotlib.figure import Figure
    units = units or {}
    epochs = [int(m["epoch"]) + 1 for m in metrics]
    fig = Figure(figsize=(4.6 * (1 + len(budgets)), 4.6))
    axes = fig.subplots(1, 1 + len(budgets), squeeze=False)[0]
    ax = axes[0]
    ax.plot(epochs, [_pct(m.get("train_acc")) for m in metrics], marker="o", label="train (sampled architectures)")
    ax.plot(epochs, [_pct(m.get("val_acc")) for m in metrics], marker="o",
            label="validation (most probable architecture)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("accuracy", fontsize=10)
    for ax, (name, limit) in zip(axes[1:], budgets.items()):
        axis = cost_axis(name, units.get(name, ""))
        for key, label in (("expected_cost", "expected (gate probabilities)"),
                           ("mode_cost", "most probable architecture")):
            ax.plot(epochs, [axis.scale * m.get(key, {}).get(name, math.nan) for m in metrics], marker="o",
                    label=label)
        ax.axhline(axis.scale * limit, color="k", ls="--", lw=1, label="budget")
        ax.set_ylabel(axis.label)
        axis.format(ax.yaxis)
        ax.set_ylim(bottom=0)
        ax.set_title(f"cost: {name}", fontsize=10)
    for ax in axes:
        _epoch_axis(ax, epochs)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, frameon=False)  # off the curves
    n = len(epochs)
    fig.suptitle(title or f"search: accuracy and cost per epoch ({n} epoch{'s' if n != 1 else ''})")
    fig.tight_layout()
    return fig


def plot_search(metrics: Sequence[Mapping[str, Any]], budgets: Mapping[str, float], path: Path, *,
                units: Mapping[str, str] | None = None, title: str = "") -> None:
    """Write `search_figure` to `path` (PNG)."""
    _save(search_figure(metrics, budgets, units=units, title=title), path)


# ---- architecture.png ---------------------------------------------------------------------------------------
def _positions(net: SuperNetwork) -> dict[str, tuple[float, float]]:
    """Each node's `pos` from the graph, or (depth from the input, row) for nodes without one; nodes that share a
    position are set a little apart."""
    g = net.graph
    pos, depth = {}, {}
    for n in g.order:
        depth[n] = 1 + max((depth[e.src] for e in g.in_edges(n)), default=-1)
    rows: dict[int, int] = {}
    for n in g.order:
        p = g.node(n).pos
        if p is None:
            rows[depth[n]] = rows.get(depth[n], -1) + 1
            p = (depth[n], rows[depth[n]])
        pos[n] = (float(p[0]), float(p[1]))
    shared: dict[tuple[float, float], list[str]] = {}
    for n, p in pos.items():
        shared.setdefault(p, []).append(n)
    for (x, y), names in shared.items():  # e.g. a fabric's crossing transformations: set side by side
        for i, n in enumerate(names):
            pos[n] = (x + 0.14 * (i - (len(names) - 1) / 2), y)
    return pos


def _label_cnf(net: SuperNetwork, ax: Axes, pos: Mapping[str, tuple[float, float]]) -> None:
    """Layers along x, scales along y (the finest on top), as the fabric's aggregation nodes `A-layer_scale` lie."""
    grid = [pos[n] for n in pos if n.startswith("A-")]
    layers = sorted({int(x) for x, _ in grid})
    scales = sorted({int(y) for _, y in grid})
    out_x, _ = pos[net.graph.output]
    ax.set_xticks(layers + [out_x], [str(x) for x in layers] + ["head"])
    ax.set_xlabel("layer")
    size = net.input_shape[-1]
    ax.set_yticks(scales, [f"{size >> s}×{size >> s}" for s in scales])
    ax.set_ylabel("scale (resolution)")
    ax.invert_yaxis()
    ax.tick_params(length=0)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.annotate("input", pos[net.graph.input], textcoords="offset points", xytext=(-6, 8), ha="right", fontsize=8)


def _label_resnet_fabric(net: SuperNetwork, ax: Axes, pos: Mapping[str, tuple[float, float]]) -> None:
    """Stages and their blocks along x; rows of skips `S`, sums `A`, basic blocks `B` and shortcut blocks `X`."""
    blocks: dict[int, dict[int, float]] = {}  # stage -> block -> x
    for n, (x, _) in pos.items():
        if n.startswith("B-"):
            b, k = (int(v) for v in n[2:].split("_"))
            blocks.setdefault(b, {})[k] = x
    xs = [x for stage in blocks.values() for x in stage.values()]
    ax.set_xticks(xs, [str(k) for stage in blocks.values() for k in stage])
    ax.set_xlabel("block within its stage")
    rows = {-1: "skip (S)", 0: "sum (A)", 1: "block (B)"}
    shortcuts = sorted({int(y) for n, (_, y) in pos.items() if n.startswith("X-")})
    rows.update({y: f"shortcut {y - 2} (X)" if len(shortcuts) > 1 else "shortcut (X)" for y in shortcuts})
    ax.set_yticks(sorted(rows), [rows[y] for y in sorted(rows)])
    top = max(y for _, y in pos.values())
    channels, size = net.config.get("channels"), net.input_shape[-1]
    for b, stage in blocks.items():
        lo, hi = min(stage.values()), max(stage.values())
        text = f"stage {b}"
        if channels and b < len(channels):
            side = size >> b
            text += f"\n{channels[b]} channels, {side}×{side}"
        ax.text((lo + hi) / 2, top + 0.6, text, ha="center", va="bottom", fontsize=9)
        if b > 0:
            ax.axvline(lo - 1.25, color="0.85", ls=":", lw=1, zorder=0)  # between the last sum and `I-b`
    ax.set_ylim(-1.6, top + 1.6)
    ax.tick_params(length=0)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    for n in (net.graph.input, net.graph.output):
        ax.annotate(n, pos[n], textcoords="offset points", xytext=(0, -12), ha="center", fontsize=8)


def _label_nodes(net: SuperNetwork, ax: Axes, pos: Mapping[str, tuple[float, float]]) -> None:
    """A graph of unknown layout: every node named (only the input and output past 120 nodes)."""
    names = list(pos) if len(pos) <= 120 else [net.graph.input, net.graph.output]
    for n in names:
        ax.annotate(n, pos[n], textcoords="offset points", xytext=(4, 5), fontsize=7)
    ax.set_axis_off()


# Registered super networks whose node names and positions carry a layout that the axes can name.
_LABELLERS = {"cnf": _label_cnf, "resnet_fabric": _label_resnet_fabric}


def architecture_figure(net: SuperNetwork, mask: torch.Tensor, probs: torch.Tensor, title: str = "") -> Figure:
    """The super network with one architecture in it, and every gate's probability as its edge's colour.

    An edge is kept if it is fixed or its gate is 1 in `mask`; a node is live when kept edges connect it to both the
    input and the output (only live nodes are computed). Live edges (kept, between live nodes) are drawn strong; a
    kept gated edge that is dead is dashed; a dropped one is faint. Live nodes are filled, dead ones hollow.
    """
    from matplotlib import cm, colors
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    g = net.graph
    mask = torch.as_tensor(mask).detach().cpu()
    probs = torch.as_tensor(probs).detach().cpu()
    pos = _positions(net)
    live = dict(zip(g.order, g.live(mask).tolist()))
    live_edges = g.live_edges(mask).tolist()
    cmap, norm = cm.viridis, colors.Normalize(0, 1)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    width, height = 3 + 0.9 * (max(xs) - min(xs) + 1), 3.5 + 0.8 * (max(ys) - min(ys) + 1)
    fig = Figure(figsize=(min(18, max(8, width)), min(12, max(5, height))))
    ax = fig.subplots()
    seen = set()
    for e, on in zip(g.edges, live_edges):
        (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
        if e.gate is None:
            kind = "fixed" if on else "fixed dead"
            style = {"color": "black", "lw": 1.2} if on else {"color": "0.8", "lw": 0.6}
        else:
            colour = cmap(norm(float(probs[e.gate])))
            if on:
                kind, style = "live", {"color": colour, "lw": 3.0}
            elif float(mask[e.gate]) > 0.5:
                kind, style = "kept dead", {"color": colour, "lw": 1.0, "ls": (0, (3, 2))}
            else:
                kind, style = "dropped", {"color": colour, "lw": 0.8, "alpha": 0.35}
        seen.add(kind)
        ax.plot([x0, x1], [y0, y1], zorder=2 if e.gate is not None and on else 1, **style)
    on_nodes = [pos[n] for n in g.order if live[n]]
    off_nodes = [pos[n] for n in g.order if not live[n]]
    if on_nodes:
        ax.scatter(*zip(*on_nodes), s=30, color="black", zorder=3)
    if off_nodes:
        ax.scatter(*zip(*off_nodes), s=22, facecolors="white", edgecolors="0.45", linewidths=0.8, zorder=3)
    labeller = _LABELLERS.get(net.name or "", _label_nodes)
    try:
        labeller(net, ax, pos)
    except (ValueError, KeyError, IndexError):  # a graph named like a fabric but laid out otherwise
        _label_nodes(net, ax, pos)
    mid = cmap(norm(0.75))
    handles = {
        "fixed": Line2D([], [], color="black", lw=1.2, label="fixed edge (always kept), live"),
        "fixed dead": Line2D([], [], color="0.8", lw=0.6, label="fixed edge, dead"),
        "live": Line2D([], [], color=mid, lw=3.0, label="gated edge kept: in the architecture"),
        "kept dead": Line2D([], [], color=mid, lw=1.0, ls=(0, (3, 2)),
                            label="gated edge kept but dead (no input→output path)"),
        "dropped": Line2D([], [], color=mid, lw=0.8, alpha=0.35, label="gated edge dropped"),
    }
    legend = [h for k, h in handles.items() if k in seen]
    legend += [Line2D([], [], ls="", marker="o", color="black", label="live node (computed)"),
               Line2D([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="0.45",
                      label="dead node (not computed)")]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=8, frameon=False)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="gate probability (edge colour)",
                 shrink=0.8)
    kept = int((mask > 0.5).sum())
    ax.set_title(title or f"{net.name or 'super network'}: architecture with {kept} of {g.num_gates} gates kept, "
                 f"{len(on_nodes)} of {len(pos)} nodes live", fontsize=10)
    fig.tight_layout()
    return fig


def plot_architecture(net: SuperNetwork, mask: torch.Tensor, probs: torch.Tensor, path: Path,
                      title: str = "") -> None:
    """Write `architecture_figure` to `path` (PNG)."""
    _save(architecture_figure(net, mask, probs, title), path)


# ---- pareto.png ---------------------------------------------------------------------------------------------
def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the non-dominated runs, cheapest first: no other run costs at most as much and is at least as
    accurate, better in one of the two (of equal runs, the first)."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accuracies[i], i))
    front, best = [], -math.inf
    for i in order:
        if accuracies[i] > best:
            front.append(i)
            best = accuracies[i]
    return front


def pareto_figure(costs: Sequence[float], accuracies: Sequence[float], labels: Sequence[str], cost_name: str, *,
                  unit: str = "", title: str = "") -> Figure:
    """Test accuracy (fractions, drawn in %) against one cost, one point per run labelled by its budget, and the
    Pareto front: the non-dominated runs, joined."""
    from matplotlib.figure import Figure
    axis = cost_axis(cost_name, unit)
    x = [axis.scale * c for c in costs]
    y = [_pct(a) for a in accuracies]
    front = pareto_front(costs, accuracies)
    fig = Figure(figsize=(5.6, 4.2))
    ax = fig.subplots()
    off = [i for i in range(len(x)) if i not in front]
    if off:
        ax.scatter([x[i] for i in off], [y[i] for i in off], color="0.6", zorder=2, label="dominated run")
    ax.plot([x[i] for i in front], [y[i] for i in front], "o-", color="black", lw=1.2, zorder=3,
            label="Pareto front (non-dominated runs)")
    for xi, yi, label in zip(x, y, labels):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(axis.label)
    axis.format(ax.xaxis)
    ax.set_ylabel("test accuracy (%)")
    ax.margins(0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or f"test accuracy against {axis.label}, {len(x)} run{'s' if len(x) != 1 else ''} "
                 "(labels: budgets)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_pareto(costs: Sequence[float], accuracies: Sequence[float], labels: Sequence[str], cost_name: str,
                path: Path, *, unit: str = "", title: str = "") -> None:
    """Write `pareto_figure` to `path` (PNG)."""
    _save(pareto_figure(costs, accuracies, labels, cost_name, unit=unit, title=title), path)
