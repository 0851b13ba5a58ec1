"""CIFAR-10 benchmark (the protocol of issue 5): is the found architecture better than the plain ResNet of the
same FLOPs, and than random architectures of the super network that meet the same budget?

Protocol, identical for every network:

* Data: CIFAR-10 from the shared JPEG tarball (`../shared/datasets/cifar10-jpeg.tar.gz`, extracted once into the
  user cache as `benchmarks/data.py` does). 5,000 validation images (500 per class) are held out of the 50,000
  training images by `load_dataset("cifar10", folder, val_size=5000, seed=0)`; the 10,000 training images are a
  stratified, seeded (seed 0) subset of the remaining 45,000; the test set is all 10,000 test
  images. Inputs are normalised with the 45,000 remaining training images' per-channel statistics (what
  `load_dataset` computes); training batches get the standard augmentation (4-pixel pad, random crop, flip).
* Training recipe: `bsnet.train.train_network` with `TrainConfig(epochs=15, batch_size=128, lr=0.1,
  momentum=0.9, weight_decay=5e-4, schedule="cosine")`, from a fresh initialisation
  (`bsnet.train.reset_parameters(module, seed)`), seeds 0 and 1 (initialisation and data order). Reported:
  test accuracy of the last epoch's weights, mean over the seeds, and the spread (max - min) of the seeds.
* A difference between two networks smaller than the larger of their two seed spreads is reported as a tie.

Per budget (one per invocation: `--budget-index 0|1|2` for the FLOPs of ResNet-8 / -14 / -20), three networks:

* `bsnet`: `BudgetedSearch` of the `resnet_fabric` default (16/32/64 channels, 3 blocks per stage, cross-stage
  shortcuts) under the budget `FLOPs <= FlopsCost()(net, resnet_mask(net, d))`, 10 epochs on the same 10,000
  training images (SearchConfig defaults, batch 128, one search, seed 0). Then the random baseline's own
  selection: the found architecture (`search.found()`) and 2 samples of the learnt gates at temperature 3 (logits
  divided by 3, pruned, connected, within [0.8, 1] x budget) are each trained for the selection epochs (seed 0);
  the best on the whole validation split is exported with `bsnet.export_module`, re-initialised and trained with
  the recipe and both seeds.
* `resnet`: the plain ResNet-d as a sub-graph of the fabric (`resnet_mask`), exported, re-initialised, trained.
* `random`: 3 random connected architectures of the fabric meeting the budget (gates kept independently with a
  probability steered on the fly, `net.graph.prune`d; disconnected and over-budget ones are rejected, and so
  are those under 0.8 x budget, so that the baseline is not handicapped by spending far less). Each candidate
  is trained with the recipe shortened to 3 epochs (seed 0); the best on the whole validation split is then
  trained with the full recipe and both seeds, like the others.

The epochs (15 per training, 10 of search, 3 per random candidate; `--epochs`, `--search-epochs`,
`--selection-epochs`) are chosen so that the most expensive part, ResNet-20's (6 full trainings of ~82 MFLOPs
networks, 3 short ones, the search), fits in about an hour on 2 idle cores; each part prints its own estimate.

During training, 500 validation images are evaluated after each epoch (a learning curve, which does not change
the training); the whole validation split and the test set are evaluated once, at the end.

Each finished part is written to `benchmarks/results/cifar10/resnet<d>.json`. `--table` assembles every part
present into a markdown table (printed, and written to `table.md`) and a Pareto plot (`pareto.png`).

Figures, printed as `cifar10.resnet<d>.<name>=<value>` lines: `budget_flops`, per network `flops`, `params`,
`test_acc.seed<s>`, `test_acc_mean`, `test_acc_spread`, the verdicts `bsnet_vs_resnet` and `bsnet_vs_random`,
`part_s`, `cpu_per_wall` (process CPU seconds per wall second: about the thread count on an idle machine; lower:
other work slowed this run), `estimate_full_part_min` (a full part's duration extrapolated from this run's
measured throughput, so as slow as the machine was during this run), `estimate_idle_min` (the same on an
idle machine: each training x its own run's cpu_per_wall / threads, the search x the part's; exact for 1 thread,
a lower bound for more) and `estimate_fits_60min` (the latter within an hour).

Run (from the repository root), one budget at a time, then the table:

    .venv/bin/python benchmarks/cifar10.py --budget-index 0      # ResNet-8 FLOPs
    .venv/bin/python benchmarks/cifar10.py --budget-index 1      # ResNet-14 FLOPs
    .venv/bin/python benchmarks/cifar10.py --budget-index 2      # ResNet-20 FLOPs
    .venv/bin/python benchmarks/cifar10.py --table

`--select K` (default 3) sets the number of bsnet's candidates (the found architecture and K - 1 samples of its
gates at `--temperature`, default 3; the part records them under `networks.bsnet.candidates`); `--select 1`
retrains the found architecture alone.

`--keep-baselines` reruns a part's bsnet search and training only (after a change to the search) and keeps the
ResNet and random rows of that part's earlier result: they are seeded on their own and use nothing of the search.
The part's JSON then records the run that trained them under `baselines_from`.

`--quick` runs a smoke test (512 training, 200 validation, 500 test images, 1 epoch, same widths: ~1 min) into
`benchmarks/results/cifar10-quick/`: its accuracies are meaningless, it proves the pipeline and measures the
throughput the full-run estimate is made from.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import bsnet
from bsnet.architecture import kept_names
from bsnet.budgets import Budget
from bsnet.data import DataSplits, Split, batches, load_dataset, num_batches
from bsnet.data.base import stratified_split
from bsnet.fabrics.resnet_fabric import resnet_mask
from bsnet.pipeline import SearchRun, run_epochs
from bsnet.search import BudgetedSearch, SearchConfig
from bsnet.train import TrainConfig, accuracy, reset_parameters, train_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import TARBALL, default_folder, extract  # noqa: E402  (benchmarks/data.py: the shared tarball)

RESULTS = Path(__file__).resolve().parent / "results"
DEPTHS = (8, 14, 20)
METHODS = ("bsnet", "resnet", "random")
PART_LIMIT_MIN = 60


@dataclass
class Protocol:
    n_train: int = 10_000
    n_val: int = 5_000
    n_test: int | None = None  # None: the whole test set
    epochs: int = 15
    search_epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    seeds: tuple[int, ...] = (0, 1)
    random_candidates: int = 3
    selection_epochs: int = 3  # the random candidates' training for the choice on validation (seed 0)
    random_low: float = 0.8
    monitor_val: int = 500  # validation images evaluated after each epoch (the full split once, at the end)
    data_seed: int = 0


FULL = Protocol()
# The records were made before `fill_budgets` was on by default: the search as they ran it, so the commands
# reproduce them (cifar10_width.py's parts measure it on).
RECORDED_SEARCH = {"fill_budgets": False}
QUICK = Protocol(n_train=512, n_val=200, n_test=500, epochs=1, search_epochs=1, selection_epochs=1, monitor_val=100)


# ---- shared helpers (also used by benchmarks/own_model.py) -------------------------------------------------
def machine_line(**extra: object) -> str:
    items = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
             "cpus": os.cpu_count(), "loadavg_1min": f"{os.getloadavg()[0]:.2f}", **extra}
    return " ".join(f"{k}={v}" for k, v in items.items())


def save_result(out: Path, result: dict, quick: bool) -> None:
    """Write one finished part's results (temporary file, then rename: a part is kept whole or not at all)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(f"written: {out}")
    if quick:
        print("NOTE: --quick is a smoke run; its accuracies are not results.")


