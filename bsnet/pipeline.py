"""A search run from configuration to run directory: the steps `bsnet search` takes, as public functions.

    build_run(config)       data, super network, budgets, BudgetedSearch            -> SearchRun
    run_epochs(run, ...)    the epoch loop: search steps, validation, metrics, checkpoints
    finish(run, ...)        the found architecture: BatchNorm recalibrated, scored, selected, fine-tuned -> Outcome
    write_run(dir, ...)     weights, plots and architecture.json
    run_search(config, out) all of the above in a run directory, with resume

The library prints nothing: progress goes through the `progress` callback (the CLI draws bars with it) and warnings
through `warn`.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

import bsnet
from bsnet import distributed, runs
from bsnet.architecture import Architecture, kept_names
from bsnet.budgets import parse_budget
from bsnet.config import ConfigError, RunConfig, typed
from bsnet.costs import LatencyCost, all_costs
from bsnet.data import DataSplits, batches, load_dataset, num_batches
from bsnet.search import BudgetedSearch, BudgetError, Found, NonFiniteLossError, SearchConfig, StepStats
from bsnet.supernet import SuperNetwork
from bsnet.train import accuracy, finetune, mean_iou, recalibrate_bn

# (label, total) -> advance(info): one progress bar per stretch of work (an epoch, a fine-tune).
Progress = Callable[[str, int], Callable[[str], None]]


def no_progress(label: str, total: int) -> Callable[[str], None]:
    return lambda info="": None


@dataclass
class SearchRun:
    """What a search needs as it runs: the search itself, its data and batching, and where it runs."""

    search: BudgetedSearch
    data: DataSplits
    batch_size: int
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world: int = 1

    @property
    def net(self) -> SuperNetwork:
        return self.search.net

    @property
    def cost_names(self) -> list[str]:
        return [b.cost.name for b in self.search.budgets]

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(self.data.train, self.batch_size, drop_last=True, world=self.world)

    def batches(self, epoch: int, augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's shard of epoch `epoch`'s training batches: the order depends on (seed, epoch) only."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        # drop_last: a last batch of a few examples, split into K groups, would hold BatchNorm groups of one
        for x, y in batches(self.data.train, self.batch_size, shuffle=True, generator=g, rank=self.rank,
                            world=self.world, drop_last=True):
            if augment and self.data.augment is not None:
                x, y = self.data.augment(x, y, g)
            yield x, y


def build_supernet(config: RunConfig, data: DataSplits, model: nn.Module | None = None) -> SuperNetwork:
    """A registered super network sized for the data (input size, channels, classes, task), or the user's own
    `model` (a SuperNetwork as it is; a torch module turned into one with `bsnet.from_model`)."""
    if model is not None:
        from bsnet.from_model import as_supernet
        shape = tuple(config.input_shape) if config.input_shape else tuple(data.input_shape)
        return as_supernet(model, shape, leaf_modules=config.leaf_modules)
    from bsnet.fabrics.registry import supernet_config
    fields = {f.name for f in dataclasses.fields(supernet_config(config.supernet))}
    cfg = dict(config.supernet_config)
    fill = {"image_size": data.input_shape[-1], "in_channels": data.input_shape[0], "num_classes": data.num_classes,
            "task": data.task}
    for k, v in fill.items():
        if k in fields:
            cfg.setdefault(k, v)
    return bsnet.create_supernet(config.supernet, **cfg)


def build_run(config: RunConfig, model: nn.Module | None = None) -> SearchRun:
    """Data, super network, budgets and search for `config`, set up on its device (one process of a torchrun
    group when launched by torchrun). `config`'s `supernet_config` and `search_config` are resolved in place, so
    that it can be written as the run's config.yaml."""
    rank, world = distributed.setup(config.device)  # torchrun: data-parallel over `world` processes
    device = torch.device(distributed.local_device(config.device))
    torch.manual_seed(config.seed)
    search_cfg = typed(SearchConfig, {"seed": config.seed, **config.search_config}, "search")
    data = load_dataset(config.dataset, config.data_dir, val_size=config.val_size, seed=config.seed)
    net = build_supernet(config, data, model)
    options = dict(parallel_workers=config.parallel_workers, latency_table=config.latency_table, device=str(device))
    budgets = [parse_budget(b, **options) for b in config.budget]
    names = [b.cost.name for b in budgets]
    if len(set(names)) != len(names):
        raise ConfigError(f"one budget per cost, got {', '.join(config.budget)}")
    for b in budgets:  # measured once, on rank 0, so that every rank optimises the same numbers
        if isinstance(b.cost, LatencyCost) and world > 1:
            b.cost.table = distributed.broadcast(b.cost.table_for(net) if rank == 0 else None)
    run = SearchRun(None, data, config.batch_size, config.seed, device, rank, world)  # type: ignore[arg-type]
    if run.steps_per_epoch < 1:
        raise ConfigError(f"batch size {config.batch_size} is larger than the training set's share per process")
    run.search = BudgetedSearch(net, budgets, search_cfg, steps_per_epoch=run.steps_per_epoch,
                                epochs=config.epochs, device=device)
    config.supernet_config = net.config if model is None else {}
    config.search_config = dataclasses.asdict(search_cfg)
    return run


