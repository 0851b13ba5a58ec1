"""The pictures bsnet draws: what they say (titles, axes, legends, the Pareto front), not only that a file appears."""
import pytest
import torch
from torch import nn

import bsnet
from bsnet.graph import Graph
from bsnet.plots import (
    architecture_figure,
    pareto_figure,
    pareto_front,
    plot_architecture,
    plot_pareto,
    plot_search,
    search_figure,
)
from bsnet.supernet import SuperNetwork

METRICS = [{"epoch": e, "train_acc": 0.3 + 0.1 * e, "val_acc": 0.35 + 0.1 * e,
            "expected_cost": {"flops": 4e8 - 1e8 * e, "latency": 0.004 - 0.001 * e},
            "mode_cost": {"flops": 1.2e8, "latency": 0.0015}} for e in range(3)]
BUDGETS = {"flops": 1.3e8, "latency": 0.002}


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def line(ax, label: str):
    return next(l for l in ax.get_lines() if l.get_label() == label)


def tick_labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def some_dead(net: SuperNetwork, seed: int = 0) -> torch.Tensor:
    """A connected random architecture that leaves some nodes dead."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        mask = (torch.rand(net.num_gates, generator=gen) < 0.6).float()
        live = net.graph.live(mask)
        if bool(net.graph.connected(mask)) and not bool(live.all()):
            return mask


def test_search_figure_has_titles_percent_accuracy_integer_epochs_and_cost_units():
    fig = search_figure(METRICS, BUDGETS)
    assert "3 epochs" in fig.get_suptitle()
    acc, flops, latency = fig.axes
    for ax in (acc, flops, latency):
        assert ax.get_xlabel() == "epoch"
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == [1, 2, 3]
    assert acc.get_ylabel() == "accuracy (%)"
    assert list(line(acc, "train (sampled architectures)").get_ydata()) == pytest.approx([30, 40, 50])
    assert legend_texts(acc) == ["train (sampled architectures)", "validation (most probable architecture)"]
    assert flops.get_ylabel() == "FLOPs"
    assert flops.yaxis.get_major_formatter()(2e8, 0) == "200M"
    assert flops.yaxis.get_major_formatter()(1.5e9, 0) == "1.5G"
    assert latency.get_ylabel() == "latency (ms)"  # measured in seconds, drawn in milliseconds
    assert list(line(latency, "budget").get_ydata()) == pytest.approx([2.0, 2.0])
    assert list(line(latency, "expected (gate probabilities)").get_ydata()) == pytest.approx([4.0, 3.0, 2.0])
    assert legend_texts(flops) == ["expected (gate probabilities)", "most probable architecture", "budget"]


def test_search_figure_other_costs():
    metrics = [{"epoch": 0, "train_acc": 0.5, "val_acc": None,
                "expected_cost": {"params": 3e4, "parallel": 7.5, "energy": 2.0},
                "mode_cost": {"params": 2e4, "parallel": 6, "energy": 1.0}}]
    fig = search_figure(metrics, {"params": 2.5e4, "parallel": 7, "energy": 1.5}, units={"energy": "J"},
                        title="my search")
    assert fig.get_suptitle() == "my search"
    _, params, parallel, energy = fig.axes
    for ax in fig.axes:  # one epoch: one whole tick
        lo, hi = ax.get_xlim()
        assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1]
    assert params.get_ylabel() == "parameters"
    assert params.yaxis.get_major_formatter()(25000, 0) == "25k"
    assert parallel.get_ylabel() == "parallel (steps)"
    assert energy.get_ylabel() == "energy (J)"


def test_cnf_architecture_names_layers_and_scales_and_says_what_marks_mean():
    net = bsnet.create_supernet("cnf", layers=3, channels=4, image_size=8, in_channels=1)
    mask = some_dead(net)
    fig = architecture_figure(net, mask, torch.full((net.num_gates,), 0.5))
    ax = fig.axes[0]
    live = net.graph.live(mask)
    assert ax.get_title().startswith("cnf: architecture with")
    assert f"{int(live.sum())} of {net.graph.num_nodes} nodes live" in ax.get_title()
    assert ax.get_xlabel() == "layer"
    assert tick_labels(ax.xaxis) == ["0", "1", "2", "head"]
    assert ax.get_ylabel() == "scale (resolution)"
    assert tick_labels(ax.yaxis) == ["8×8", "4×4", "2×2", "1×1"]
    texts = legend_texts(ax)
    assert {"fixed edge (always kept), live", "gated edge kept: in the architecture", "gated edge dropped",
            "live node (computed)", "dead node (not computed)"} <= set(texts)
    filled, hollow = ax.collections[:2]
    assert len(filled.get_offsets()) == int(live.sum())
    assert len(hollow.get_offsets()) == int((~live).sum())
    # Kept gates whose edge is dead get their own mark; pruned, the same architecture has none.
    assert "gated edge kept but dead (no input→output path)" in texts
    pruned = architecture_figure(net, net.graph.prune(mask), torch.full((net.num_gates,), 0.5))
    assert "gated edge kept but dead (no input→output path)" not in legend_texts(pruned.axes[0])


def test_resnet_fabric_architecture_names_stages_blocks_and_rows():
    net = bsnet.create_supernet("resnet_fabric", blocks=2, channels=[4, 8], image_size=8)
    fig = architecture_figure(net, net.full_mask(), torch.rand(net.num_gates), title="ResNet fabric")
    ax = fig.axes[0]
    assert ax.get_title() == "ResNet fabric"
    assert ax.get_xlabel() == "block within its stage"
    assert tick_labels(ax.xaxis) == ["0", "1", "0", "1"]
    assert tick_labels(ax.yaxis) == ["skip (S)", "sum (A)", "block (B)", "shortcut (X)"]
    texts = {t.get_text() for t in ax.texts}
    assert {"stage 0\n4 channels, 8×8", "stage 1\n8 channels, 4×4", "input", "out"} <= texts
    assert "dead node (not computed)" in legend_texts(ax)  # always explained, even when every node is live


def test_custom_graph_architecture_names_its_nodes():
    g = Graph(input="stem", output="head")
    for n in ("stem", "branch", "head"):
        g.add_node(n)
    g.add_edge("stem", "branch")
    g.add_edge("branch", "head", gate="branch")
    g.add_edge("stem", "head")
    net = SuperNetwork(g, {n: nn.Identity() for n in ("stem", "branch", "head")}, (2, 4, 4))
    fig = architecture_figure(net, torch.tensor([0.0]), torch.tensor([0.2]))
    ax = fig.axes[0]
    assert {"stem", "branch", "head"} <= {t.get_text() for t in ax.texts}
    assert ax.get_title() == "super network: architecture with 0 of 1 gates kept, 2 of 3 nodes live"
    assert "gated edge dropped" in legend_texts(ax)


@pytest.mark.parametrize("costs, accs, front", [
    ([2, 4, 6, 5, 8], [0.61, 0.68, 0.66, 0.70, 0.72], [0, 1, 3, 4]),
    ([5, 5, 3], [0.6, 0.7, 0.7], [2]),  # same accuracy for less: the cheaper one only
    ([1, 1], [0.5, 0.5], [0]),  # equal runs: the first
    ([3, 2, 1], [0.9, 0.8, 0.7], [2, 1, 0]),
])
def test_pareto_front_is_the_non_dominated_runs_by_cost(costs, accs, front):
    assert pareto_front(costs, accs) == front


def test_pareto_figure_draws_the_front_in_percent():
    costs, accs = [2e7, 4e7, 6e7, 5e7, 8e7], [0.61, 0.68, 0.66, 0.70, 0.72]
    fig = pareto_figure(costs, accs, ["20%", "40%", "60%", "50%", "80%"], "flops")
    ax = fig.axes[0]
    front = line(ax, "Pareto front (non-dominated runs)")
    assert list(front.get_xdata()) == [2e7, 4e7, 5e7, 8e7]
    assert list(front.get_ydata()) == pytest.approx([61, 68, 70, 72])
    assert legend_texts(ax) == ["dominated run", "Pareto front (non-dominated runs)"]
    assert list(ax.collections[0].get_offsets()[0]) == pytest.approx([6e7, 66])
    assert ax.get_ylabel() == "test accuracy (%)"
    assert ax.get_xlabel() == "FLOPs"
    assert ax.xaxis.get_major_formatter()(4e7, 0) == "40M"
    assert ax.get_title() == "test accuracy against FLOPs, 5 runs (labels: budgets)"
    assert {"20%", "60%", "80%"} <= {t.get_text() for t in ax.texts}


def test_plot_functions_write_pngs_with_the_old_signatures(tmp_path):
    net = bsnet.create_supernet("cnf", layers=2, channels=4, image_size=4, in_channels=1)
    plot_search(METRICS, BUDGETS, tmp_path / "search.png")
    plot_architecture(net, net.full_mask(), torch.rand(net.num_gates), tmp_path / "architecture.png")
    plot_pareto([1e6, 2e6], [0.5, 0.6], ["10%", "20%"], "flops", tmp_path / "pareto.png")
    for name in ("search.png", "architecture.png", "pareto.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