def results_folder(quick: bool) -> Path:
    """Where the parts are written: `--quick` smoke runs apart from the results."""
    return RESULTS / ("cifar10-quick" if quick else "cifar10")


def machine_info(device: str = "cpu") -> dict:
    gpu = {"device": device, **({"gpu": torch.cuda.get_device_name(device)} if device.startswith("cuda") else {})}
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "loadavg_1min_end": os.getloadavg()[0], **gpu}


def cifar_folder(data_dir: Path | None) -> Path:
    """The extracted CIFAR-10 image folder: `data_dir`, or the shared tarball extracted into the user cache."""
    folder = data_dir or default_folder()
    if not folder.is_dir():
        if data_dir is not None or not TARBALL.is_file():
            raise SystemExit(f"error: {folder} does not exist and {TARBALL} is absent")
        print(f"extract_s={extract(TARBALL, folder):.2f}", flush=True)
    return folder


def subset(split: Split, n: int | None, seed: int) -> Split:
    """A stratified, seeded subset of about `n` examples (the whole split if `n` is None or too large)."""
    if n is None or n >= len(split):
        return split
    _, idx = stratified_split(split.y_stored, n, seed)
    return Split(split.x_stored[idx], split.y_stored[idx], split.mean, split.std)


def protocol_data(folder: Path, n_train: int, n_val: int, n_test: int | None, seed: int) -> DataSplits:
    """Validation held out of the 50,000 training images, then a training subset of the rest, and the test set
    (or a subset of it)."""
    data = load_dataset("cifar10", folder, val_size=n_val, seed=seed)
    return DataSplits(data.name, subset(data.train, n_train, seed), data.val, subset(data.test, n_test, seed),
                      num_classes=data.num_classes, task=data.task, augment=data.augment, classes=data.classes)