# ---- the epoch loop ---------------------------------------------------------------------------------------
def search_epoch(run: SearchRun, epoch: int, advance: Callable[[str], None] | None = None) -> list[StepStats]:
    """One epoch of search steps; the steps whose loss was not finite (skipped) are left out."""
    search, stats = run.search, []
    limits = dict(zip(run.cost_names, search.limits))
    for x, y in run.batches(epoch):
        runs.kill_point(f"step:{search.steps}")
        s = search.step(x, y)
        if s.skipped:
            continue
        stats.append(s)
        if advance:
            advance(f"loss {s.loss:.3f} acc {s.accuracy:.3f} " + " ".join(
                f"{n} {c / limits[n]:.0%}·b λ {float(lam):.2g}" for n, c, lam in zip(run.cost_names, s.costs,
                                                                                     search.lambdas)))
    return stats


def epoch_record(run: SearchRun, epoch: int, stats: list[StepStats], seconds: float) -> dict[str, Any]:
    """metrics.jsonl's line for an epoch: training figures, the most probable architecture's validation
    accuracy (reduced over ranks) and costs, λ, the gates' entropy."""
    search, names = run.search, run.cost_names
    try:
        found = search.found()
    except BudgetError:  # reported at the end; meanwhile follow the most probable architecture
        found = search.found(project=False)
    val_shard = list(batches(run.data.val, 256, rank=run.rank, world=run.world))
    n_val = sum(len(y) for _, y in val_shard)
    loss_sum, acc_sum, n, val_hits, n_val = distributed.sum_over_ranks([
        sum(s.loss * s.examples for s in stats), sum(s.accuracy * s.examples for s in stats),
        float(sum(s.examples for s in stats)), accuracy(run.net, val_shard, run.device, mask=found.mask) * n_val,
        n_val])
    return {"epoch": epoch, "train_loss": loss_sum / n, "train_acc": acc_sum / n, "val_acc": val_hits / n_val,
            "expected_cost": dict(zip(names, search.expected_costs())),
            "sampled_cost": {nm: sum(s.costs[j] for s in stats) / len(stats) for j, nm in enumerate(names)},
            "mode_cost": dict(zip(names, search.costs(found.mask))),
            "lambda": dict(zip(names, search.lambdas.tolist())), "entropy": search.mean_entropy(),
            "disconnected": sum(s.disconnected for s in stats) / len(stats),
            "skipped_steps": search.nonfinite_steps, "seconds": seconds}


def run_epochs(run: SearchRun, epochs: int, *, run_dir: Path | None = None, start: int = 0, best_val: float = -1.0,
               progress: Progress = no_progress) -> list[dict[str, Any]]:
    """Epochs `start` to `epochs` - 1; their records. With `run_dir`, rank 0 appends each record to metrics.jsonl
    and checkpoints the epoch (and the best on validation) so that `--resume` continues bitwise equal."""
    records, t0 = [], time.time()
    for epoch in range(start, epochs):
        advance = progress(f"epoch {epoch + 1}/{epochs}", run.steps_per_epoch)
        try:
            stats = search_epoch(run, epoch, advance)
        except NonFiniteLossError as e:
            where = f"; the last good checkpoint is kept in {run_dir / 'checkpoints'} (epoch {epoch})" \
                if run_dir else ""
            raise NonFiniteLossError(f"{e}: the search stopped{where}; lower the learning rate and rerun") from None
        if not stats:  # every step of the epoch was skipped: nothing to report, nothing to save
            continue
        record = epoch_record(run, epoch, stats, time.time() - t0)
        records.append(record)
        if run_dir is not None and run.rank == 0:
            runs.append_metrics(run_dir / "metrics.jsonl", record)
            state = {"search": run.search.state_dict(), "rng": runs.rng_state()}
            meta = {"epoch": epoch + 1, "best_val": max(best_val, record["val_acc"]),
                    "bsnet_version": bsnet.__version__}
            runs.save_epoch_checkpoint(run_dir / "checkpoints", epoch + 1, state, meta)
            if record["val_acc"] > best_val:
                runs.save_checkpoint(run_dir / "checkpoints", "best", state, meta)
        best_val = max(best_val, record["val_acc"])
    return records


