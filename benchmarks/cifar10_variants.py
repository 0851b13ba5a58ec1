"""Search variants on the CIFAR-10 benchmark (diagnostics, issue 5): bsnet's search at one budget of
`benchmarks/cifar10.py` under other search settings, the found architecture retrained with the same recipe, data and
seeds. Compare with that part's `bsnet` and `random` rows (`benchmarks/results/cifar10/resnet<d>.json`); the
baselines are not trained again. The settings apply on top of SearchConfig's defaults (the parts' search).

    .venv/bin/python benchmarks/cifar10_variants.py --budget-index 2 --search-epochs 20 --name epochs20
    .venv/bin/python benchmarks/cifar10_variants.py --budget-index 2 --search-config init_prob=0.8 --name init08
    .venv/bin/python benchmarks/cifar10_variants.py --budget-index 2 --select 3 --name select3
    .venv/bin/python benchmarks/cifar10_variants.py --budget-index 2 --select 8 --rank shared --name shared8
    .venv/bin/python benchmarks/cifar10_variants.py --budget-index 2 \
        --search-config 'init_probs={X-: 0.5, S-1_0: 0.5, S-2_0: 0.5}' --name cheap-gates-05

`--search-only` stops after the search (its history and the found architecture; a few minutes), e.g. to see how
often a setting's search ends in the same place under other search seeds (`--search-config seed=1`).

`--retrain bsnet|resnet|random` skips the search and trains the architecture the part's result records for that
network again; with `--seeds 2 3`, it tells whether a gap between two rows holds under other seeds:

    .venv/bin/python benchmarks/cifar10_variants.py --budget-index 2 --retrain random --seeds 2 3 --name random-seeds23
    .venv/bin/python benchmarks/cifar10_variants.py --budget-index 2 --retrain bsnet --drop X-2_2_0 --name no-x220

`--random-draw SEED` trains the random baseline again from another draw of its candidates (how much of its row is
luck); `--select K --temperature T` draws the selection's candidates from the gates at temperature T:

    .venv/bin/python benchmarks/cifar10_variants.py --budget-index 2 --random-draw 1 --name random-draw1
    .venv/bin/python benchmarks/cifar10_variants.py --budget-index 2 --select 3 --temperature 3 --name select3-t3

Prints `cifar10.variant.<name>.<figure>=<value>` lines (search epochs, found gates, flops, params,
`test_acc.seed<s>`, `test_acc_mean`, `test_acc_spread`) and writes
`benchmarks/results/cifar10/variants/resnet<d>-<name>.json`. About 25 minutes at 2 threads for ResNet-20's budget;
`--quick` runs the benchmark's smoke protocol (figures not results).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

import bsnet
from bsnet.architecture import kept_mask, kept_names
from bsnet.cli import _key_values, _typed
from bsnet.data import DataSplits, batches
from bsnet.fabrics.resnet_fabric import resnet_mask
from bsnet.search import BudgetedSearch, SearchConfig, recalibrate_bn
from bsnet.train import accuracy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar10 as bench  # noqa: E402  (the benchmark's protocol, data and training)


def likely_architectures(search: BudgetedSearch, mode: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The found architecture, then those one gate away from it, least certain gate first, that are connected,
    within every budget and not already listed: `k` at most."""
    graph, logits = search.net.graph, search.gates.logits.detach().cpu()
    out = [mode]
    for g in torch.argsort(logits.abs()).tolist():
        if len(out) == k:
            break
        trial = mode.clone()
        trial[g] = 1.0 - trial[g]
        trial = graph.prune(trial)
        if bool(graph.connected(trial)) and search.within_budget(trial) and not any(torch.equal(trial, m) for m in out):
            out.append(trial)
    return out


