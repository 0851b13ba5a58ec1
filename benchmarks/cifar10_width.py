"""CIFAR-10 from scratch on the width fabric: does bsnet's search beat random search at equal compute, and uniform
width?

The data and the training recipe are `benchmarks/cifar10.py`'s (10,000 training / 5,000 validation / the 10,000
test images, 15 epochs, one recipe for every network, augmentation, seeded initialisation). Budgets: the FLOPs of
ResNet-8 and of ResNet-20 (the plain fabric's `resnet_mask`). One part = one budget x one seed index i:

* `bsnet`: `BudgetedSearch` (defaults, seed i, 10 epochs) of `resnet_fabric width_groups=4 width_multiplier=2`, then
  its selection as in `cifar10.py` (the found architecture and 2 tempered samples of the gates that build other
  networks: width groups are interchangeable once re-initialised; each trained 3 epochs with training seed 2i, the
  best on validation); the pick is trained with training seeds 2i and 2i + 1. The CPU
  seconds of search + selection (`time.process_time`, every thread) are the compute budget of `random`.
* `random`: architectures of the same width fabric drawn with every gate at p = 0.5, pruned, redrawn while
  disconnected, outside [0.8, 1] x budget or already drawn (draw seed 2000 + 100 x depth + i); each trained 3
  epochs (training seed 2i) one after another until their summed CPU seconds (training and validation) reach
  bsnet's; k is how many. The best on validation is trained with training seeds 2i and 2i + 1.
* `uniform` (ResNet-8 budget only; at the ResNet-20 budget it is ResNet-20 itself): ResNet-20 with every width
  (stream and inner) scaled by one factor, the widest whose FLOPs meet the budget (stage channels c, 2c, 4c), one
  training (seed 2i).

`--table` assembles the parts: for each budget and method, the mean over seed indices of each index's mean over
training seeds, its standard error, and for random the mean k; the plain ResNets' and the depth-only search's rows
come from `benchmarks/results/cifar10/` (today's records, for reference). A win is a mean of the per-index paired
differences of at least 1.0 point and more than twice its standard error; anything less is a tie. Also per part:
bsnet's search + selection wall time / one training of its pick (search cost ratio). Parts whose search settings
differ from today's defaults (`--search-config`, `--search-epochs`, `--select`, `--without-found`: the selection's
networks tempered samples only; random and uniform rerun beside it, random at that search's compute) get rows of
their own, labelled;
the parts run before `fill_budgets` was on by default record `fill_budgets: false`.

    .venv/bin/python benchmarks/cifar10_width.py --budget-index 0 --seed-index 0   # ResNet-8 FLOPs, seed index 0
    .venv/bin/python benchmarks/cifar10_width.py --budget-index 1 --seed-index 0 --search-epochs 6 --select 2 \
        --without-found   # a variant: its own file and rows
    .venv/bin/python benchmarks/cifar10_width.py --table
    .venv/bin/python benchmarks/cifar10_width.py --budget-index 0 --seed-index 0 --quick   # smoke run, ~2 min
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import bsnet
from bsnet.architecture import kept_mask, kept_names
from bsnet.budgets import Budget
from bsnet.config import key_values
from bsnet.data import DataSplits, batches, num_batches
from bsnet.fabrics.resnet_fabric import resnet_mask
from bsnet.pipeline import SearchRun, run_epochs
from bsnet.search import BudgetedSearch, SearchConfig
from bsnet.train import accuracy, recalibrate_bn
from bsnet.width import kept_widths

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10 import (FULL, QUICK, RESULTS, Protocol, candidate_records, cifar_folder,  # noqa: E402
                     machine_info, machine_line, network_entry, protocol_data, save_result, search_epochs,
                     select_on_validation, train_recipe)

DEPTHS = (8, 20)
WIDTH = {"width_groups": 4, "width_multiplier": 2.0}
METHODS = ("bsnet", "random", "uniform")
WIN_POINTS = 1.0


def budget_flops(depth: int) -> float:
    """The FLOPs of the plain ResNet-`depth` (the budget of its part)."""
    net = bsnet.create_supernet("resnet_fabric")
    return float(bsnet.FlopsCost()(net, resnet_mask(net, depth)))


def training_seeds(i: int) -> tuple[int, int]:
    return 2 * i, 2 * i + 1


def timed(fn: Callable[[], dict]) -> dict:
    """`fn()`'s run record with the CPU seconds (every thread) it took."""
    c0 = time.process_time()
    run = fn()
    run["cpu_s"] = time.process_time() - c0
    return run