def search_epochs(search: BudgetedSearch, data: DataSplits, epochs: int, batch_size: int, seed: int,
               log: Callable[[str, object], None]) -> dict:
    """`bsnet search`'s epoch loop (`bsnet.pipeline.run_epochs`: shuffled, augmented, drop_last batches, the most
    probable architecture scored on validation after each epoch); returns timing and history."""
    run = SearchRun(search, data, batch_size, seed, search.device)
    history, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        done = run_epochs(run, epoch + 1, start=epoch)
        if not done:  # every step of the epoch had a non-finite loss and was skipped
            log(f"search.epoch{epoch + 1}", "skipped")
            continue
        rec, names = done[0], run.cost_names
        rec.update(expected_cost_over_budget=[rec["expected_cost"][n] / lim for n, lim in zip(names, search.limits)],
                   mode_cost_over_budget=[rec["mode_cost"][n] / lim for n, lim in zip(names, search.limits)],
                   seconds=time.perf_counter() - t0)
        history.append(rec)
        log(f"search.epoch{epoch + 1}", f"loss={rec['train_loss']:.3f} acc={rec['train_acc']:.3f} "
            f"val={rec['val_acc']:.3f} expected_cost/budget={rec['expected_cost_over_budget'][0]:.3f} "
            f"mode_cost/budget={rec['mode_cost_over_budget'][0]:.3f} s={rec['seconds']:.0f}")
    return {"history": history, "seconds": time.perf_counter() - t0,
            "images": epochs * run.steps_per_epoch * batch_size}


