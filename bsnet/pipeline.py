"""A search run from configuration to run directory: the steps `bsnet search` takes, as public functions.

    build_run(config)       data, super network, budgets, BudgetedSearch            -> SearchRun
    run_epochs(run, ...)    the epoch loop: search steps, validation, metrics, checkpoints
    finish(run, ...)        the found architecture: BatchNorm recalibrated, scored, selected, fine-tuned -> Outcome
    found_architecture(...) architecture.json's content                          -> Architecture
    write_run(dir, ...)     weights, plots and architecture.json
    run_search(config, out) all of the above in a run directory, with resume

`finish`, `found_architecture` and `write_run` live in `bsnet.outcome`. The library prints nothing: progress goes
through the `progress` callback (the CLI draws bars with it) and warnings through `warn`.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import torch
import yaml
from torch import nn

import bsnet
from bsnet import distributed, rundir, runs
from bsnet.architecture import Architecture, kept_names
from bsnet.budgets import Budget, parse_budget
from bsnet.config import ConfigError, RunConfig, read_config_file, typed
from bsnet.costs import LatencyCost
from bsnet.data import DataSplits, batches, load_dataset, num_batches
from bsnet.outcome import Outcome, Progress, finish, found_architecture, no_progress, write_run
from bsnet.search import BudgetedSearch, BudgetError, NonFiniteLossError, SearchConfig, StepStats
from bsnet.supernet import SuperNetwork
from bsnet.train import accuracy, recalibrate_bn

__all__ = ["Outcome", "Progress", "SearchRun", "UserBatches", "build_run", "build_supernet", "epoch_record", "finish",
           "found_architecture", "no_progress", "run_epochs", "run_search", "search_epoch", "write_run"]


@dataclass
class UserBatches:
    """Batches of the user's own (`bsnet.fit`) in place of a data set: `train(epoch)` gives that pass's (inputs,
    targets) pairs (the pass numbers of `SearchRun.batches`; as they come, augmented or not, where a data set's
    BatchNorm passes are not augmented), `val()` the batches to score on, if any; `steps` batches per epoch."""

    train: Callable[[int], Iterable[tuple[Any, torch.Tensor]]]
    val: Callable[[], Iterable[tuple[Any, torch.Tensor]]] | None
    steps: int
    task: str = "classification"


@dataclass
class SearchRun:
    """What a search needs as it runs: the search itself, its data and batching, and where it runs."""

    search: BudgetedSearch
    data: DataSplits | UserBatches
    batch_size: int
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world: int = 1
    config: RunConfig | None = None  # the resolved configuration, when built from one (`build_run`)

    @property
    def net(self) -> SuperNetwork:
        return self.search.net

    @property
    def cost_names(self) -> list[str]:
        return [b.cost.name for b in self.search.budgets]

    @property
    def steps_per_epoch(self) -> int:
        if isinstance(self.data, UserBatches):
            return self.data.steps
        return num_batches(self.data.train, self.batch_size, drop_last=True, world=self.world)

    def batches(self, epoch: int, augment: bool = True) -> Iterator[tuple[Any, torch.Tensor]]:
        """This process's shard of epoch `epoch`'s training batches: the order depends on (seed, epoch) only
        (the user's own batches: as they come)."""
        if isinstance(self.data, UserBatches):
            yield from self.data.train(epoch)
            return
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        # drop_last: a last batch of a few examples, split into K groups, would hold BatchNorm groups of one
        for x, y in batches(self.data.train, self.batch_size, shuffle=True, generator=g, rank=self.rank,
                            world=self.world, drop_last=True):
            if augment and self.data.augment is not None:
                x, y = self.data.augment(x, y, g)
            yield x, y

    def scoring_batches(self, split: str, shard: bool = True) -> Iterable[tuple[Any, torch.Tensor]] | None:
        """The "val" or "test" split in batches of 256 (this process's shard of it, with `shard`); None where the
        run has no such split."""
        if isinstance(self.data, UserBatches):
            return self.data.val() if split == "val" and self.data.val is not None else None
        rank, world = (self.rank, self.world) if shard else (0, 1)
        return batches(getattr(self.data, split), 256, rank=rank, world=world)


ModelSource = Union[nn.Module, Callable[[], nn.Module], None]  # a model, or a factory called once seeded


def build_supernet(config: RunConfig, data: DataSplits, model: nn.Module | None = None) -> SuperNetwork:
    """A registered super network sized for the data (input size, channels, classes, task), or the user's own
    `model` (a SuperNetwork as it is; a torch module turned into one with `bsnet.from_model`)."""
    if model is None or isinstance(model, SuperNetwork):
        given = [o for o, v in (("leaf_modules", config.leaf_modules), ("input_shape", config.input_shape)) if v]
        if given:
            raise ConfigError(f"{' and '.join(given)} apply to a model of your own that bsnet converts (--model "
                              "returning a torch module), not to a super network")
    if model is not None:
        from bsnet.from_model import as_supernet
        shape = tuple(config.input_shape) if config.input_shape else tuple(data.input_shape)
        return as_supernet(model, shape, leaf_modules=config.leaf_modules, width_groups=config.width_groups or 1)
    from bsnet.fabrics.registry import supernet_config
    fields = {f.name for f in dataclasses.fields(supernet_config(config.supernet))}
    cfg = dict(config.supernet_config)
    fill = {"image_size": data.input_shape[-1], "in_channels": data.input_shape[0], "num_classes": data.num_classes,
            "task": data.task}
    for k, v in fill.items():
        if k in fields:
            cfg.setdefault(k, v)
    return bsnet.create_supernet(config.supernet, **cfg)


def _budgets(config: RunConfig, net: SuperNetwork, device: torch.device, rank: int, world: int) -> list[Budget]:
    if config.latency_table is not None and not Path(config.latency_table).is_file():
        raise ConfigError(f"latency table {config.latency_table} does not exist (make one with `bsnet profile`)")
    options = dict(parallel_workers=config.parallel_workers, latency_table=config.latency_table, device=str(device))
    budgets = [parse_budget(b, **options) for b in config.budget]
    names = [b.cost.name for b in budgets]
    if len(set(names)) != len(names):
        raise ConfigError(f"one budget per cost, got {', '.join(config.budget)}")
    if world > 1:  # a latency table is measured once, on rank 0, so that every rank optimises the same numbers
        for i, b in enumerate(budgets):
            if isinstance(b.cost, LatencyCost):
                table = distributed.broadcast(b.cost.table_for(net) if rank == 0 else None)
                budgets[i] = dataclasses.replace(b, cost=LatencyCost(table, device=device,
                                                                     batch_size=b.cost.batch_size))
    return budgets


def build_run(config: RunConfig, model: ModelSource = None) -> SearchRun:
    """Data, super network, budgets and search for `config`, set up on its device (one process of a torchrun
    group when launched by torchrun). `model`: the user's own model or a factory of it (called once seeded, so
    that a run is reproduced from its seed). The run's `config` is `config` resolved: the super network's and the
    search's settings in full, as the run's config.yaml records them."""
    rank, world = distributed.setup(config.device)  # torchrun: data-parallel over `world` processes
    device = torch.device(distributed.local_device(config.device))
    torch.manual_seed(config.seed)
    search_cfg = typed(SearchConfig, {"seed": config.seed, **config.search_config}, "search")
    data = load_dataset(config.dataset, config.data_dir, val_size=config.val_size, seed=config.seed)
    if model is not None and not isinstance(model, nn.Module):
        model = model()
    if model is not None and not isinstance(model, SuperNetwork):  # captured where it runs, as `bsnet.fit` does: a
        model = model.to(device)  # captured program makes its own tensors (positions, masks) on its capture's device
    net = build_supernet(config, data, model)
    data.check_fits(net.input_shape, net.profile[net.graph.output].out_shape, "the super network")
    budgets = _budgets(config, net, device, rank, world)
    steps = num_batches(data.train, config.batch_size, drop_last=True, world=world)
    if steps < 1:
        raise ConfigError(f"batch size {config.batch_size} is larger than the training set's share per process")
    search = BudgetedSearch(net, budgets, search_cfg, steps_per_epoch=steps, epochs=config.epochs, device=device)
    resolved = dataclasses.replace(config, supernet_config=net.config if model is None else {},
                                   search_config=dataclasses.asdict(search_cfg))
    return SearchRun(search, data, config.batch_size, config.seed, device, rank, world, resolved)


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


VAL_BN_BATCHES = 20  # training batches that recompute BatchNorm statistics before an epoch's validation


def epoch_record(run: SearchRun, epoch: int, stats: list[StepStats], seconds: float) -> dict[str, Any]:
    """metrics.jsonl's line for an epoch: training figures, the architecture found at its end (its kept gates: when
    the search settled on it), its validation accuracy (reduced over ranks) and costs, λ, the gates' entropy."""
    search, names = run.search, run.cost_names
    try:
        found = search.found()
    except BudgetError:  # reported at the end; meanwhile follow the most probable architecture
        found = search.found(project=False)
    val_shard = list(run.scoring_batches("val") or [])  # `fit` without validation batches: none
    n_val, val_hits = sum(len(y) for _, y in val_shard), 0.0
    if val_shard:
        # The search's BatchNorm statistics are shared by every sampled architecture and fit none (a block thinned
        # to one width group sums a quarter of the channels): scored on them, a good architecture reads as chance.
        # So it is scored on a copy whose statistics are recomputed for it, on a few training batches, as the found
        # one will be.
        net = copy.deepcopy(run.net)
        recalibrate_bn(net, lambda x: net(x, found.mask),
                       itertools.islice(run.batches(0, augment=False), VAL_BN_BATCHES), run.device)
        val_hits = accuracy(net, val_shard, run.device, mask=found.mask) * n_val
    loss_sum, acc_sum, n, val_hits, n_val = distributed.sum_over_ranks([
        sum(s.loss * s.examples for s in stats), sum(s.accuracy * s.examples for s in stats),
        float(sum(s.examples for s in stats)), val_hits, n_val])
    return {"epoch": epoch, "train_loss": loss_sum / n, "train_acc": acc_sum / n,
            "val_acc": val_hits / n_val if n_val else None,
            "expected_cost": dict(zip(names, search.expected_costs())),
            "sampled_cost": {nm: sum(s.costs[j] for s in stats) / len(stats) for j, nm in enumerate(names)},
            "mode_cost": dict(zip(names, search.costs(found.mask))),
            "found": kept_names(found.mask, run.net.gate_names),
            "lambda": dict(zip(names, search.lambdas.tolist())), "entropy": search.mean_entropy(),
            "disconnected": sum(s.disconnected for s in stats) / len(stats),
            "skipped_steps": search.nonfinite_steps, "seconds": seconds}


def run_epochs(run: SearchRun, epochs: int, *, run_dir: Path | None = None, start: int = 0, best_val: float = -1.0,
               progress: Progress = no_progress, stop: int | None = None) -> list[dict[str, Any]]:
    """Epochs `start` to `epochs` - 1 (or `stop` - 1) of `epochs`; their records. With `run_dir`, rank 0 appends
    each record to metrics.jsonl and checkpoints the epoch (and the best on validation) so that `--resume` continues
    bitwise equal."""
    records, t0 = [], time.time()
    for epoch in range(start, epochs if stop is None else min(stop, epochs)):
        advance = progress(f"epoch {epoch + 1}/{epochs}", run.steps_per_epoch)
        try:
            stats = search_epoch(run, epoch, advance)
        except NonFiniteLossError as e:
            where = f"; the last good checkpoint is kept in {run_dir / 'checkpoints'} (epoch {epoch})" \
                if run_dir and (run_dir / "checkpoints" / f"epoch-{epoch:04d}.json").exists() else ""
            raise NonFiniteLossError(f"{e}: the search stopped{where}; lower the learning rate and rerun") from None
        if not stats:  # every step of the epoch was skipped: nothing to report, nothing to save
            continue
        record = epoch_record(run, epoch, stats, time.time() - t0)
        records.append(record)
        if run_dir is not None and run.rank == 0:
            runs.append_metrics(run_dir / "metrics.jsonl", record)
            state = {"search": run.search.state_dict(), "rng": runs.rng_state()}
            val = -1.0 if record["val_acc"] is None else record["val_acc"]
            meta = {"epoch": epoch + 1, "best_val": max(best_val, val),
                    "bsnet_version": bsnet.__version__}
            runs.save_epoch_checkpoint(run_dir / "checkpoints", epoch + 1, state, meta)
            if val > best_val:
                runs.save_checkpoint(run_dir / "checkpoints", "best", state, meta)
        best_val = max(best_val, -1.0 if record["val_acc"] is None else record["val_acc"])
    return records


# ---- all of it, in a run directory ---------------------------------------------------------------------------
def run_search(config: RunConfig, out: str | Path | None = None, *, model: ModelSource = None,
               resume: bool = False, overwrite: bool = False, progress: Progress = no_progress,
               warn: Callable[[str], None] = warnings.warn) -> tuple[Architecture, Path] | None:
    """Search as `config` says and write the run directory `out` (default: the next `runs/search-NNN`); with
    `resume`, continue the run in `out` from its last intact checkpoint (`config` must be the one it was started
    with; its device may change); with `overwrite`, replace the run in `out` once the new one has its first
    checkpoint, and only what bsnet wrote there. The run directory is locked while the search runs
    (`bsnet.rundir`). Returns the architecture and the run directory (None on the ranks > 0 of a torchrun group,
    which write nothing).

    Raises:
        ConfigError, RunDirError, ValueError: bad configuration, or an occupied or missing run directory.
        NonFiniteLossError: the loss diverged (the last good checkpoint is kept).
        BudgetError: no connected architecture meets every budget.
    """
    run = build_run(config, model)
    with contextlib.ExitStack() as stack:
        place = _open_run_dir(run, out, resume, overwrite, stack)
        return _search_in(run, place, resume, progress, warn)


def _open_run_dir(run: SearchRun, out: str | Path | None, resume: bool, overwrite: bool,
                  stack: contextlib.ExitStack) -> rundir.RunPlace:
    """Rank 0 opens (and locks, until `stack` closes) the run directory; the other ranks learn where it is, or
    rank 0's refusal."""
    prepared: Any = None
    if run.rank == 0:
        try:
            place = stack.enter_context(rundir.open_run(out, resume=resume, overwrite=overwrite))
            if resume:
                _check_same_run(run.config, place.path)
            prepared = ("ok", str(place.path), place.staging and str(place.staging))
        except (runs.RunDirError, ConfigError) as e:
            prepared = ("error", str(e), None)
    status, where, staging = distributed.broadcast(prepared)
    if status == "error":
        raise runs.RunDirError(where)
    return rundir.RunPlace(Path(where), staging and Path(staging))


def _search_in(run: SearchRun, place: rundir.RunPlace, resume: bool, progress: Progress,
               warn: Callable[[str], None]) -> tuple[Architecture, Path] | None:
    config, main_rank = run.config, run.rank == 0
    assert config is not None
    run_dir = place.staging or place.path
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
        rundir.claim(run_dir, "config.yaml", "metrics.jsonl", "checkpoints/")
        runs.write_yaml(run_dir / "config.yaml", config.to_dict())
    if place.staging is not None:  # --overwrite: the old run stays until the new one has its first checkpoint
        records: list[dict[str, Any]] = []
        while not records and start < config.epochs:
            records = run_epochs(run, config.epochs, run_dir=run_dir, start=start, best_val=best_val,
                                 progress=progress, stop=start + 1)
            start, best_val = start + 1, max([best_val, *(r["val_acc"] for r in records)])
        if main_rank:
            rundir.commit_overwrite(place)
        run_dir = place.path
    run_epochs(run, config.epochs, run_dir=run_dir, start=start, best_val=best_val, progress=progress)
    _dump_rank_state(run)
    if not main_rank:  # rank 0 alone evaluates, fine-tunes and writes: nothing to wait for
        distributed.teardown()
        return None
    try:
        outcome = finish(run, config.finetune_epochs, select=config.select, temperature=config.select_temperature,
                         progress=progress)
        arch = found_architecture(run, outcome, epochs=config.epochs, parallel_workers=config.parallel_workers)
        rundir.claim(run_dir, *rundir.SEARCH_OUTPUTS)
        write_run(run_dir, run, outcome, arch)
    finally:
        distributed.teardown()
    return arch, run_dir


def _check_same_run(config: RunConfig, run_dir: Path) -> None:
    """A resumed run goes on as it was configured: any other setting but the device is refused, not ignored."""
    recorded = RunConfig(**read_config_file(run_dir / "config.yaml")).to_dict()
    now = yaml.safe_load(yaml.safe_dump(config.to_dict()))  # as config.yaml would hold it
    for key, value in now.items():
        if key != "device" and value != recorded[key]:
            raise ConfigError(f"--resume continues the run as it was configured: {key} is {recorded[key]!r} in "
                              f"its config.yaml, not {value!r} (start a new run to change it)")


def _dump_rank_state(run: SearchRun) -> None:
    """Test-only (BSNET_TEST_RANK_STATE_DIR): every rank writes its weights, gates and λ, to compare ranks."""
    where = os.environ.get("BSNET_TEST_RANK_STATE_DIR")
    if where:
        from safetensors.torch import save_file
        state = {f"net.{k}": v.contiguous() for k, v in run.net.state_dict().items()}
        state.update({"gates": run.search.gates.logits.detach().contiguous(),
                      "lambdas": run.search.lambdas.contiguous()})
        save_file(state, str(Path(where) / f"rank{run.rank}.safetensors"))