def retrain(method: str, depth: int, proto: bench.Protocol, data: DataSplits, name: str, quick: bool,
            emit, t0: float, device: str, drop: list[str], add: list[str]) -> int:
    """Train the architecture recorded for `method` in this part's result again, under `proto`'s seeds: is a gap
    between two rows the architectures' or the seeds'? `drop`, `add`: gates to take out of or put into it first,
    to see what one gate does to a found architecture."""
    path = bench.results_folder(quick) / f"resnet{depth}.json"
    if not path.is_file():
        print(f"error: --retrain needs this part's result: {path} is missing", file=sys.stderr)
        return 2
    net = bsnet.create_supernet("resnet_fabric")
    kept = json.loads(path.read_text())["networks"][method]["kept"]
    unknown = [g for g in drop + add if g not in net.gate_names]
    if unknown:
        print(f"error: no gate {unknown[0]!r} in the fabric (gates: {' '.join(net.gate_names)})", file=sys.stderr)
        return 2
    kept = [g for g in kept if g not in drop] + [g for g in add if g not in kept]
    mask = net.graph.prune(kept_mask(kept, net.gate_names))
    if not bool(net.graph.connected(mask)):
        print("error: the edited architecture is disconnected", file=sys.stderr)
        return 2
    emit("kept", " ".join(kept_names(mask, net.gate_names)))
    emit("flops", f"{float(bsnet.FlopsCost()(net, mask)):.0f}")
    runs = [bench.train_recipe(bsnet.export_module(net, mask), data, proto, seed, device=device)
            for seed in proto.seeds]
    entry = bench.network_entry(method, net, mask, runs)
    for r in runs:
        emit(f"test_acc.seed{r['seed']}", f"{r['test_acc']:.4f}")
    emit("test_acc_mean", f"{entry['test_acc_mean']:.4f}")
    emit("wall_s", f"{time.perf_counter() - t0:.0f}")
    return save_variant(depth, name, proto, quick, device, retrain=method, drop=drop, add=add, network=entry)