def train_and_test(module: torch.nn.Module, data: DataSplits, cfg: TrainConfig, *, reset: bool,
                   monitor_val: int | None = None, kind: str = "full", device: str = "cpu") -> dict:
    """Train with the common recipe (from a fresh initialisation if `reset`), then measure validation and test
    accuracy; timings for estimates. During training only `monitor_val` validation images are evaluated after
    each epoch (the learning curve: it does not change the training); the whole validation split once at the end."""
    if reset:
        reset_parameters(module, cfg.seed)
    monitor = dataclasses.replace(data, val=subset(data.val, monitor_val, 0))
    t = t_run = time.perf_counter()
    c_run = time.process_time()
    curve = []
    # Progress on stderr: a part trains for up to an hour.
    for rec in train_network(module, monitor, cfg, device=device):
        curve.append(rec)
        print(f"  {kind} training, seed {cfg.seed}: epoch {rec['epoch'] + 1}/{cfg.epochs} train_acc="
              f"{rec['train_acc']:.3f} val_acc({len(monitor.val)})={rec['val_acc']:.3f} "
              f"{time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t
    t = time.perf_counter()
    val_acc = accuracy(module, batches(data.val, 256), device)
    test_acc = accuracy(module, batches(data.test, 256), device)
    eval_s = time.perf_counter() - t
    eval_rate = eval_s / (len(data.val) + len(data.test))
    train_rate = max(wall - eval_rate * len(monitor.val) * cfg.epochs, 0.0) / (len(data.train) * cfg.epochs)
    return {"seed": cfg.seed, "kind": kind, "epochs": cfg.epochs, "test_acc": test_acc, "val_acc": val_acc,
            "train_acc": curve[-1]["train_acc"], "train_loss": curve[-1]["train_loss"],
            "monitor_val_curve": [r["val_acc"] for r in curve], "wall_s": wall, "eval_s": eval_s,
            "train_s_per_image": train_rate, "eval_s_per_image": eval_rate,
            # what share of its threads this run had: kept baselines are re-estimated with their own run's
            "cpu_per_wall": (time.process_time() - c_run) / (time.perf_counter() - t_run),
            "threads": torch.get_num_threads()}


def run_estimate(run: dict, proto: Protocol, n_train: int, n_val: int, n_test: int,
                 train_rate: float | None = None) -> float:
    """Seconds `run` takes under `proto` with `n_train`/`n_val`/`n_test` images, at its measured throughput."""
    epochs = proto.selection_epochs if run["kind"] == "selection" else proto.epochs
    rate = run["train_s_per_image"] if train_rate is None else train_rate
    monitor = min(proto.monitor_val, n_val)
    return rate * n_train * epochs + run["eval_s_per_image"] * (monitor * epochs + n_val + n_test)


def idle_estimate(seconds: float, cpu_per_wall: float, threads: int | None = None) -> float:
    """`seconds` measured on a busy machine, projected to an idle one: the process's CPU time spread over its
    `threads` (default: this process's) as if they ran perfectly in parallel (exact for 1 thread, a lower bound for
    more)."""
    return seconds * min(cpu_per_wall / (threads or torch.get_num_threads()), 1.0)


def summarise(runs: list[dict]) -> dict:
    accs = [r["test_acc"] for r in runs]
    return {"test_acc_mean": statistics.fmean(accs), "test_acc_spread": max(accs) - min(accs),
            "val_acc_mean": statistics.fmean(r["val_acc"] for r in runs)}


def verdict(a: dict, b: dict, names: tuple[str, str]) -> str:
    """`a` against `b`: the better one's name, or "tie" when the difference is within the larger seed spread."""
    diff = a["test_acc_mean"] - b["test_acc_mean"]
    if abs(diff) <= max(a["test_acc_spread"], b["test_acc_spread"]):
        return "tie"
    return f"{names[0] if diff > 0 else names[1]} better"


def pm(entry: dict) -> str:
    """Mean ± half the seeds' range, in percent."""
    return f"{100 * entry['test_acc_mean']:.2f} ± {50 * entry['test_acc_spread']:.2f}"


# ---- random architectures ------------------------------------------------------------------------------------
def draw_random(net: bsnet.SuperNetwork, limit: float, count: int, low: float, gen: torch.Generator,
                max_tries: int = 20_000) -> list[torch.Tensor]:
    """`count` distinct pruned, connected masks with FLOPs in [low x limit, limit]; the lower bound is relaxed by
    0.1 each time `max_tries` draws found too few."""
    cost = bsnet.FlopsCost()
    masks, seen, p, step = [], set(), 0.5, 0.02
    while low >= 0:
        for _ in range(max_tries):
            m = net.graph.prune((torch.rand(net.num_gates, generator=gen) < p).float())
            if not bool(net.graph.connected(m)):
                p = min(p + step, 0.99)
                continue
            c = float(cost(net, m))
            p = min(p + step, 0.99) if c < (1 + low) / 2 * limit else max(p - step, 0.01)
            key = tuple(m.tolist())
            if low * limit <= c <= limit and key not in seen:
                seen.add(key)
                masks.append(m)
                if len(masks) == count:
                    return masks
        low -= 0.1
    raise RuntimeError(f"found only {len(masks)} random architectures within the budget")


# ---- one budget ------------------------------------------------------------------------------------------------
def network_entry(method: str, net: bsnet.SuperNetwork, mask: torch.Tensor, runs: list[dict], **extra) -> dict:
    return {"method": method, "kept": kept_names(mask, net.gate_names),
            "flops": float(bsnet.FlopsCost()(net, mask)), "params": float(bsnet.ParamsCost()(net, mask)),
            "runs": runs, **summarise(runs), **extra}


def train_recipe(module: torch.nn.Module, data: DataSplits, proto: Protocol, seed: int, kind: str = "full",
                 device: str = "cpu") -> dict:
    """The common recipe from a fresh initialisation (`kind="selection"`: shortened to the selection epochs)."""
    cfg = TrainConfig(epochs=proto.selection_epochs if kind == "selection" else proto.epochs,
                      batch_size=proto.batch_size, lr=proto.lr, seed=seed)
    return train_and_test(module, data, cfg, reset=True, monitor_val=proto.monitor_val, kind=kind, device=device)


def budgeted_search(depth: int, proto: Protocol, data: DataSplits, config: SearchConfig,
                    epochs: int, device: str = "cpu") -> tuple[bsnet.SuperNetwork, float, BudgetedSearch]:
    """The fabric (seeded as every part's), the FLOPs budget of ResNet-`depth`, and a search under it, not run."""
    torch.manual_seed(proto.seeds[0])
    net = bsnet.create_supernet("resnet_fabric")
    limit = float(bsnet.FlopsCost()(net, resnet_mask(net, depth)))
    steps = num_batches(data.train, proto.batch_size, drop_last=True)
    return net, limit, BudgetedSearch(net, [Budget(bsnet.FlopsCost(), limit)], config, steps_per_epoch=steps,
                                      epochs=epochs, device=device)


def train_baselines(depth: int, limit: float, proto: Protocol, train: Callable[..., dict]) -> dict:
    """The `resnet` and `random` entries of one part: every training seeded, nothing shared with the search."""
    # resnet: the plain ResNet-d sub-graph, re-initialised.
    fresh = bsnet.create_supernet("resnet_fabric")
    mask = resnet_mask(fresh, depth)
    return {"resnet": network_entry("resnet", fresh, mask,
                                    [train(bsnet.export_module(fresh, mask), seed) for seed in proto.seeds]),
            "random": random_entry(depth, limit, proto, train)}


def random_entry(depth: int, limit: float, proto: Protocol, train: Callable[..., dict],
                 draw_seed: int | None = None) -> dict:
    """The `random` entry: candidates (drawn with `draw_seed`, the part's own 1000 + depth by default) trained for
    `selection_epochs` with the first seed; the best on validation is then trained with the full recipe and every
    seed, like the others."""
    fresh = bsnet.create_supernet("resnet_fabric")
    gen = torch.Generator().manual_seed(1000 + depth if draw_seed is None else draw_seed)
    candidates = draw_random(fresh, limit, proto.random_candidates, proto.random_low, gen)
    best, selection = select_on_validation(fresh, candidates, train, proto.seeds[0])
    return network_entry(
        "random", fresh, candidates[best], [train(bsnet.export_module(fresh, candidates[best]), seed)
                                            for seed in proto.seeds], chosen=best,
        candidates=candidate_records(fresh, candidates, selection))


def select_on_validation(net: bsnet.SuperNetwork, candidates: list[torch.Tensor], train: Callable[..., dict],
                         seed: int) -> tuple[int, list[dict]]:
    """Each candidate trained alone for the selection epochs with `seed`: the index of the best on validation, and
    the runs (the random baseline's choice, and bsnet's with `--select`)."""
    runs = [train(bsnet.export_module(net, m), seed, "selection") for m in candidates]
    return max(range(len(candidates)), key=lambda i: runs[i]["val_acc"]), runs


def candidate_records(net: bsnet.SuperNetwork, candidates: list[torch.Tensor], runs: list[dict]) -> list[dict]:
    return [{"kept": kept_names(m, net.gate_names), "flops": float(bsnet.FlopsCost()(net, m)), "selection": r}
            for m, r in zip(candidates, runs)]


def run_part(depth: int, proto: Protocol, data: DataSplits, emit: Callable[[str, object], None],
             target: Protocol = FULL, baselines: dict | None = None, device: str = "cpu", select: int = 3,
             temperature: float = 3.0) -> dict:
    """One budget under `proto`; the duration of the same part under `target` is estimated from its timings.
    `baselines`: the `resnet` and `random` entries of an earlier run of this part, kept instead of trained again.
    `select` > 1: bsnet picks among the found architecture and `select` - 1 samples of its gates at `temperature`,
    each trained for the selection epochs, the best on validation (the random baseline's own selection)."""
    t_part, c_part = time.perf_counter(), time.process_time()

    def train(module: torch.nn.Module, seed: int, kind: str = "full") -> dict:
        return train_recipe(module, data, proto, seed, kind, device)

    # bsnet: search, then retrain the found architecture from scratch with the recipe.
    config = SearchConfig(seed=proto.seeds[0], **RECORDED_SEARCH)
    net, limit, search = budgeted_search(depth, proto, data, config, proto.search_epochs, device)
    full = float(bsnet.FlopsCost()(net, net.full_mask()))
    emit("budget_flops", f"{limit:.0f}")
    emit("budget_fraction_of_fabric", f"{limit / full:.3f}")
    s = search_epochs(search, data, proto.search_epochs, proto.batch_size, proto.seeds[0], emit)
    found = search.found()
    chosen, selection = found.mask, {}
    if select > 1:
        candidates = search.candidates(select, temperature)  # found.mask first
        best, runs = select_on_validation(net, candidates, train, proto.seeds[0])
        chosen = candidates[best]
        emit("bsnet.selection", " ".join(f"{r['val_acc']:.4f}" for r in runs) + f" chosen={best}")
        selection = {"temperature": temperature, "chosen": best,
                     "candidates": candidate_records(net, candidates, runs)}
    entries = {"bsnet": network_entry(
        "bsnet", net, chosen, [train(bsnet.export_module(net, chosen), seed) for seed in proto.seeds],
        projected=found.projected, repaired=found.repaired, dropped=found.dropped,
        gate_probs=dict(zip(net.gate_names, search.gates.probs().tolist())), **selection)}

    if baselines is not None:  # they depend on neither the search nor its settings: seeded on their own
        entries.update(baselines)
    else:
        entries.update(train_baselines(depth, limit, proto, train))

    for name, e in entries.items():
        emit(f"{name}.flops", f"{e['flops']:.0f}")
        emit(f"{name}.params", f"{e['params']:.0f}")
        for r in e["runs"]:
            emit(f"{name}.test_acc.seed{r['seed']}", f"{r['test_acc']:.4f}")
        emit(f"{name}.test_acc_mean", f"{e['test_acc_mean']:.4f}")
        emit(f"{name}.test_acc_spread", f"{e['test_acc_spread']:.4f}")
    if entries["bsnet"]["projected"]:
        emit("bsnet.projected_dropped", ",".join(entries["bsnet"]["dropped"]))
    verdicts = {f"bsnet_vs_{o}": verdict(entries["bsnet"], entries[o], ("bsnet", o)) for o in ("resnet", "random")}
    for k, v in verdicts.items():
        emit(k, v)

    part_s = time.perf_counter() - t_part
    cpu_per_wall = (time.process_time() - c_part) / part_s
    # What a full part would take at the measured throughputs: every training and the search, scaled to the full
    # protocol's image counts and epochs. In a short run (`proto` is not `target`) the search is costed at its
    # rate (an upper bound: its gates are still near the full fabric) and bsnet's trainings at the larger of their
    # own and ResNet's rate (a converged search finds an architecture near the budget). Each piece is projected to
    # an idle machine with the CPU share of the run that measured it (kept baselines: the earlier run's).
    f, threads = target, torch.get_num_threads()
    n_train, n_val, n_test = f.n_train, f.n_val, f.n_test or 10_000
    resnet_rate = max(r["train_s_per_image"] for r in entries["resnet"]["runs"])
    pieces = [(s["seconds"] / max(s["images"], 1) * (n_train // f.batch_size * f.batch_size) * f.search_epochs,
               cpu_per_wall, threads)]
    for name, e in entries.items():
        for r in e["runs"] + [c["selection"] for c in e.get("candidates", [])]:
            rate = max(r["train_s_per_image"], resnet_rate) if name == "bsnet" and proto != target else None
            pieces.append((run_estimate(r, f, n_train, n_val, n_test, rate), r.get("cpu_per_wall", cpu_per_wall),
                           r.get("threads", threads)))
    estimate = sum(p[0] for p in pieces)
    idle = sum(idle_estimate(sec, cpu, n) for sec, cpu, n in pieces)
    emit("part_s", f"{part_s:.1f}")
    emit("cpu_per_wall", f"{cpu_per_wall:.2f}")
    emit("search_ms_per_image", f"{1e3 * s['seconds'] / max(s['images'], 1):.3f}")
    for name, e in entries.items():
        emit(f"{name}.train_ms_per_image", f"{1e3 * statistics.fmean(r['train_s_per_image'] for r in e['runs']):.3f}")
    emit("estimate_full_part_min", f"{estimate / 60:.1f}")
    emit("estimate_for", f"train:{n_train} val:{n_val} test:{n_test} epochs:{f.epochs} "
         f"search_epochs:{f.search_epochs} selection_epochs:{f.selection_epochs} threads:{torch.get_num_threads()}")
    emit("estimate_idle_min", f"{idle / 60:.1f}")
    emit("estimate_fits_60min", "yes" if idle / 60 <= PART_LIMIT_MIN else "no")
    return {"depth": depth, "budget_flops": limit, "fabric_flops": full, "networks": entries, "verdicts": verdicts,
            "search": {"epochs": proto.search_epochs, "seconds": s["seconds"], "images": s["images"],
                       "config": dataclasses.asdict(search.config), "history": s["history"]},
            "data": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "part_s": part_s, "cpu_per_wall": cpu_per_wall, "estimate_full_part_s": estimate,
            "estimate_idle_s": idle}


# ---- the table ---------------------------------------------------------------------------------------------
def table(results_dir: Path) -> int:
    parts = sorted((json.loads(p.read_text()) for p in results_dir.glob("resnet*.json")), key=lambda r: r["depth"])
    if not parts:
        print(f"error: no finished part in {results_dir} (run --budget-index 0, 1, 2 first)", file=sys.stderr)
        return 2
    quick = any(p.get("quick") for p in parts)
    labels = {"resnet": "ResNet-{d}", "random": "random (best of {n} on val.)"}
    lines = ["| budget (FLOPs of) | network | MFLOPs | params (k) | test acc. % (mean ± half range, "
             f"{len(parts[0]['protocol']['seeds'])} seeds) | vs bsnet |",
             "|---|---|---|---|---|---|"]
    for p in parts:
        d, nets = p["depth"], p["networks"]
        for m in METHODS:
            e = nets[m]
            vs = "" if m == "bsnet" else p["verdicts"][f"bsnet_vs_{m}"]
            label = bsnet_label(e) if m == "bsnet" else labels[m].format(d=d, n=p["protocol"]["random_candidates"])
            lines.append(f"| ResNet-{d} ({p['budget_flops'] / 1e6:.1f} M) | {label} | {e['flops'] / 1e6:.1f} | "
                         f"{e['params'] / 1e3:.1f} | {pm(e)} | {vs} |")
    pr = parts[0]["protocol"]
    notes = [f"CIFAR-10, {parts[0]['data']['train']} training / {parts[0]['data']['val']} validation / "
             f"{parts[0]['data']['test']} test images; {pr['epochs']} epochs, batch {pr['batch_size']}, SGD lr "
             f"{pr['lr']} cosine, seeds {', '.join(map(str, pr['seeds']))}; search {pr['search_epochs']} epochs; "
             f"random: best on validation of {pr['random_candidates']} candidates trained {pr['selection_epochs']} "
             "epochs. A difference within the larger seed range is a tie.",
             "Parts (wall time, torch threads): " + ", ".join(part_time(p) for p in parts)
             + "; machine: " + ", ".join(sorted({f"{p['machine']['cpus']} cpus" for p in parts}))]
    if quick:
        notes.insert(0, "**SMOKE RUN (--quick): these figures are not results.**")
    text = "\n".join(lines + [""] + notes) + "\n"
    print(text)
    (results_dir / "table.md").write_text(text)
    pareto(parts, results_dir / "pareto.png", quick)
    print(f"written: {results_dir / 'table.md'}, {results_dir / 'pareto.png'}")
    return 0


def bsnet_label(entry: dict) -> str:
    """What the part's bsnet row is: the found architecture alone (`--select 1`), or
    the best on validation of it and its tempered samples."""
    k = len(entry.get("candidates", []))
    if k < 2:
        return "bsnet (found, retrained)"
    return f"bsnet (found + {k - 1} samples at T={entry['temperature']:g}, best on val.)"


def part_time(p: dict) -> str:
    first = p.get("baselines_from") or p
    text = f"ResNet-{p['depth']} {first['part_s'] / 60:.0f} min at {first['machine']['threads']}"
    if "baselines_from" in p:
        text += f" (bsnet rerun, baselines kept: {p['part_s'] / 60:.0f} min at {p['machine']['threads']})"
    return text


def pareto(parts: list[dict], path: Path, quick: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    style = {"bsnet": ("o-", "bsnet"), "resnet": ("s--", "ResNet-8/14/20"), "random": ("^:", "random")}
    for m in METHODS:
        xs = [p["networks"][m]["flops"] / 1e6 for p in parts]
        ys = [100 * p["networks"][m]["test_acc_mean"] for p in parts]
        err = [50 * p["networks"][m]["test_acc_spread"] for p in parts]
        ax.errorbar(xs, ys, yerr=err, fmt=style[m][0], capsize=3, label=style[m][1])
    for p in parts:
        ax.axvline(p["budget_flops"] / 1e6, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("MFLOPs per image (grey lines: the budgets)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"CIFAR-10, {parts[0]['data']['train']} training images, mean of "
                 f"{len(parts[0]['protocol']['seeds'])} seeds (bars: their range)"
                 + (" - SMOKE RUN: not results" if quick else ""), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_search(depth: int, proto: Protocol, data: DataSplits, record: Path, emit: Callable[[str, object], None],
                 device: str, select: int, temperature: float) -> int:
    """The part's search alone: whether it finds the architecture and candidates its record holds (exit 1 if not)."""
    rec = json.loads(record.read_text())["networks"]["bsnet"]
    config = SearchConfig(seed=proto.seeds[0], **RECORDED_SEARCH)
    net, _, search = budgeted_search(depth, proto, data, config, proto.search_epochs, device)
    search_epochs(search, data, proto.search_epochs, proto.batch_size, proto.seeds[0], emit)
    found = kept_names(search.found().mask, net.gate_names)
    candidates = [kept_names(m, net.gate_names) for m in search.candidates(select, temperature)]
    same_found = found == rec["candidates"][0]["kept"] if "candidates" in rec else found == rec["kept"]
    same_candidates = candidates == [c["kept"] for c in rec.get("candidates", [])] or select == 1
    emit("check.found", ",".join(found))
    for i, c in enumerate(candidates[1:], 1):
        emit(f"check.candidate{i}", ",".join(c))
    emit("check.found_matches_record", "yes" if same_found else "no")
    emit("check.candidates_match_record", "yes" if same_candidates else "no")
    return 0 if same_found and same_candidates else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-index", type=int, choices=range(len(DEPTHS)),
                        help="0, 1, 2: the FLOPs of ResNet-8, -14, -20")
    parser.add_argument("--table", action="store_true", help="assemble the finished parts into table and plot")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 epoch (figures not results)")
    parser.add_argument("--data-dir", type=Path, default=None, help="extracted CIFAR-10 image folder (default: the "
                        "shared tarball, extracted under the user cache)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default benchmarks/results/cifar10 (cifar10-quick with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (the protocol's), or cuda (figures from another "
                        "device are not the table's: the part records its device)")
    parser.add_argument("--select", type=int, default=3, metavar="K",
                        help="bsnet picks among the found architecture and K - 1 samples of its gates at "
                        "--temperature, each trained for the selection epochs, the best on validation (as random; "
                        "default 3; 1: the found one alone)")
    parser.add_argument("--temperature", type=float, default=3.0, help="of --select's samples (default 3)")
    parser.add_argument("--keep-baselines", action="store_true",
                        help="search and retrain bsnet only; keep the ResNet and random rows of this part's earlier "
                        "result (they do not depend on the search)")
    parser.add_argument("--check-search", action="store_true",
                        help="run this part's search alone and compare its found architecture and candidates with "
                        "the part's record (run at the thread count the record names)")
    parser.add_argument("--epochs", type=int, default=FULL.epochs, help="training epochs of every network")
    parser.add_argument("--search-epochs", type=int, default=FULL.search_epochs)
    parser.add_argument("--selection-epochs", type=int, default=FULL.selection_epochs,
                        help="training epochs of each random candidate before the choice on validation")
    args = parser.parse_args(argv)
    results_dir = args.results_dir or results_folder(args.quick)
    if args.table:
        return table(results_dir)
    if args.budget_index is None:
        parser.error("give --budget-index 0|1|2 (or --table)")
    if args.select < 1 or args.temperature <= 0:
        parser.error("--select takes K >= 1 and --temperature a positive number")
    if args.threads:
        torch.set_num_threads(args.threads)
    full = dataclasses.replace(FULL, epochs=args.epochs, search_epochs=args.search_epochs,
                               selection_epochs=args.selection_epochs)
    proto = QUICK if args.quick else full
    depth = DEPTHS[args.budget_index]
    earlier = None
    if args.keep_baselines:
        path = results_dir / f"resnet{depth}.json"
        if not path.is_file():
            print(f"error: --keep-baselines needs an earlier run of this part: {path} is missing", file=sys.stderr)
            return 2
        earlier = json.loads(path.read_text())
        if earlier["protocol"] != json.loads(json.dumps(dataclasses.asdict(proto))):
            print(f"error: --keep-baselines: {path} was run under another protocol", file=sys.stderr)
            return 2
    print(machine_line(budget=f"resnet{depth}", quick=args.quick), flush=True)
    t0 = time.perf_counter()
    folder = cifar_folder(args.data_dir)
    data = protocol_data(folder, proto.n_train, proto.n_val, proto.n_test, proto.data_seed)
    print(f"cifar10.data=train:{len(data.train)} val:{len(data.val)} test:{len(data.test)} "
          f"load_s={time.perf_counter() - t0:.1f}", flush=True)

    def emit(key: str, value: object) -> None:
        print(f"cifar10.resnet{depth}.{key}={value}", flush=True)

    if args.check_search:
        return check_search(depth, proto, data, results_dir / f"resnet{depth}.json", emit, args.device,
                            args.select, args.temperature)
    baselines = None if earlier is None else {m: earlier["networks"][m] for m in METHODS if m != "bsnet"}
    result = run_part(depth, proto, data, emit, target=full, baselines=baselines, device=args.device,
                      select=args.select, temperature=args.temperature)
    result.update(protocol=dataclasses.asdict(proto), quick=args.quick, machine=machine_info(args.device),
                  bsnet_version=bsnet.__version__)
    if earlier is not None:  # the run that trained the baselines (the first one, through successive reruns)
        result["baselines_from"] = earlier.get("baselines_from") or {
            k: earlier[k] for k in ("part_s", "machine", "bsnet_version")}
    save_result(results_dir / f"resnet{depth}.json", result, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