def draw_one(net: bsnet.SuperNetwork, limit: float, gen: torch.Generator, seen: set, max_tries: int = 100_000
             ) -> torch.Tensor:
    """One architecture with every gate at p = 0.5, pruned, connected, within [0.8, 1] x `limit`, not in `seen`."""
    cost = bsnet.FlopsCost()
    for _ in range(max_tries):
        m = net.graph.prune((torch.rand(net.num_gates, generator=gen) < 0.5).float())
        key = tuple(m.tolist())
        if key in seen or not bool(net.graph.connected(m)) or not 0.8 * limit <= float(cost(net, m)) <= limit:
            continue
        seen.add(key)
        return m
    raise RuntimeError(f"no new architecture within the budget in {max_tries} draws")


def uniform_channels(limit: float) -> int:
    """The widest c whose ResNet-20 with stage channels (c, 2c, 4c) costs at most `limit` FLOPs."""
    for c in range(16, 0, -1):
        net = bsnet.create_supernet("resnet_fabric", channels=[c, 2 * c, 4 * c], shortcuts=False)
        if float(bsnet.FlopsCost()(net, resnet_mask(net, 20))) <= limit:
            return c
    raise RuntimeError("no uniform width meets the budget")


def distinct_architectures(net: bsnet.SuperNetwork, masks: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The first `k` of `masks` that build different networks. Trained from a fresh initialisation, a block keeping
    groups 0, 2, 3 is the block keeping groups 1, 2, 3: same widths, and the same network once re-initialised."""
    groups = {net.graph.in_edges(n)[0].gate for split in net.graph.width_splits for n in split.groups}
    out, seen = [], set()
    for m in masks:
        key = (tuple(v for g, v in enumerate(m.tolist()) if g not in groups),
               tuple(sorted((node, tuple(w)) for node, w in kept_widths(net, m).items())))
        if key not in seen and len(out) < k:
            seen.add(key)
            out.append(m)
    return out


def new_search(limit: float, i: int, proto: Protocol, data: DataSplits, search_config: dict | None,
               device: str) -> BudgetedSearch:
    """bsnet's search of the width fabric under `limit` FLOPs, seed i (the part's and the ranking's)."""
    torch.manual_seed(i)
    net = bsnet.create_supernet("resnet_fabric", **WIDTH)
    config = SearchConfig(**{"seed": i, **(search_config or {})})
    return BudgetedSearch(net, [Budget(bsnet.FlopsCost(), limit)], config,
                          steps_per_epoch=num_batches(data.train, proto.batch_size, drop_last=True),
                          epochs=proto.search_epochs, device=device)


def shared_ranking(depth: int, i: int, proto: Protocol, data: DataSplits, parts: list[dict],
                   emit: Callable[[str, object], None], device: str = "cpu", val_images: int = 2000) -> dict:
    """Does the search's super network rank architectures as their own short training does? The part's search (seed
    i) is run again, and after epochs 2, 5 and its last every candidate the budget's finished parts trained for 3
    epochs (random's and bsnet's) is scored on the shared weights: BatchNorm recomputed for it on 20 training
    batches, accuracy on the first `val_images` validation images. Reports the Spearman correlation of those scores
    with the candidates' 3-epoch validation accuracy and with their parameters, and where the search's own found
    architecture falls among them."""
    search = new_search(budget_flops(depth), i, proto, data, None, device)
    net, run = search.net, SearchRun(search, data, proto.batch_size, i, search.device)
    cands = [(f"{m}{p['seed_index']}", kept_mask(c["kept"], net.gate_names), c["selection"]["val_acc"])
             for p in parts for m in ("random", "bsnet") for c in p["networks"][m]["candidates"]]
    params = [float(bsnet.ParamsCost()(net, m)) for _, m, _ in cands]
    val = list(itertools.islice(batches(data.val, 500), math.ceil(val_images / 500)))

    def score(mask: torch.Tensor) -> float:
        scored = bsnet.create_supernet("resnet_fabric", **WIDTH).to(device)
        scored.load_state_dict(net.state_dict())
        recalibrate_bn(scored, lambda x: scored(x, mask), itertools.islice(run.batches(0, augment=False), 20), device)
        return accuracy(scored, val, device, mask=mask)

    epochs = []
    for epoch in range(proto.search_epochs):
        run_epochs(run, epoch + 1, start=epoch)
        if epoch + 1 in (2, 5, proto.search_epochs):
            found = search.found().mask
            shared = [score(m) for _, m, _ in cands]
            rec = {"epoch": epoch + 1, "found": {"kept": kept_names(found, net.gate_names), "shared_acc": score(found),
                                                 "params": float(bsnet.ParamsCost()(net, found))},
                   "rho_3_epoch": statistics.correlation(ranks(shared), ranks([c[2] for c in cands])),
                   "rho_params": statistics.correlation(ranks(shared), ranks(params)),
                   "candidates": [{"label": c[0], "shared_acc": s, "val_acc_3_epochs": c[2], "params": n}
                                  for c, s, n in zip(cands, shared, params)]}
            emit(f"ranking.epoch{epoch + 1}", f"rho_3_epoch={rec['rho_3_epoch']:.2f} rho_params={rec['rho_params']:.2f}"
                 f" found_shared_acc={rec['found']['shared_acc']:.3f} best_candidate_shared_acc={max(shared):.3f}")
            epochs.append(rec)
    return {"depth": depth, "seed_index": i, "shared_ranking": epochs, "val_images": len(val) * 500}


def run_part(depth: int, i: int, proto: Protocol, data: DataSplits, emit: Callable[[str, object], None],
             select: int = 3, temperature: float = 3.0, device: str = "cpu", search_only: bool = False,
             search_config: dict | None = None, found_in_selection: bool = True) -> dict:
    limit, seeds = budget_flops(depth), training_seeds(i)
    emit("budget_flops", f"{limit:.0f}")

    def train(module: torch.nn.Module, seed: int, kind: str = "full") -> dict:
        return timed(lambda: train_recipe(module, data, proto, seed, kind, device))

    # bsnet: search and selection, timed together: the compute random search is given.
    t0, c0 = time.perf_counter(), time.process_time()
    search = new_search(limit, i, proto, data, search_config, device)
    net = search.net
    history = search_epochs(search, data, proto.search_epochs, proto.batch_size, i, emit)
    found = search.found()
    if search_only:  # the search's own figures: does it reach the budget, is what it finds good early
        return {"depth": depth, "seed_index": i, "budget_flops": limit, "search_only": True,
                "found": {"kept": kept_names(found.mask, net.gate_names), "projected": found.projected,
                          "dropped": found.dropped, "flops": float(bsnet.FlopsCost()(net, found.mask)),
                          "widths": kept_widths(net, found.mask)},
                "history": history["history"], "search_s": time.perf_counter() - t0}
    # Without the found architecture: the first `select` tempered samples that build other networks than it.
    pool = distinct_architectures(net, search.candidates(4 * select + 1, temperature), select + 1)
    candidates = pool[:select] if found_in_selection else pool[1:select + 1]
    best, selection = select_on_validation(net, candidates, train, seeds[0]) if len(candidates) > 1 else (0, [])
    search_cpu, search_wall = time.process_time() - c0, time.perf_counter() - t0
    emit("bsnet.search_cpu_s", f"{search_cpu:.0f}")
    chosen = candidates[best]
    entries = {"bsnet": network_entry(
        "bsnet", net, chosen, [train(bsnet.export_module(net, chosen), s) for s in seeds],
        projected=found.projected, dropped=found.dropped, search_cpu_s=search_cpu, search_wall_s=search_wall,
        widths=kept_widths(net, chosen), history=history["history"],
        candidates=candidate_records(net, candidates, selection) if selection else [], chosen=best)}
    pick = entries["bsnet"]["runs"]
    entries["bsnet"]["search_cost_ratio"] = search_wall / statistics.fmean(r["wall_s"] for r in pick)
    emit("bsnet.search_cost_ratio", f"{entries['bsnet']['search_cost_ratio']:.2f}")

    # random at equal compute
    fresh = bsnet.create_supernet("resnet_fabric", **WIDTH)
    gen, seen, drawn, runs, spent = torch.Generator().manual_seed(2000 + 100 * depth + i), set(), [], [], 0.0
    while spent < search_cpu:
        drawn.append(draw_one(fresh, limit, gen, seen))
        runs.append(train(bsnet.export_module(fresh, drawn[-1]), seeds[0], "selection"))
        spent += runs[-1]["cpu_s"]
    best = max(range(len(drawn)), key=lambda j: runs[j]["val_acc"])
    entries["random"] = network_entry("random", fresh, drawn[best],
                                      [train(bsnet.export_module(fresh, drawn[best]), s) for s in seeds],
                                      k=len(drawn), candidates_cpu_s=spent, chosen=best,
                                      candidates=candidate_records(fresh, drawn, runs))
    emit("random.k", len(drawn))

    if depth != 20:  # at the ResNet-20 budget the uniform network is ResNet-20 itself
        c = uniform_channels(limit)
        plain = bsnet.create_supernet("resnet_fabric", channels=[c, 2 * c, 4 * c], shortcuts=False)
        mask = resnet_mask(plain, 20)
        entries["uniform"] = network_entry("uniform", plain, mask, [train(bsnet.export_module(plain, mask), seeds[0])],
                                           channels=[c, 2 * c, 4 * c])
    for name, e in entries.items():
        emit(f"{name}.flops", f"{e['flops']:.0f}")
        emit(f"{name}.test_acc_mean", f"{e['test_acc_mean']:.4f}")
    return {"depth": depth, "seed_index": i, "budget_flops": limit, "networks": entries,
            "data": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}}


