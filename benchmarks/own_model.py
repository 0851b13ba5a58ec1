"""Own-model benchmark: does `bsnet.from_model` + `BudgetedSearch` choose which residual blocks of a trained
ResNet-18-like network to drop better than simple rules, at the same FLOPs?

* Model: `ResNet18Like` below, the CIFAR variant of ResNet-18 (3x3 stem, 4 stages of 2 basic blocks, strides
  1/2/2/2, 1x1 conv + BN projections where the shape changes) at widths 16/32/64/128 (a quarter of ResNet-18's,
  about 70 MFLOPs per image, sized for 2 cores; `--widths`).
* Data: CIFAR-10 from the shared JPEG tarball, as `benchmarks/cifar10.py` takes it: 5,000 validation images held
  out of the 50,000 training images, a stratified seeded subset of 10,000 of the rest for training, all 10,000
  test images, standard augmentation.
* Pre-training: 15 epochs, `TrainConfig(lr=0.1, batch_size=128, cosine)`, seed 0, from a fresh initialisation.
  The trained weights are cached under `~/.cache/bsnet/benchmarks/` (keyed by every setting that shapes them),
  so the second budget reuses them.
* Search: `bsnet.from_model(model, x)` gates the 8 residual branches (dropping one leaves its skip: the identity
  or the projection); `BudgetedSearch` under `FLOPs <= B` of the full model (B = 50% or 75%, one per invocation:
  `--budget 50%`), 5 epochs, `SearchConfig(lr=0.02)` (the search starts from trained weights), seed 0.
* Compared, each fine-tuned with the same recipe (5 epochs, `TrainConfig(lr=0.02, batch_size=128, cosine)`),
  seeds 0 and 1 (the data order; for `random` also the draw):
  - `bsnet`: the found architecture (`search.found()`) with the search's weights, exported (`export_module`);
  - `bsnet-arch`: the found architecture with the pre-trained weights: the same start as the baselines, so that
    the comparison isolates the choice of blocks from the search's extra epochs of training;
  - `random`: as many residual branches as the found architecture drops, chosen uniformly at random;
  - `last`: as many branches dropped, the last block of each stage first, deepest stage first (layer4.1,
    layer3.1, layer2.1, layer1.1, then layer4.0, ...).
  The baselines drop the same NUMBER of blocks, so their FLOPs differ a little from bsnet's and may exceed the
  budget; every network's FLOPs are reported. Also reported: each network's test accuracy before fine-tuning.
* A difference smaller than the larger seed range (max - min over the 2 seeds) of the two is reported as a tie.

Each budget's results are written to `benchmarks/results/own_model/budget-<B>.json`; `--table` prints a markdown
table of every budget run (and writes `table.md`).

Figures, printed as `own_model.<B>.<name>=<value>` lines: `full_flops`, `budget_flops`, `blocks_dropped`, per
network `flops`, `test_acc.seed<s>`, `test_acc_mean`, `test_acc_spread`, the verdicts `bsnet_vs_<method>`,
`part_s`, `cpu_per_wall`, `estimate_full_part_min` (extrapolated from this run's measured throughput) and
`estimate_idle_min` (the same on an idle machine; see benchmarks/cifar10.py).

Run (from the repository root):

    .venv/bin/python benchmarks/own_model.py --budget 50%
    .venv/bin/python benchmarks/own_model.py --budget 75%
    .venv/bin/python benchmarks/own_model.py --table

`--quick`: a smoke run (512 training, 200 validation, 500 test images, 1 epoch for everything, same widths, about
a minute) into `benchmarks/results/own_model-quick/`; its accuracies are not results.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import bsnet
from bsnet.budgets import Budget, parse_value
from bsnet.data import DataSplits, batches, num_batches
from bsnet.search import BudgetedSearch, SearchConfig
from bsnet.train import TrainConfig, accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10 as common  # noqa: E402  (benchmarks/cifar10.py: data, search loop, training, verdicts)
from export import BasicBlock as Block  # noqa: E402  (the same hand-written CIFAR basic block)

METHODS = ("bsnet", "bsnet-arch", "random", "last")
LABELS = {"bsnet": "bsnet (found, search weights)", "bsnet-arch": "bsnet architecture, pre-trained weights",
          "random": "random blocks dropped", "last": "last blocks of each stage dropped"}


# ---- the model ------------------------------------------------------------------------------------------------
class ResNet18Like(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        c = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", nn.Sequential(Block(c, w, stride), Block(w, w, 1)))
            c = w
        self.stages = len(widths)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


# ---- protocol ---------------------------------------------------------------------------------------------------
@dataclass
class OwnProtocol:
    widths: tuple[int, ...] = (16, 32, 64, 128)
    n_train: int = 10_000
    n_val: int = 5_000
    n_test: int | None = None
    batch_size: int = 128
    pretrain_epochs: int = 15
    pretrain_lr: float = 0.1
    search_epochs: int = 5
    search_lr: float = 0.02
    finetune_epochs: int = 5
    finetune_lr: float = 0.02
    seeds: tuple[int, ...] = (0, 1)
    monitor_val: int = 500
    data_seed: int = 0


FULL = OwnProtocol()
QUICK = OwnProtocol(n_train=512, n_val=200, n_test=500, pretrain_epochs=1, search_epochs=1, finetune_epochs=1,
                    monitor_val=100)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bsnet" / "benchmarks"


def pretrained(proto: OwnProtocol, data: DataSplits, use_cache: bool, emit) -> tuple[nn.Module, dict, bool]:
    """The pre-trained model, its training run's record, and whether it came from the cache."""
    fields = ("widths", "n_train", "n_val", "n_test", "batch_size", "pretrain_epochs", "pretrain_lr", "monitor_val",
              "data_seed")
    settings = json.dumps([getattr(proto, f) for f in fields] + [torch.__version__])
    key = hashlib.sha256(settings.encode()).hexdigest()[:16]
    path = cache_dir() / f"own_model-{key}.safetensors"
    model = ResNet18Like(tuple(proto.widths))
    if use_cache and path.is_file() and path.with_suffix(".json").is_file():
        model.load_state_dict(load_file(str(path)))
        emit("pretrained", f"cached {path}")
        return model, json.loads(path.with_suffix(".json").read_text()), True
    cfg = TrainConfig(epochs=proto.pretrain_epochs, batch_size=proto.batch_size, lr=proto.pretrain_lr, seed=0)
    run = common.train_and_test(model, data, cfg, reset=True, monitor_val=proto.monitor_val, kind="pretrain")
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps(run, indent=1))
    return model, run, False


