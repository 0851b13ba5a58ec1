"""After the search: the found architecture (or the best of its candidates on validation) with its network
(search weights, BatchNorm recalibrated, fine-tuned), its scores, its record and the files of a run."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

import bsnet
from bsnet import runs
from bsnet.architecture import Architecture, kept_names
from bsnet.costs import all_costs
from bsnet.data import batches
from bsnet.projection import Found
from bsnet.supernet import SuperNetwork
from bsnet.train import accuracy, finetune, mean_iou, recalibrate_bn
from bsnet.width import keep_strongest, kept_widths

if TYPE_CHECKING:
    from bsnet.pipeline import SearchRun

# (label, total) -> advance(info): one progress bar per stretch of work (an epoch, a fine-tune).
Progress = Callable[[str, int], Callable[[str], None]]


def no_progress(label: str, total: int) -> Callable[[str], None]:
    return lambda info="": None


@dataclass
class Outcome:
    """The chosen architecture, its network (search weights, BatchNorm recalibrated, fine-tuned) and its scores."""

    found: Found
    mask: torch.Tensor
    network: SuperNetwork
    metrics: dict[str, Any]
    chosen: int = 0  # 0: the found architecture; i: the i-th tempered sample (`select`)


def _accuracy(run: SearchRun, net: SuperNetwork, mask: torch.Tensor, split: str) -> float | None:
    """Accuracy on the whole split (rank 0 alone scores); None where the run has no such split (`fit`'s batches)."""
    scored = run.scoring_batches(split, shard=False)
    return None if scored is None else accuracy(net, scored, run.device, mask=mask)


def tuned(run: SearchRun, mask: torch.Tensor, epochs: int, advance: Callable[[str], None] | None = None,
          lr: float = 0.02, strongest: bool = False) -> tuple[SuperNetwork, dict[str, float | None]]:
    """A copy of the network's weights for architecture `mask` (with `strongest`, each width split's strongest
    channels moved into its live groups: `keep_strongest`): BatchNorm statistics recomputed for it, scored on test
    and validation, then fine-tuned for `epochs` at `lr` (every candidate on the same batches) and scored again."""
    net = copy.deepcopy(run.net)
    if strongest:
        keep_strongest(net, mask)
    recalibrate_bn(net, lambda x: net(x, mask), run.batches(0, augment=False), run.device)
    scores = {"test": _accuracy(run, net, mask, "test"), "val": _accuracy(run, net, mask, "val")}
    if epochs > 0:
        finetune(net, mask, lambda e: run.batches(10_000 + e), epochs, run.steps_per_epoch, lr=lr, device=run.device,
                 on_step=(lambda: advance("")) if advance else None)
        scores["test_ft"] = _accuracy(run, net, mask, "test")
        scores["val_ft"] = _accuracy(run, net, mask, "val")
    return net, scores


def finish(run: SearchRun, finetune_epochs: int, *, select: int = 1, temperature: float = 3.0,
           progress: Progress = no_progress, lr: float = 0.02, strongest: bool = False) -> Outcome:
    """The found architecture (`select` > 1: the best on validation of it and `select` - 1 tempered samples of the
    gates, each fine-tuned for at least one epoch at `lr`), scored against the full super network on the same
    weights; with `strongest`, each width split keeps its channels of largest norm (see `tuned`).

    Raises:
        BudgetError: no connected architecture meets every budget.
    """
    search, net, device = run.search, run.net, run.device
    found = search.found()
    metrics: dict[str, Any] = {}
    segmentation = run.data.task == "segmentation"
    if run.scoring_batches("test", shard=False) is not None:  # `fit`'s batches have no test split
        full = copy.deepcopy(net)
        recalibrate_bn(full, full, run.batches(0, augment=False), device)  # no mask: every gate kept
        metrics["full_test_acc"] = _accuracy(run, full, full.full_mask(), "test")
        if segmentation:
            metrics["full_test_miou"] = mean_iou(full, batches(run.data.test, 256), run.data.num_classes, device,
                                                 mask=full.full_mask())
        del full
    selection: list[dict[str, Any]] = []
    chosen, mask = 0, found.mask
    if select > 1:
        finetune_epochs = max(finetune_epochs, 1)
        candidates = search.candidates(select, temperature)
        for i, m in enumerate(candidates):
            advance = progress(f"candidate {i + 1}/{len(candidates)}", finetune_epochs * run.steps_per_epoch)
            cand_net, cand_scores = tuned(run, m, finetune_epochs, advance, lr, strongest)
            selection.append({"kept": kept_names(m, net.gate_names), "val_acc": cand_scores["val_ft"],
                              "cost": dict(zip(run.cost_names, search.costs(m)))})
            if i == 0 or cand_scores["val_ft"] > selection[chosen]["val_acc"]:
                chosen, mask, found_net, scores = i, m, cand_net, cand_scores
            del cand_net
    else:
        advance = progress("fine-tune", finetune_epochs * run.steps_per_epoch) if finetune_epochs else None
        found_net, scores = tuned(run, mask, finetune_epochs, advance, lr, strongest)
    ft_acc = scores.get("test_ft")
    metrics = {"test_acc": ft_acc if ft_acc is not None else scores["test"], "test_acc_search_weights": scores["test"],
               "val_acc_search_weights": scores["val"], "test_acc_finetuned": ft_acc,
               "val_acc_finetuned": scores.get("val_ft"), **metrics,
               "finetune_epochs": finetune_epochs, "repaired": found.repaired, "skipped_steps": search.nonfinite_steps}
    if segmentation:
        metrics["test_miou"] = mean_iou(found_net, batches(run.data.test, 256), run.data.num_classes, device,
                                        mask=mask)
    if selection:
        metrics.update(selection=selection, selected=chosen, select_temperature=temperature)
    return Outcome(found, mask, found_net, metrics, chosen)


def found_architecture(run: SearchRun, outcome: Outcome, *, epochs: int, parallel_workers: int | None = None
                 ) -> Architecture:
    """`architecture.json`'s content: the kept gates, every cost against its budget and the full network's."""
    net, search = run.net, run.search
    extra = [b.cost for b in search.budgets if b.cost.name not in ("flops", "params", "parallel")]
    first = outcome.chosen == 0  # a sample chosen on validation was not projected
    return Architecture(supernet=net.name, supernet_config=net.config,
                        gates=dict(zip(net.gate_names, search.gates.probs().tolist())),
                        kept=kept_names(outcome.mask, net.gate_names), projected=outcome.found.projected and first,
                        dropped=outcome.found.dropped if first else [], added=outcome.found.added if first else [],
                        exchanged=outcome.found.exchanged if first else [],
                        cost=all_costs(net, outcome.mask, extra, parallel_workers),
                        budget=dict(zip(run.cost_names, search.limits)),
                        full_cost=all_costs(net, net.full_mask(), extra, parallel_workers),
                        metrics={**outcome.metrics, "epochs": epochs}, widths=kept_widths(net, outcome.mask),
                        bsnet_version=bsnet.__version__)


def write_run(run_dir: Path, run: SearchRun, outcome: Outcome, arch: Architecture) -> None:
    """The found network's weights (live nodes only), the plots, then architecture.json, whose presence marks the
    run as finished."""
    from bsnet.export import export_module, save_weights
    from bsnet.plots import plot_architecture, plot_search
    save_weights(export_module(outcome.network, outcome.mask), arch, run_dir / "weights.safetensors")
    plot_search(runs.read_metrics(run_dir / "metrics.jsonl"), arch.budget, run_dir / "search.png",
                units={b.cost.name: b.cost.unit for b in run.search.budgets},
                title=f"bsnet search: {arch.supernet or 'your model'}")
    plot_architecture(run.net, outcome.mask, run.search.gates.probs().detach().cpu(), run_dir / "architecture.png")
    arch.to_json(run_dir / "architecture.json")