# ---- the table ---------------------------------------------------------------------------------------------
def win(diffs: list[float]) -> tuple[float, float, str]:
    """Mean and standard error of per-index paired differences (fractions), and the verdict of the win rule."""
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    ok = abs(mean) * 100 >= WIN_POINTS and abs(mean) > 2 * se
    return mean, se, ("bsnet wins" if mean > 0 else "bsnet loses") if ok else "tie"


def ranks(xs: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(xs)), key=xs.__getitem__)
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def candidate_params(parts: list[dict]) -> str:
    """What decides among architectures at one budget: the Spearman correlation of parameters with the 3-epoch
    validation accuracy over random's candidates (FLOPs all within [0.8, 1] x the budget), and the 3-epoch score of
    bsnet's pick against random's, per seed index."""
    net = bsnet.create_supernet("resnet_fabric", **WIDTH)
    params, accs = [], []
    for p in parts:
        for c in p["networks"]["random"]["candidates"]:
            params.append(float(bsnet.ParamsCost()(net, kept_mask(c["kept"], net.gate_names))))
            accs.append(c["selection"]["val_acc"])
    rho = statistics.correlation(ranks(params), ranks(accs)) if len(params) > 2 else float("nan")
    picked = " / ".join(f"{b['candidates'][b['chosen']]['selection']['val_acc']:.3f}" if b["candidates"] else "-"
                        for b in (p["networks"]["bsnet"] for p in parts))
    best = " / ".join(f"{max(c['selection']['val_acc'] for c in p['networks']['random']['candidates']):.3f}"
                      for p in parts)
    return (f"random's {len(params)} candidates: parameters vs 3-epoch val. acc., Spearman ρ = {rho:.2f}; "
            f"3-epoch val. acc. of bsnet's pick {picked}, of random's {best}")