def save_variant(depth: int, name: str, proto: bench.Protocol, quick: bool, device: str, **fields: object) -> int:
    """Write a variant's record (`variants/resnet<d>-<name>.json`) with the protocol and machine it ran on."""
    result = {"depth": depth, "variant": name, **fields, "protocol": dataclasses.asdict(proto),
              "machine": bench.machine_info(device), "bsnet_version": bsnet.__version__}
    bench.save_result(bench.results_folder(quick) / "variants" / f"resnet{depth}-{name}.json", result, quick)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-index", type=int, choices=range(len(bench.DEPTHS)), required=True)
    parser.add_argument("--search-epochs", type=int, default=None, help="default: the benchmark's (10)")
    parser.add_argument("--search-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="SearchConfig fields, e.g. init_prob=0.8 gate_lr=0.02")
    parser.add_argument("--select", type=int, default=1, help="K > 1: train the K most probable architectures "
                        "within the budget for the selection epochs and keep the best on validation, as the random "
                        "baseline does with its K candidates")
    parser.add_argument("--temperature", type=float, default=None,
                        help="with --select: candidates drawn from the gates at this temperature (e.g. 3) instead "
                        "of the mode's one-gate neighbours")
    parser.add_argument("--rank", choices=("trained", "shared"), default="trained",
                        help="how --select ranks: trained alone for the selection epochs (as the random baseline), "
                        "or on the search weights with BatchNorm statistics recomputed for each")
    parser.add_argument("--retrain", choices=bench.METHODS, default=None,
                        help="no search: retrain the architecture this part's result records for that network")
    parser.add_argument("--random-draw", type=int, default=None, metavar="SEED",
                        help="no search: the random baseline again, its candidates drawn with another seed (the "
                        "part's is 1000 + depth): how much of its row is the luck of its draw?")
    parser.add_argument("--drop", nargs="+", default=[], metavar="GATE", help="with --retrain: gates to drop first")
    parser.add_argument("--add", nargs="+", default=[], metavar="GATE", help="with --retrain: gates to add first")
    parser.add_argument("--search-only", action="store_true",
                        help="stop after the search: record its history and the found architecture, train nothing")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="training seeds (default: the benchmark's, 0 1)")
    parser.add_argument("--name", required=True, help="the variant's name in the output")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (the benchmark's protocol) or cuda")
    parser.add_argument("--quick", action="store_true", help="smoke run on the benchmark's tiny protocol")
    args = parser.parse_args(argv)
    if (args.drop or args.add) and not args.retrain:
        parser.error("--drop and --add need --retrain")
    if args.temperature is not None and (args.select < 2 or args.temperature <= 0):
        parser.error("--temperature needs --select K with K > 1, and must be > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    proto, depth = (bench.QUICK if args.quick else bench.FULL), bench.DEPTHS[args.budget_index]
    if args.seeds:
        proto = dataclasses.replace(proto, seeds=tuple(args.seeds))
    settings = _key_values(args.search_config, "--search-config")
    epochs = args.search_epochs or proto.search_epochs
    print(bench.machine_line(budget=f"resnet{depth}", variant=args.name), flush=True)

    def emit(key: str, value: object) -> None:
        print(f"cifar10.variant.{args.name}.{key}={value}", flush=True)

    t0 = time.perf_counter()
    data = bench.protocol_data(bench.cifar_folder(None), proto.n_train, proto.n_val, proto.n_test, proto.data_seed)
    def train(module: torch.nn.Module, seed: int, kind: str = "full") -> dict:
        return bench.train_recipe(module, data, proto, seed, kind, args.device)

    if args.random_draw is not None:
        fabric = bsnet.create_supernet("resnet_fabric")
        limit = float(bsnet.FlopsCost()(fabric, resnet_mask(fabric, depth)))
        entry = bench.random_entry(depth, limit, proto, train, draw_seed=args.random_draw)
        emit("kept", " ".join(entry["kept"]))
        emit("selection", " ".join(f"{c['selection']['val_acc']:.4f}" for c in entry["candidates"])
             + f" chosen={entry['chosen']}")
        emit("test_acc_mean", f"{entry['test_acc_mean']:.4f}")
        emit("test_acc_spread", f"{entry['test_acc_spread']:.4f}")
        return save_variant(depth, args.name, proto, args.quick, args.device, random_draw=args.random_draw,
                            network=entry)
    if args.retrain:
        return retrain(args.retrain, depth, proto, data, args.name, args.quick, emit, t0, args.device, args.drop,
                       args.add)
    cfg = _typed(SearchConfig, {"seed": proto.seeds[0], **settings}, "search")
    net, limit, search = bench.budgeted_search(depth, proto, data, cfg, epochs, args.device)  # as the part
    s = bench.run_search(search, data, epochs, proto.batch_size, proto.seeds[0], emit)
    found = search.found()
    searched = {"search_epochs": epochs, "search_config": dataclasses.asdict(cfg), "budget_flops": limit}
    kept, flops = kept_names(found.mask, net.gate_names), float(bsnet.FlopsCost()(net, found.mask))
    emit("found", f"{' '.join(kept)} flops={flops:.0f} projected={found.projected} "
         f"dropped={','.join(found.dropped) or '-'}")
    if args.search_only:
        return save_variant(depth, args.name, proto, args.quick, args.device, **searched, search_only=True, search=s,
                            found={"kept": kept, "flops": flops, "projected": found.projected,
                                   "dropped": found.dropped})
    chosen, selection = found.mask, None
    if args.select > 1:
        candidates = likely_architectures(search, found.mask, args.select) if args.temperature is None else \
            search.candidates(args.select, args.temperature)
        emit("candidates", " | ".join(" ".join(kept_names(m, net.gate_names)) for m in candidates))
        if args.rank == "shared":  # on the search weights, BatchNorm statistics recomputed for each candidate
            selection = []
            for m in candidates:
                export = bsnet.export_module(net, m)
                recalibrate_bn(export, export, batches(data.train, proto.batch_size), args.device)
                selection.append({"val_acc": accuracy(export, batches(data.val, 256), args.device)})
            best = max(range(len(candidates)), key=lambda i: selection[i]["val_acc"])
        else:  # as the random baseline: each trained briefly alone
            best, selection = bench.select_on_validation(net, candidates, train, proto.seeds[0])
        chosen = candidates[best]
        emit("selection", " ".join(f"{r['val_acc']:.4f}" for r in selection) + f" chosen={best}")
    runs = [train(bsnet.export_module(net, chosen), seed) for seed in proto.seeds]
    entry = bench.network_entry("bsnet", net, chosen, runs, projected=found.projected, selection=selection)
    emit("kept", " ".join(entry["kept"]))
    emit("flops", f"{entry['flops']:.0f}")
    emit("params", f"{entry['params']:.0f}")
    for r in runs:
        emit(f"test_acc.seed{r['seed']}", f"{r['test_acc']:.4f}")
    emit("test_acc_mean", f"{entry['test_acc_mean']:.4f}")
    emit("test_acc_spread", f"{entry['test_acc_spread']:.4f}")
    emit("wall_s", f"{time.perf_counter() - t0:.0f}")
    return save_variant(depth, args.name, proto, args.quick, args.device, **searched, network=entry, search=s)


if __name__ == "__main__":
    sys.exit(main())