# ---- the found architecture ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    """The chosen architecture, its network (search weights, BatchNorm recalibrated, fine-tuned) and its scores."""

    found: Found
    mask: torch.Tensor
    network: SuperNetwork
    metrics: dict[str, Any]
    chosen: int = 0  # 0: the found architecture; i: the i-th tempered sample (`select`)


def _scores(run: SearchRun, net: SuperNetwork, mask: torch.Tensor, split: str) -> float:
    return accuracy(net, batches(getattr(run.data, split), 256), run.device, mask=mask)


def tuned(run: SearchRun, mask: torch.Tensor, epochs: int, advance: Callable[[str], None] | None = None
          ) -> tuple[SuperNetwork, dict[str, float]]:
    """A copy of the search weights for architecture `mask`: BatchNorm statistics recomputed for it, scored on
    test and validation, then fine-tuned for `epochs` (every candidate on the same batches) and scored again."""
    net = copy.deepcopy(run.net)
    recalibrate_bn(net, lambda x: net(x, mask), run.batches(0, augment=False), run.device)
    scores = {"test": _scores(run, net, mask, "test"), "val": _scores(run, net, mask, "val")}
    if epochs > 0:
        finetune(net, mask, lambda e: run.batches(10_000 + e), epochs, run.steps_per_epoch, device=run.device,
                 on_step=(lambda: advance("")) if advance else None)
        scores["test_ft"] = _scores(run, net, mask, "test")
        scores["val_ft"] = _scores(run, net, mask, "val")
    return net, scores


def finish(run: SearchRun, finetune_epochs: int, *, select: int = 1, temperature: float = 3.0,
           progress: Progress = no_progress) -> Outcome:
    """The found architecture (`select` > 1: the best on validation of it and `select` - 1 tempered samples of the
    gates, each fine-tuned for at least one epoch), scored against the full super network on the same weights.

    Raises:
        BudgetError: no connected architecture meets every budget.
    """
    search, net, device = run.search, run.net, run.device
    found = search.found()
    full = copy.deepcopy(net)
    recalibrate_bn(full, full, run.batches(0, augment=False), device)  # no mask: every gate kept
    metrics: dict[str, Any] = {"full_test_acc": _scores(run, full, full.full_mask(), "test")}
    segmentation = run.data.task == "segmentation"
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
            cand_net, cand_scores = tuned(run, m, finetune_epochs, advance)
            selection.append({"kept": kept_names(m, net.gate_names), "val_acc": cand_scores["val_ft"],
                              "cost": dict(zip(run.cost_names, search.costs(m)))})
            if i == 0 or cand_scores["val_ft"] > selection[chosen]["val_acc"]:
                chosen, mask, found_net, scores = i, m, cand_net, cand_scores
            del cand_net
    else:
        advance = progress("fine-tune", finetune_epochs * run.steps_per_epoch) if finetune_epochs else None
        found_net, scores = tuned(run, mask, finetune_epochs, advance)
    ft_acc = scores.get("test_ft")
    metrics = {"test_acc": ft_acc if ft_acc is not None else scores["test"], "test_acc_search_weights": scores["test"],
               "val_acc_search_weights": scores["val"], "test_acc_finetuned": ft_acc, **metrics,
               "finetune_epochs": finetune_epochs, "repaired": found.repaired, "skipped_steps": search.nonfinite_steps}
    if segmentation:
        metrics["test_miou"] = mean_iou(found_net, batches(run.data.test, 256), run.data.num_classes, device,
                                        mask=mask)
    if selection:
        metrics.update(selection=selection, selected=chosen, select_temperature=temperature)
    return Outcome(found, mask, found_net, metrics, chosen)