def finished_parts(results_dir: Path, budget: str = "resnet*", variants: bool = False) -> list[dict]:
    """The finished parts in `results_dir`: not a search alone or a ranking; run with the default search unless
    `variants` (those run with other search settings too)."""
    return [d for d in (json.loads(p.read_text()) for p in sorted(results_dir.glob(f"{budget}-seed*.json"))
                        if not p.name.endswith(("-search.json", "-ranking.json")))
            if variants or not setting(d)]


def departures(part: dict, *, today: bool) -> list[tuple[str, object]]:
    """What a part's search ran with other than the benchmark's defaults, as (key, value) pairs: its search settings
    as given (with `today`, only those that differ from today's defaults: parts run before a default changed record
    the old value, `fill_budgets: false`), its search epochs, its selection's size, and ('without_found', None) where
    the found architecture was left out of the selection."""
    default = SearchConfig()
    pairs = [(k, v) for k, v in (part.get("search_config") or {}).items() if not today or getattr(default, k) != v]
    epochs = part["protocol"]["search_epochs"]
    if not part.get("quick") and epochs != FULL.search_epochs:
        pairs.append(("search_epochs", epochs))
    selection = part.get("selection", {"networks": 3, "found": True})  # parts before the option: the default
    if selection["networks"] != 3:
        pairs.append(("select", selection["networks"]))
    if not selection["found"]:
        pairs.append(("without_found", None))
    return pairs


