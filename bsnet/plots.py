"""Every picture bsnet draws (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_search(metrics: Sequence[dict[str, Any]], budgets: dict[str, float], path: Path) -> None:
    """Accuracy and cost against epochs, each budget drawn as a dashed line."""
    plt = _plt()
    epochs = [m["epoch"] + 1 for m in metrics]
    fig, axes = plt.subplots(1, 1 + len(budgets), figsize=(4.5 * (1 + len(budgets)), 3.6), squeeze=False)
    ax = axes[0, 0]
    ax.plot(epochs, [m["train_acc"] for m in metrics], label="train (sampled)")
    ax.plot(epochs, [m["val_acc"] for m in metrics], label="validation (most probable)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    for ax, (name, limit) in zip(axes[0, 1:], budgets.items()):
        ax.plot(epochs, [m["expected_cost"][name] for m in metrics], label="expected")
        ax.plot(epochs, [m["mode_cost"][name] for m in metrics], label="most probable")
        ax.axhline(limit, color="k", ls="--", lw=1, label="budget")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _positions(net) -> dict[str, tuple[float, float]]:
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
    return pos


def plot_architecture(net, mask: torch.Tensor, probs: torch.Tensor, path: Path, title: str = "") -> None:
    """The super network's layout: kept edges strong, dropped ones faint, gate probabilities as colours."""
    plt = _plt()
    from matplotlib import cm, colors
    g = net.graph
    pos = _positions(net)
    live = dict(zip(g.order, g.live(mask).tolist()))
    live_edges = g.live_edges(mask).tolist()
    cmap, norm = cm.viridis, colors.Normalize(0, 1)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    width, height = 2 + 0.9 * (max(xs) - min(xs) + 1), 2 + 0.8 * (max(ys) - min(ys) + 1)
    fig, ax = plt.subplots(figsize=(min(16, width), min(10, height)))
    for e, on in zip(g.edges, live_edges):
        (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
        if e.gate is None:
            ax.plot([x0, x1], [y0, y1], color="0.2" if on else "0.85", lw=1.2 if on else 0.5, zorder=1)
        else:
            p = float(probs[e.gate])
            ax.plot([x0, x1], [y0, y1], color=cmap(norm(p)), lw=3.0 if on else 0.8, alpha=1.0 if on else 0.35, zorder=2)
    for n, (x, y) in pos.items():
        ax.scatter([x], [y], s=28 if live[n] else 10, color="black" if live[n] else "0.75", zorder=3)
    for n in (g.input, g.output):
        ax.annotate(n, pos[n], textcoords="offset points", xytext=(4, 6), fontsize=8)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="gate probability")
    ax.set_title(title or "found architecture (strong: kept, faint: dropped)", fontsize=10)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(costs: Sequence[float], accuracies: Sequence[float], labels: Sequence[str], cost_name: str,
                path: Path) -> None:
    """Accuracy against cost, one point per run, the Pareto front joined."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.scatter(costs, accuracies, zorder=3)
    for c, a, label in zip(costs, accuracies, labels):
        ax.annotate(label, (c, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front, best = [], -1.0
    for c, a in sorted(zip(costs, accuracies)):
        if a > best:
            front.append((c, a))
            best = a
    ax.plot([c for c, _ in front], [a for _, a in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel(cost_name)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