def architecture(run: SearchRun, outcome: Outcome, *, epochs: int, parallel_workers: int | None = None
                 ) -> Architecture:
    """`architecture.json`'s content: the kept gates, every cost against its budget and the full network's."""
    net, search = run.net, run.search
    extra = [b.cost for b in search.budgets if b.cost.name not in ("flops", "params", "parallel")]
    first = outcome.chosen == 0  # a sample chosen on validation was not projected
    return Architecture(supernet=net.name, supernet_config=net.config,
                        gates=dict(zip(net.gate_names, search.gates.probs().tolist())),
                        kept=kept_names(outcome.mask, net.gate_names), projected=outcome.found.projected and first,
                        dropped=outcome.found.dropped if first else [],
                        cost=all_costs(net, outcome.mask, extra, parallel_workers),
                        budget=dict(zip(run.cost_names, search.limits)),
                        full_cost=all_costs(net, net.full_mask(), extra, parallel_workers),
                        metrics={**outcome.metrics, "epochs": epochs}, bsnet_version=bsnet.__version__)


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


# ---- all of it, in a run directory ---------------------------------------------------------------------------
def run_search(config: RunConfig, out: str | Path | None = None, *, model: nn.Module | None = None,
               resume: bool = False, overwrite: bool = False, progress: Progress = no_progress,
               warn: Callable[[str], None] = warnings.warn) -> tuple[Architecture, Path] | None:
    """Search as `config` says and write the run directory `out` (default: the next `runs/search-NNN`); with
    `resume`, continue the run in `out` from its last intact checkpoint. Returns the architecture and the run
    directory (None on the ranks > 0 of a torchrun group, which write nothing).

    Raises:
        ConfigError, RunDirError, ValueError: bad configuration, or an occupied or missing run directory.
        NonFiniteLossError: the loss diverged (the last good checkpoint is kept).
        BudgetError: no connected architecture meets every budget.
    """
    run = build_run(config, model)
    main_rank = run.rank == 0
    prepared: Any = None  # only rank 0 writes; the others learn the directory (or rank 0's refusal) from it
    if main_rank:
        try:
            prepared = str(runs.prepare_run_dir(None if out is None else str(out), resume=resume, overwrite=overwrite))
        except runs.RunDirError as e:
            prepared = ("error", str(e))
    prepared = distributed.broadcast(prepared)
    if isinstance(prepared, tuple):
        raise runs.RunDirError(prepared[1])
    run_dir = Path(prepared)
    start, best_val = 0, -1.0
    if resume:
        state, meta, messages = runs.load_latest_checkpoint(run_dir / "checkpoints")
        for m in messages:
            warn(m)
        if state is None:
            warn("no intact checkpoint: starting from the beginning")
        else:
            run.search.load_state_dict(state["search"])
            runs.set_rng_state(state["rng"])
            start, best_val = int(meta["epoch"]), float(meta.get("best_val", -1.0))
        if main_rank:
            runs.truncate_metrics(run_dir / "metrics.jsonl", start)
    elif main_rank:
        runs.write_yaml(run_dir / "config.yaml", config.to_dict())
    run_epochs(run, config.epochs, run_dir=run_dir, start=start, best_val=best_val, progress=progress)
    _dump_rank_state(run)
    if not main_rank:  # rank 0 alone evaluates, fine-tunes and writes: nothing to wait for
        distributed.teardown()
        return None
    try:
        outcome = finish(run, config.finetune_epochs, select=config.select, temperature=config.select_temperature,
                         progress=progress)
        arch = architecture(run, outcome, epochs=config.epochs, parallel_workers=config.parallel_workers)
        write_run(run_dir, run, outcome, arch)
    finally:
        distributed.teardown()
    return arch, run_dir


def _dump_rank_state(run: SearchRun) -> None:
    """Test-only (BSNET_TEST_RANK_STATE_DIR): every rank writes its weights, gates and λ, to compare ranks."""
    where = os.environ.get("BSNET_TEST_RANK_STATE_DIR")
    if where:
        from safetensors.torch import save_file
        state = {f"net.{k}": v.contiguous() for k, v in run.net.state_dict().items()}
        state.update({"gates": run.search.gates.logits.detach().contiguous(),
                      "lambdas": run.search.lambdas.contiguous()})
        save_file(state, str(Path(where) / f"rank{run.rank}.safetensors"))