def setting(part: dict) -> str:
    """A part's departures from today's defaults, as the table labels its rows ('' for the default search)."""
    return " ".join("without the found architecture in the selection" if k == "without_found" else f"{k}={v}"
                    for k, v in departures(part, today=True))


def file_tag(part: dict) -> str:
    """A part's departures as given, as its file name carries them ('-select2-without_found')."""
    return "".join(f"-{k}" if v is None else f"-{k}{v}" for k, v in departures(part, today=False))


def method_rows(depth: int, mine: list[dict], variant: str, points: dict | None) -> list[str]:
    """The table's rows of one budget's parts run with one search setting (`variant`, '' for the default); each
    method's point goes to `points` where given (the plot shows the default search)."""
    label = f" (parts with bsnet's {variant})" if variant else ""
    lines = []
    for m in METHODS:
        have = [p for p in mine if m in p["networks"]]
        if not have:
            continue
        accs = [p["networks"][m]["test_acc_mean"] for p in have]
        se = statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
        flops = statistics.fmean(p["networks"][m]["flops"] for p in have)
        params = statistics.fmean(p["networks"][m]["params"] for p in have)
        k = f"{statistics.fmean(p['networks'][m]['k'] for p in have):.1f}" if m == "random" else ""
        vs = ""
        if m != "bsnet":
            d, s, verdict = win([p["networks"]["bsnet"]["test_acc_mean"] - p["networks"][m]["test_acc_mean"]
                                 for p in have])
            vs = f"{100 * d:+.2f} ± {100 * s:.2f}: {verdict}"
        lines.append(f"| ResNet-{depth} ({mine[0]['budget_flops'] / 1e6:.1f} M) | {m}{label} | {flops / 1e6:.1f} | "
                     f"{params / 1e3:.1f} | {100 * statistics.fmean(accs):.2f} ± {100 * se:.2f} "
                     f"({len(accs)}) | {k} | {vs} |")
        if points is not None:
            points.setdefault(m, []).append((flops / 1e6, 100 * statistics.fmean(accs)))
    ratios = [p["networks"]["bsnet"]["search_cost_ratio"] for p in mine]
    lines.append(f"| ResNet-{depth} | search cost ratio{label} (search + selection ÷ one training) | | | "
                 f"{statistics.fmean(ratios):.2f} | | |")
    lines.append(f"| ResNet-{depth} | {candidate_params(mine)}{label} | | | | | |")
    return lines


def table(results_dir: Path) -> int:
    parts = finished_parts(results_dir, variants=True)
    if not parts:
        print(f"error: no finished part in {results_dir}", file=sys.stderr)
        return 2
    lines = ["| budget | method | MFLOPs | params (k) | test acc. % (mean over seed indices ± s.e.) | k | vs bsnet |",
             "|---|---|---|---|---|---|---|"]
    points: dict[str, list[tuple[float, float]]] = {}
    for depth in DEPTHS:
        # the default search's parts first, then each variant's (its random and uniform rerun beside it)
        for variant in sorted({setting(p) for p in parts if p["depth"] == depth}):
            mine = sorted((p for p in parts if p["depth"] == depth and setting(p) == variant),
                          key=lambda p: p["seed_index"])
            lines += method_rows(depth, mine, variant, None if variant else points)
    for depth in DEPTHS:  # today's records, for reference
        record = RESULTS / "cifar10" / f"resnet{depth}.json"
        if record.is_file():
            nets = json.loads(record.read_text())["networks"]
            for m, label in (("resnet", f"ResNet-{depth} (record)"), ("bsnet", "depth-only bsnet (record)")):
                e = nets[m]
                lines.append(f"| ResNet-{depth} | {label} | {e['flops'] / 1e6:.1f} | {e['params'] / 1e3:.1f} | "
                             f"{100 * e['test_acc_mean']:.2f} (2 training seeds) | | |")
    quick = any(p.get("quick") for p in parts)
    text = "\n".join((["**SMOKE RUN (--quick): these figures are not results.**", ""] if quick else []) + lines) + "\n"
    print(text)
    (results_dir / "table.md").write_text(text)
    pareto(points, results_dir / "pareto.png", quick)
    return 0