def drop_last_order(gate_names: list[str]) -> list[str]:
    """Gates in the order the `last` rule drops them: the last block of each stage, deepest stage first, then the
    block before it in each stage, and so on."""
    stages: dict[str, list[str]] = {}
    for g in gate_names:
        stages.setdefault(g.rsplit(".", 1)[0], []).append(g)
    order, groups = [], [list(reversed(v)) for v in reversed(stages.values())]
    for depth in range(max(len(v) for v in groups)):
        order += [v[depth] for v in groups if depth < len(v)]
    return order


def mask_without(net: bsnet.SuperNetwork, dropped: list[str]) -> torch.Tensor:
    return torch.tensor([0.0 if g in dropped else 1.0 for g in net.gate_names])


# ---- one budget -------------------------------------------------------------------------------------------------
def run_budget(fraction: float, proto: OwnProtocol, data: DataSplits, use_cache: bool, emit,
               target: OwnProtocol = FULL) -> dict:
    t_part, c_part = time.perf_counter(), time.process_time()
    model, pre_run, cached = pretrained(proto, data, use_cache, emit)
    emit("pretrained.test_acc", f"{pre_run['test_acc']:.4f}")
    x = torch.zeros(1, *data.input_shape)
    pre = bsnet.from_model(copy.deepcopy(model), x)  # pre-trained weights, for the variants that start from them
    cost = bsnet.FlopsCost()
    full = float(cost(pre, pre.full_mask()))
    emit("gates", ",".join(pre.gate_names))
    emit("full_flops", f"{full:.0f}")
    emit("budget_flops", f"{fraction * full:.0f}")

    torch.manual_seed(proto.seeds[0])
    net = bsnet.from_model(copy.deepcopy(model), x)
    steps = num_batches(data.train, proto.batch_size, drop_last=True)
    search = BudgetedSearch(net, [Budget(cost, fraction, relative=True)],
                            # fill_budgets off: as the records were made, before it was on by default
                            SearchConfig(seed=proto.seeds[0], lr=proto.search_lr, fill_budgets=False),
                            steps_per_epoch=steps,
                            epochs=proto.search_epochs)
    s = common.search_epochs(search, data, proto.search_epochs, proto.batch_size, proto.seeds[0], emit)
    found = search.found()
    dropped = [g for g, m in zip(net.gate_names, found.mask.tolist()) if m < 0.5]
    k = len(dropped)
    emit("blocks_dropped", f"{k} ({','.join(dropped)})")

    def finetune(module: nn.Module, seed: int) -> dict:
        before = accuracy(module, batches(data.test, 256))
        cfg = TrainConfig(epochs=proto.finetune_epochs, batch_size=proto.batch_size, lr=proto.finetune_lr, seed=seed)
        run = common.train_and_test(module, data, cfg, reset=False, monitor_val=proto.monitor_val)
        return {**run, "test_acc_before_finetune": before}

    def random_mask(seed: int) -> torch.Tensor:
        order = torch.randperm(pre.num_gates, generator=torch.Generator().manual_seed(10_000 + seed))
        return mask_without(pre, [pre.gate_names[i] for i in order[:k].tolist()])

    masks: dict[str, list[torch.Tensor]] = {
        "bsnet": [found.mask] * len(proto.seeds),
        "bsnet-arch": [found.mask] * len(proto.seeds),
        "random": [random_mask(s) for s in proto.seeds],
        "last": [mask_without(pre, drop_last_order(pre.gate_names)[:k])] * len(proto.seeds),
    }
    entries = {}
    for method, ms in masks.items():
        source = net if method == "bsnet" else pre
        runs = []
        for seed, m in zip(proto.seeds, ms):
            run = finetune(bsnet.export_module(source, m), seed)
            run.update(dropped=[g for g, v in zip(source.gate_names, m.tolist()) if v < 0.5],
                       flops=float(cost(source, m)))
            runs.append(run)
        flops = statistics.fmean(r["flops"] for r in runs)
        entries[method] = {"method": method, "runs": runs, "flops": flops, "flops_fraction": flops / full,
                           "within_budget": [r["flops"] <= fraction * full * (1 + 1e-9) for r in runs],
                           **common.summarise(runs),
                           "test_acc_before_finetune_mean":
                               statistics.fmean(r["test_acc_before_finetune"] for r in runs)}
        e = entries[method]
        emit(f"{method}.flops", f"{flops:.0f} ({100 * flops / full:.1f}% of full)")
        for r in runs:
            emit(f"{method}.test_acc.seed{r['seed']}", f"{r['test_acc']:.4f} (before fine-tuning "
                 f"{r['test_acc_before_finetune']:.4f}; dropped {','.join(r['dropped'])})")
        emit(f"{method}.test_acc_mean", f"{e['test_acc_mean']:.4f}")
        emit(f"{method}.test_acc_spread", f"{e['test_acc_spread']:.4f}")
    verdicts = {f"bsnet_vs_{m}": common.verdict(entries["bsnet"], entries[m], ("bsnet", m)) for m in METHODS[1:]}
    for m in ("random", "last"):
        verdicts[f"bsnet-arch_vs_{m}"] = common.verdict(entries["bsnet-arch"], entries[m], ("bsnet-arch", m))
    for key, v in verdicts.items():
        emit(key, v)

    # The same budget under `target`, at this run's throughput (pre-training included, as on a first run).
    f = target
    n_train, n_val, n_test = f.n_train, f.n_val, f.n_test or 10_000
    monitor = min(f.monitor_val, n_val)
    est_pre = (pre_run["train_s_per_image"] * n_train * f.pretrain_epochs
               + pre_run["eval_s_per_image"] * (monitor * f.pretrain_epochs + n_val + n_test))
    est = s["seconds"] / max(s["images"], 1) * (n_train // f.batch_size * f.batch_size) * f.search_epochs
    for e in entries.values():
        for r in e["runs"]:
            est += (r["train_s_per_image"] * n_train * f.finetune_epochs
                    + r["eval_s_per_image"] * (monitor * f.finetune_epochs + n_val + 2 * n_test))
    part_s = time.perf_counter() - t_part
    cpu_per_wall = (time.process_time() - c_part) / part_s
    emit("part_s", f"{part_s:.1f}")
    emit("cpu_per_wall", f"{cpu_per_wall:.2f}")
    emit("search_ms_per_image", f"{1e3 * s['seconds'] / max(s['images'], 1):.3f}")
    if not cached:
        emit("pretrain_ms_per_image", f"{1e3 * pre_run['train_s_per_image']:.3f}")
    emit("estimate_full_part_min", f"{(est + est_pre) / 60:.1f} (of which pre-training {est_pre / 60:.1f}, "
         f"skipped when cached)")
    emit("estimate_idle_min", f"{common.idle_estimate(est + est_pre, cpu_per_wall) / 60:.1f}")
    emit("estimate_for", f"widths:{'/'.join(map(str, f.widths))} train:{n_train} val:{n_val} test:{n_test} "
         f"pretrain:{f.pretrain_epochs} search:{f.search_epochs} finetune:{f.finetune_epochs} epochs "
         f"threads:{torch.get_num_threads()}")
    return {"budget": fraction, "full_flops": full, "budget_flops": fraction * full, "gates": pre.gate_names,
            "blocks_dropped": k, "found": {"dropped": dropped, "projected": found.projected,
                                           "repaired": found.repaired,
                                           "gate_probs": dict(zip(net.gate_names, search.gates.probs().tolist()))},
            "pretrained": {**pre_run, "cached": cached}, "networks": entries, "verdicts": verdicts,
            "search": {"epochs": proto.search_epochs, "seconds": s["seconds"], "history": s["history"]},
            "data": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "part_s": part_s, "estimate_full_part_s": est + est_pre, "estimate_pretrain_s": est_pre}


# ---- the table ---------------------------------------------------------------------------------------------------
def table(results_dir: Path) -> int:
    parts = sorted((json.loads(p.read_text()) for p in results_dir.glob("budget-*.json")), key=lambda r: r["budget"])
    if not parts:
        print(f"error: no finished budget in {results_dir} (run --budget 50% and --budget 75% first)", file=sys.stderr)
        return 2
    pr = parts[0]["protocol"]
    lines = [f"| FLOPs budget | network | blocks dropped | MFLOPs (% of full) | test acc. % (mean ± half range, "
             f"{len(pr['seeds'])} seeds) | before fine-tuning % | vs bsnet |", "|---|---|---|---|---|---|---|"]
    p0 = parts[0]
    lines.append(f"| - | full model, pre-trained | 0 | {p0['full_flops'] / 1e6:.1f} (100%) | "
                 f"{100 * p0['pretrained']['test_acc']:.2f} (1 seed) | | |")
    for p in parts:
        for m in METHODS:
            e = p["networks"][m]
            dropped = "; ".join(sorted({",".join(r["dropped"]) for r in e["runs"]}))
            vs = "" if m == "bsnet" else p["verdicts"][f"bsnet_vs_{m}"]
            over = e["within_budget"].count(False)
            flag = "" if not over else " (over budget)" if over == len(e["runs"]) else f" ({over} draw(s) over budget)"
            lines.append(f"| {100 * p['budget']:g}% ({p['budget_flops'] / 1e6:.1f} M) | {LABELS[m]} | {dropped} | "
                         f"{e['flops'] / 1e6:.1f} ({100 * e['flops_fraction']:.1f}%){flag} | {common.pm(e)} | "
                         f"{100 * e['test_acc_before_finetune_mean']:.2f} | {vs} |")
    notes = [f"ResNet-18-like, widths {'/'.join(map(str, pr['widths']))}; CIFAR-10, {p0['data']['train']} training / "
             f"{p0['data']['val']} validation / {p0['data']['test']} test images; pre-trained {pr['pretrain_epochs']} "
             f"epochs (lr {pr['pretrain_lr']}), search {pr['search_epochs']} epochs (lr {pr['search_lr']}), every "
             f"variant fine-tuned {pr['finetune_epochs']} epochs (lr {pr['finetune_lr']}, cosine, batch "
             f"{pr['batch_size']}), seeds {', '.join(map(str, pr['seeds']))}. A difference within the larger seed "
             "range is a tie. bsnet-arch vs random / last: " + "; ".join(
                 f"{100 * p['budget']:g}%: {p['verdicts']['bsnet-arch_vs_random']} / "
                 f"{p['verdicts']['bsnet-arch_vs_last']}" for p in parts) + ".",
             "Parts: " + ", ".join(f"{100 * p['budget']:g}% {p['part_s'] / 60:.0f} min" for p in parts)]
    if any(p.get("quick") for p in parts):
        notes.insert(0, "**SMOKE RUN (--quick): these figures are not results.**")
    text = "\n".join(lines + [""] + notes) + "\n"
    print(text)
    (results_dir / "table.md").write_text(text)
    print(f"written: {results_dir / 'table.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", help="FLOPs budget relative to the full model: 50%% or 75%%")
    parser.add_argument("--table", action="store_true", help="print the table of every budget run")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 epoch (figures not results)")
    parser.add_argument("--widths", type=lambda v: tuple(int(w) for w in v.split(",")), default=FULL.widths,
                        help="channels of the 4 stages (default 16,32,64,128)")
    parser.add_argument("--no-cache", action="store_true", help="pre-train again even if cached weights exist")
    parser.add_argument("--data-dir", type=Path, default=None, help="extracted CIFAR-10 image folder")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default benchmarks/results/own_model (own_model-quick with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    results_dir = args.results_dir or common.RESULTS / ("own_model-quick" if args.quick else "own_model")
    if args.table:
        return table(results_dir)
    if not args.budget:
        parser.error("give --budget 50% (or 75%), or --table")
    try:
        fraction, relative = parse_value(args.budget)
    except ValueError as e:
        parser.error(str(e))
    if not relative or not 0 < fraction < 1:
        parser.error(f"--budget must be a percentage of the full model's FLOPs below 100%, got {args.budget}")
    if args.threads:
        torch.set_num_threads(args.threads)
    target = dataclasses.replace(FULL, widths=args.widths)
    proto = dataclasses.replace(QUICK, widths=args.widths) if args.quick else target
    tag = f"{100 * fraction:g}"
    print(common.machine_line(budget=f"{tag}%", quick=args.quick, widths="/".join(map(str, proto.widths))), flush=True)
    t0 = time.perf_counter()
    data = common.protocol_data(common.cifar_folder(args.data_dir), proto.n_train, proto.n_val, proto.n_test,
                                proto.data_seed)
    print(f"own_model.data=train:{len(data.train)} val:{len(data.val)} test:{len(data.test)} "
          f"load_s={time.perf_counter() - t0:.1f}", flush=True)

    def emit(key: str, value: object) -> None:
        print(f"own_model.{tag}.{key}={value}", flush=True)

    result = run_budget(fraction, proto, data, not (args.no_cache or args.quick), emit, target)
    result.update(protocol=dataclasses.asdict(proto), quick=args.quick, machine=common.machine_info(),
                  bsnet_version=bsnet.__version__)
    common.save_result(results_dir / f"budget-{tag}.json", result, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