def pareto(points: dict[str, list[tuple[float, float]]], path: Path, quick: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m, marker in zip(METHODS, ("o-", "^:", "s--")):
        if m in points:
            xs, ys = zip(*sorted(points[m]))
            ax.plot(xs, ys, marker, label=m)
    ax.set_xlabel("MFLOPs per image")
    ax.set_ylabel("test accuracy (%), mean over seed indices")
    ax.set_title("CIFAR-10 from scratch on the width fabric" + (" - SMOKE RUN: not results" if quick else ""),
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"written: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-index", type=int, choices=range(len(DEPTHS)), help="0, 1: ResNet-8, -20 FLOPs")
    parser.add_argument("--seed-index", type=int, default=0, help="i: bsnet's search seed, random's draw i, training "
                        "seeds 2i and 2i + 1")
    parser.add_argument("--table", action="store_true", help="assemble the finished parts into table and plot")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 epoch (figures not results)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default benchmarks/results/cifar10-width (cifar10-width-quick with --quick)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--select", type=int, default=3, metavar="K", help="networks the selection trains (3)")
    parser.add_argument("--without-found", action="store_true", help="the selection's networks are tempered samples "
                        "only (the found architecture left out)")
    parser.add_argument("--search-epochs", type=int, default=FULL.search_epochs)
    parser.add_argument("--search-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="search settings other than the defaults (recorded in the part)")
    parser.add_argument("--search-only", action="store_true", help="the part's search alone (written as "
                        "resnet<d>-seed<i>-search.json; --table skips it)")
    parser.add_argument("--shared-ranking", action="store_true", help="diagnostic: the part's search again, its "
                        "shared weights scoring the candidates of the budget's finished parts (written as "
                        "resnet<d>-seed<i>-ranking.json)")
    args = parser.parse_args(argv)
    results_dir = args.results_dir or RESULTS / ("cifar10-width-quick" if args.quick else "cifar10-width")
    if args.table:
        return table(results_dir)
    if args.budget_index is None or args.seed_index < 0:
        parser.error("give --budget-index 0|1 and --seed-index i >= 0 (or --table)")
    if args.threads:
        torch.set_num_threads(args.threads)
    proto = QUICK if args.quick else dataclasses.replace(FULL, search_epochs=args.search_epochs)
    depth = DEPTHS[args.budget_index]
    print(machine_line(budget=f"resnet{depth}", seed_index=args.seed_index, quick=args.quick), flush=True)
    data = protocol_data(cifar_folder(args.data_dir), proto.n_train, proto.n_val, proto.n_test, proto.data_seed)

    def emit(key: str, value: object) -> None:
        print(f"cifar10_width.resnet{depth}.seed{args.seed_index}.{key}={value}", flush=True)

    t0 = time.perf_counter()
    if args.shared_ranking:
        parts = finished_parts(results_dir, f"resnet{depth}")
        if not parts:
            print(f"error: no finished part of the ResNet-{depth} budget in {results_dir}", file=sys.stderr)
            return 2
        result = shared_ranking(depth, args.seed_index, proto, data, parts, emit, args.device)
        result.update(machine=machine_info(args.device), part_s=time.perf_counter() - t0)
        save_result(results_dir / f"resnet{depth}-seed{args.seed_index}-ranking.json", result, args.quick)
        return 0
    result = run_part(depth, args.seed_index, proto, data, emit, select=args.select, device=args.device,
                      search_only=args.search_only, search_config=key_values(args.search_config, "--search-config"),
                      found_in_selection=not args.without_found)
    result["search_config"] = key_values(args.search_config, "--search-config")
    result["selection"] = {"networks": args.select, "found": not args.without_found}
    result.update(protocol=dataclasses.asdict(proto), quick=args.quick, machine=machine_info(args.device),
                  part_s=time.perf_counter() - t0, bsnet_version=bsnet.__version__)
    emit("part_s", f"{result['part_s']:.0f}")
    name = f"resnet{depth}-seed{args.seed_index}{file_tag(result)}" + ("-search" if args.search_only else "")
    save_result(results_dir / f"{name}.json", result, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
