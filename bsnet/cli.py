"""The `bsnet` command: a thin layer over the Python API. Bad input: one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

EXIT_USAGE, EXIT_BUDGET, EXIT_DIVERGED = 2, 3, 4
CLI_EXTRAS = ("rich", "matplotlib", "sklearn", "PIL")  # bsnet[cli]

SEARCH_DEFAULTS: dict[str, Any] = {
    "supernet": "cnf",
    "supernet_config": {},
    "dataset": "digits",
    "data_dir": None,
    "val_size": None,
    "budget": ["30%"],
    "parallel_workers": None,
    "latency_table": None,
    "epochs": 12,
    "finetune_epochs": 4,
    "select": 1,  # > 1: the best on validation of the found architecture and tempered samples of the gates
    "select_temperature": 3.0,
    "batch_size": 64,
    "seed": 0,
    "device": "cpu",
    "search_config": {},
    "model": None,  # package.module:factory of the user's own model (recorded; export etc. need it passed again)
    "input_shape": None,
}


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


def _key_values(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} takes KEY=VALUE, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML reads 1e30 as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip().replace("-", "_")] = parsed
    return out


def _typed(config_cls: type, values: dict[str, Any], what: str) -> Any:
    """`config_cls(**values)` with each value checked against (and converted to) its field's default type."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise UsageError(f"unknown {what} setting {key!r} (known: {', '.join(sorted(fields))})")
        default = fields[key].default
        kind = type(default) if default is not dataclasses.MISSING and default is not None else None
        if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if kind is int and float(value) != int(value):
                raise UsageError(f"{what} setting {key} must be an integer, got {value!r}")
            value = kind(value)
        elif kind is not None and not isinstance(value, kind):
            raise UsageError(f"{what} setting {key} must be a {kind.__name__}, got {value!r}")
        out[key] = value
    return config_cls(**out)


def _read_config_file(path: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise UsageError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"config {path} must be a mapping of option: value")
    unknown = sorted(set(doc) - set(SEARCH_DEFAULTS))
    if unknown:
        raise UsageError(f"unknown key(s) in {path}: {', '.join(unknown)}")
    return doc


def resolve_search_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the YAML file, then the options given on the command line."""
    cfg = copy.deepcopy(SEARCH_DEFAULTS)
    if args.config:
        cfg.update(_read_config_file(args.config))
    for key in cfg:
        if key in ("supernet_config", "search_config"):
            continue  # KEY=VALUE lists, merged below
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if args.supernet_config:
        cfg["supernet_config"] = {**(cfg["supernet_config"] or {}),
                                  **_key_values(args.supernet_config, "--supernet-config")}
    if args.seed is not None and isinstance(cfg["search_config"], dict):
        cfg["search_config"].pop("seed", None)  # --seed also seeds the gates (a config.yaml records their seed)
    if args.search_config:
        cfg["search_config"] = {**(cfg["search_config"] or {}), **_key_values(args.search_config, "--search-config")}
    types = {"epochs": int, "finetune_epochs": int, "batch_size": int, "seed": int}
    for key, t in types.items():
        if not isinstance(cfg[key], t) or isinstance(cfg[key], bool):
            raise UsageError(f"{key} must be an integer, got {cfg[key]!r}")
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1 or cfg["finetune_epochs"] < 0:
        raise UsageError("epochs and batch_size must be >= 1, finetune_epochs >= 0")
    if not isinstance(cfg["select"], int) or isinstance(cfg["select"], bool) or cfg["select"] < 1:
        raise UsageError(f"select must be an integer >= 1, got {cfg['select']!r}")
    temperature = cfg["select_temperature"]
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise UsageError(f"select_temperature must be a number > 0, got {temperature!r}")
    if isinstance(cfg["budget"], str):
        cfg["budget"] = [cfg["budget"]]
    if not isinstance(cfg["budget"], list) or not all(isinstance(b, (str, int, float)) for b in cfg["budget"]):
        raise UsageError(f"budget must be a list like ['30%', 'params=1.2M'], got {cfg['budget']!r}")
    cfg["budget"] = [str(b) for b in cfg["budget"]]
    workers = cfg["parallel_workers"]
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise UsageError(f"parallel_workers must be an integer >= 1, got {workers!r}")
    if cfg["latency_table"] is not None and not Path(str(cfg["latency_table"])).is_file():
        raise UsageError(f"latency table {cfg['latency_table']} does not exist (make one with `bsnet profile`)")
    if cfg["device"] not in ("cpu", "cuda") and not str(cfg["device"]).startswith("cuda:"):
        raise UsageError(f"device must be cpu or cuda, got {cfg['device']!r}")
    for key in ("supernet_config", "search_config"):
        if not isinstance(cfg[key], dict):
            raise UsageError(f"{key} must be a mapping, got {cfg[key]!r}")
    return cfg


def build_supernet(name: str, config: dict[str, Any], data, model: str | None = None,
                   input_shape: Sequence[int] | None = None) -> Any:
    """A registered super network, its input size, channels, classes and task filled in from the data; or the
    user's own model (`--model package.module:factory`) turned into one with `bsnet.from_model`."""
    import bsnet
    if model is not None:
        import torch
        factory = _model_factory(model)
        shape = tuple(input_shape) if input_shape else tuple(data.input_shape)
        try:
            user_model = factory()
        except Exception as e:
            raise UsageError(f"--model {model} failed to build the model: {type(e).__name__}: {e}") from None
        if not isinstance(user_model, torch.nn.Module):
            raise UsageError(f"--model {model} returned a {type(user_model).__name__}, not a torch.nn.Module")
        net = bsnet.from_model(user_model, torch.zeros(1, *shape))
        net.config["input_shape"] = list(shape)
        return net
    from bsnet.fabrics.registry import supernet_config
    fields = {f.name for f in dataclasses.fields(supernet_config(name))}
    cfg = dict(config)
    fill = {"image_size": data.input_shape[-1], "in_channels": data.input_shape[0], "num_classes": data.num_classes}
    if "task" in fields:
        fill["task"] = data.task
    for k, v in fill.items():
        if k in fields:
            cfg.setdefault(k, v)
    return bsnet.create_supernet(name, **cfg)


def _check_resume(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    """A resumed run goes on as its config.yaml says: options that would change it are refused, not ignored
    (`--device` may change). Code it names (`--model`, a `package.module:cost` budget) is imported only when the
    user names it again: a run directory never makes bsnet import code."""
    given: dict[str, Any] = {}  # what the config file and the options ask for, as "key" or "group.key"
    for key, value in (_read_config_file(args.config) if args.config else {}).items():
        if isinstance(value, dict):
            given.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            given[key] = [value] if key == "budget" and isinstance(value, str) else value
    given.update({k: getattr(args, k) for k in SEARCH_DEFAULTS
                  if k not in ("supernet_config", "search_config") and getattr(args, k, None) is not None})
    if args.seed is not None:
        given.pop("search_config.seed", None)  # --seed seeds the gates too (resolve_search_config)
    for key, option in (("supernet_config", "--supernet-config"), ("search_config", "--search-config")):
        given.update({f"{key}.{k}": v for k, v in _key_values(getattr(args, key), option).items()})
    if cfg.get("model") and given.get("model") != cfg["model"]:
        raise UsageError(f"this run searched --model {cfg['model']}: pass it again to resume (bsnet never imports "
                         "code named in a run directory)")
    custom = [b for b in cfg.get("budget", []) if ":" in b]
    if custom and [str(b) for b in given.get("budget", [])] != cfg["budget"]:
        raise UsageError(f"this run's budgets name your code ({', '.join(custom)}): pass "
                         f"{' '.join('--budget ' + b for b in cfg['budget'])} again to resume")
    for key, value in given.items():
        group, _, sub = key.partition(".")
        recorded = cfg.get(group) if not sub else (cfg.get(group) or {}).get(sub)
        if key != "device" and value != recorded and not (key == "budget" and [str(b) for b in value] == recorded):
            raise UsageError(f"--resume continues the run as it was configured: {key} is {recorded!r} in its "
                             f"config.yaml, not {value!r} (start a new run to change it)")


def _device(name: str):
    import torch
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available on this machine")
    return torch.device(name)


def _fmt(value: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    if unit == "s":
        return f"{value * 1e3:.3g}ms"
    return f"{value:.4g}"


# ---- bsnet search ---------------------------------------------------------------------------------------
def cmd_search(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import bsnet
    from bsnet import distributed, runs
    from bsnet.architecture import Architecture, kept_names
    from bsnet.costs import LatencyCost
    from bsnet.budgets import parse_budget
    from bsnet.data import batches, load_dataset, num_batches
    from bsnet.search import (BudgetedSearch, BudgetError, NonFiniteLossError, SearchConfig, all_costs,
                              finetune, recalibrate_bn)
    from bsnet.train import accuracy

    err = Console(stderr=True)
    if args.resume and args.out and (Path(args.out) / "architecture.json").exists():
        print(f"{args.out} has already finished: nothing to resume (its results are in {args.out}/architecture.json)")
        return 0
    if args.resume:
        if not args.out or not (Path(args.out) / "config.yaml").exists():
            raise UsageError(f"nothing to resume in {args.out}: it holds no bsnet run")
        cfg = yaml.safe_load((Path(args.out) / "config.yaml").read_text())
        _check_resume(args, cfg)
    else:
        cfg = resolve_search_config(args)
    device = _device(cfg["device"])
    rank, world = distributed.setup(str(device))  # torchrun: data-parallel over `world` processes
    device = torch.device(distributed.local_device(str(device)))
    torch.manual_seed(cfg["seed"])
    search_cfg = _typed(SearchConfig, {"seed": cfg["seed"], **cfg["search_config"]}, "search")
    data = load_dataset(cfg["dataset"], cfg["data_dir"], val_size=cfg["val_size"], seed=cfg["seed"])
    net = build_supernet(cfg["supernet"], cfg["supernet_config"], data, cfg["model"], cfg["input_shape"])
    cfg["supernet_config"] = net.config if cfg["model"] is None else {}  # fully resolved
    cost_opts = dict(parallel_workers=cfg["parallel_workers"], latency_table=cfg["latency_table"], device=str(device))
    budgets = [parse_budget(b, **cost_opts) for b in cfg["budget"]]
    names = [b.cost.name for b in budgets]
    if len(set(names)) != len(names):
        raise UsageError(f"one budget per cost, got {', '.join(cfg['budget'])}")
    for b in budgets:  # measured once, on rank 0, so that every rank optimises the same numbers
        if isinstance(b.cost, LatencyCost) and world > 1:
            if rank == 0:
                b.cost.node_costs(net)
            b.cost.table = distributed.broadcast(b.cost.table)
    steps_per_epoch = num_batches(data.train, cfg["batch_size"], drop_last=True, world=world)
    if steps_per_epoch < 1:
        raise UsageError(f"batch size {cfg['batch_size']} is larger than the training set's share per process")
    search = BudgetedSearch(net, budgets, search_cfg, steps_per_epoch=steps_per_epoch, epochs=cfg["epochs"],
                            device=device)
    # Only rank 0 writes; the others learn the directory (or rank 0's refusal) from it.
    prepared: Any = None
    if rank == 0:
        try:
            prepared = str(runs.prepare_run_dir(args.out, resume=args.resume, overwrite=args.overwrite))
        except runs.RunDirError as e:
            prepared = ("error", str(e))
    prepared = distributed.broadcast(prepared)
    if isinstance(prepared, tuple):
        raise runs.RunDirError(prepared[1])
    run_dir = Path(prepared)
    main_rank = rank == 0
    cfg["search_config"] = dataclasses.asdict(search_cfg)
    ckpt_dir = run_dir / "checkpoints"
    start, best_val = 0, -1.0
    if args.resume:
        state, meta, messages = runs.load_latest_checkpoint(ckpt_dir)
        for m in messages:
            print(f"bsnet: warning: {m}", file=sys.stderr)
        if state is None:
            print("bsnet: warning: no intact checkpoint: starting from the beginning", file=sys.stderr)
        else:
            search.load_state_dict(state["search"])
            runs.set_rng_state(state["rng"])
            start, best_val = int(meta["epoch"]), float(meta.get("best_val", -1.0))
        if main_rank:
            runs.truncate_metrics(run_dir / "metrics.jsonl", start)
    elif main_rank:
        runs.write_yaml(run_dir / "config.yaml", cfg)

    def train_batches(epoch: int, augment: bool = True):
        g = torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch)  # the data order depends on (seed, epoch)
        # drop_last: a last batch of a few examples, split into K groups, would hold BatchNorm groups of one
        for x, y in batches(data.train, cfg["batch_size"], shuffle=True, generator=g, rank=rank, world=world,
                            drop_last=True):
            if augment and data.augment is not None:
                x, y = data.augment(x, y, g)
            yield x, y

    limit_of = {b.cost.name: limit for b, limit in zip(budgets, search.limits)}
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[info]}"), console=err, transient=False, disable=not main_rank)
    t0 = time.time()
    with progress:
        for epoch in range(start, cfg["epochs"]):
            task = progress.add_task(f"epoch {epoch + 1}/{cfg['epochs']}", total=steps_per_epoch, info="")
            stats = []
            for x, y in train_batches(epoch):
                runs.kill_point(f"step:{search.steps}")
                try:
                    s = search.step(x, y)
                except NonFiniteLossError as e:
                    print(f"bsnet: error: {e}: the search stopped; the last good checkpoint is kept in {ckpt_dir} "
                          f"(epoch {epoch}); lower the learning rate and rerun", file=sys.stderr)
                    return EXIT_DIVERGED
                if s.skipped:
                    continue
                stats.append(s)
                progress.update(task, advance=1, info=f"loss {s.loss:.3f} acc {s.accuracy:.3f} " + " ".join(
                    f"{n} {c / limit_of[n]:.0%}·b λ {float(lam):.2g}"
                    for n, c, lam in zip(names, s.costs, search.lambdas)))
            if not stats:  # every step of the epoch was skipped: nothing to report, nothing to save
                continue
            try:
                found = search.found()
            except BudgetError:  # reported at the end; meanwhile follow the most probable architecture
                found = search.found(project=False)
            val_shard = list(batches(data.val, 256, rank=rank, world=world))
            n_val = sum(len(y) for _, y in val_shard)
            loss_sum, acc_sum, n, val_hits, n_val = distributed.sum_over_ranks([
                sum(s.loss * s.examples for s in stats), sum(s.accuracy * s.examples for s in stats),
                float(sum(s.examples for s in stats)), accuracy(net, val_shard, device, mask=found.mask) * n_val,
                n_val])
            val_acc = val_hits / n_val  # reduced over ranks
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / n,
                "train_acc": acc_sum / n,
                "val_acc": val_acc,
                "expected_cost": dict(zip(names, search.expected_costs())),
                "sampled_cost": {nm: sum(s.costs[j] for s in stats) / len(stats) for j, nm in enumerate(names)},
                "mode_cost": dict(zip(names, search.costs(found.mask))),
                "lambda": dict(zip(names, search.lambdas.tolist())),
                "entropy": search.mean_entropy(),
                "disconnected": sum(s.disconnected for s in stats) / len(stats),
                "skipped_steps": search.nonfinite_steps,
                "seconds": time.time() - t0,
            }
            meta = {"epoch": epoch + 1, "best_val": max(best_val, val_acc), "bsnet_version": bsnet.__version__}
            if main_rank:
                runs.append_metrics(run_dir / "metrics.jsonl", record)
                state = {"search": search.state_dict(), "rng": runs.rng_state()}
                runs.save_epoch_checkpoint(ckpt_dir, epoch + 1, state, meta)
                if val_acc > best_val:
                    runs.save_checkpoint(ckpt_dir, "best", state, meta)
            best_val = max(best_val, val_acc)

        _dump_rank_state(search, rank)
        if not main_rank:  # the found architecture is evaluated, fine-tuned and written by rank 0 alone
            distributed.barrier()
            distributed.teardown()
            return 0

        try:
            found = search.found()
        except BudgetError as e:
            print(f"bsnet: error: {e}", file=sys.stderr)
            distributed.barrier()
            return EXIT_BUDGET
        mask = found.mask
        recal_batches = lambda: train_batches(0, augment=False)  # noqa: E731
        full = copy.deepcopy(net)
        recalibrate_bn(full, full, recal_batches(), device)  # no mask: every gate kept
        full_acc = accuracy(full, batches(data.test, 256), device, mask=full.full_mask())
        seg_scores = {}
        if data.task == "segmentation":
            from bsnet.train import mean_iou
            seg_scores["full_test_miou"] = mean_iou(full, batches(data.test, 256), data.num_classes, device,
                                                    mask=full.full_mask())
        del full

        def tuned(m: torch.Tensor, epochs: int, label: str) -> tuple[Any, dict[str, float]]:
            """The search weights for architecture `m`: BatchNorm statistics recomputed for it, scored, then
            fine-tuned for `epochs` (every candidate on the same batches) and scored again."""
            tuned_net = copy.deepcopy(net)
            recalibrate_bn(tuned_net, lambda x: tuned_net(x, m), recal_batches(), device)
            scores = {"test": accuracy(tuned_net, batches(data.test, 256), device, mask=m),
                      "val": accuracy(tuned_net, batches(data.val, 256), device, mask=m)}
            if epochs > 0:
                task = progress.add_task(label, total=epochs * steps_per_epoch, info="")
                finetune(tuned_net, m, lambda e: train_batches(10_000 + e), epochs, steps_per_epoch, device=device,
                         on_step=lambda: progress.update(task, advance=1))
                scores["test_ft"] = accuracy(tuned_net, batches(data.test, 256), device, mask=m)
                scores["val_ft"] = accuracy(tuned_net, batches(data.val, 256), device, mask=m)
            return tuned_net, scores

        selection: list[dict[str, Any]] = []
        chosen, ft_epochs = 0, cfg["finetune_epochs"]
        if cfg.get("select", 1) > 1:  # the found architecture and tempered samples, each fine-tuned, best on val.
            ft_epochs = max(ft_epochs, 1)
            candidates = search.candidates(cfg["select"], cfg["select_temperature"])
            for i, m in enumerate(candidates):
                cand_net, cand_scores = tuned(m, ft_epochs, f"candidate {i + 1}/{len(candidates)}")
                selection.append({"kept": kept_names(m, net.gate_names), "val_acc": cand_scores["val_ft"],
                                  "cost": dict(zip(names, search.costs(m)))})
                if i == 0 or cand_scores["val_ft"] > selection[chosen]["val_acc"]:
                    chosen, mask, found_net, scores = i, m, cand_net, cand_scores
                del cand_net
        else:
            found_net, scores = tuned(mask, ft_epochs, "fine-tune")
        search_acc, search_val, ft_acc = scores["test"], scores["val"], scores.get("test_ft")
        if data.task == "segmentation":
            seg_scores["test_miou"] = mean_iou(found_net, batches(data.test, 256), data.num_classes, device, mask=mask)

    extra = [b.cost for b in budgets if b.cost.name not in ("flops", "params", "parallel")]
    cost = all_costs(net, mask, extra, cfg["parallel_workers"])
    full_cost = all_costs(net, net.full_mask(), extra, cfg["parallel_workers"])
    metrics = {"test_acc": ft_acc if ft_acc is not None else search_acc, "test_acc_search_weights": search_acc,
               "val_acc_search_weights": search_val, "test_acc_finetuned": ft_acc, "full_test_acc": full_acc,
               "epochs": cfg["epochs"], "finetune_epochs": ft_epochs, "repaired": found.repaired,
               "skipped_steps": search.nonfinite_steps, **seg_scores}
    if selection:
        metrics.update(selection=selection, selected=chosen, select_temperature=cfg["select_temperature"])
    arch = Architecture(supernet=net.name, supernet_config=net.config,
                        gates=dict(zip(net.gate_names, search.gates.probs().tolist())),
                        kept=kept_names(mask, net.gate_names),  # a sample chosen on validation was not projected
                        projected=found.projected and chosen == 0, dropped=found.dropped if chosen == 0 else [],
                        cost=cost,
                        budget=limit_of, full_cost=full_cost, metrics=metrics, bsnet_version=bsnet.__version__)
    from bsnet.export import export_module, save_weights
    save_weights(export_module(found_net, mask), arch, run_dir / "weights.safetensors")
    from bsnet.plots import plot_architecture, plot_search
    plot_search(runs.read_metrics(run_dir / "metrics.jsonl"), limit_of, run_dir / "search.png")
    plot_architecture(net, mask, search.gates.probs().detach().cpu(), run_dir / "architecture.png")
    arch.to_json(run_dir / "architecture.json")  # last: its presence marks the run as finished
    print_summary(arch, run_dir)
    distributed.barrier()
    distributed.teardown()
    return 0


def _dump_rank_state(search, rank: int) -> None:
    """Test-only (BSNET_TEST_RANK_STATE_DIR): every rank writes its weights, gates and λ, to compare ranks."""
    import os
    where = os.environ.get("BSNET_TEST_RANK_STATE_DIR")
    if where:
        from safetensors.torch import save_file
        state = {f"net.{k}": v.contiguous() for k, v in search.net.state_dict().items()}
        state.update({"gates": search.gates.logits.detach().contiguous(), "lambdas": search.lambdas.contiguous()})
        save_file(state, str(Path(where) / f"rank{rank}.safetensors"))


def print_summary(arch, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table
    m = arch.metrics
    t = Table(title=f"bsnet search: {arch.supernet}", show_lines=False)
    t.add_column("")
    segmentation = "test_miou" in m
    t.add_column("pixel accuracy" if segmentation else "test accuracy", justify="right")
    if segmentation:
        t.add_column("mean IoU", justify="right")
    for name in arch.cost:
        t.add_column(name, justify="right")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    miou = lambda key: [pct(m.get(key))] if segmentation else []  # noqa: E731
    blank = [""] if segmentation else []
    unit = {"latency": "s"}
    found_label = "found architecture" + (" (projected)" if arch.projected else "")
    t.add_row(found_label + " fine-tuned" if m.get("test_acc_finetuned") is not None else found_label,
              pct(m["test_acc"]), *miou("test_miou"), *[_fmt(v, unit.get(k, "")) for k, v in arch.cost.items()])
    t.add_row("  search weights, BN recalibrated", pct(m["test_acc_search_weights"]), *blank, *["" for _ in arch.cost])
    t.add_row("budget", "", *blank,
              *[("<= " + _fmt(arch.budget[k], unit.get(k, ""))) if k in arch.budget else "" for k in arch.cost])
    t.add_row("full super network", pct(m["full_test_acc"]), *miou("full_test_miou"),
              *[_fmt(v, unit.get(k, "")) for k, v in arch.full_cost.items()])
    t.add_row("found / full", "", *blank,
              *[f"{100 * arch.cost[k] / v:.1f}%" if v else "" for k, v in arch.full_cost.items()])
    Console().print(t)
    if "selection" in m:
        print(_selection_line(m))
    if arch.projected:
        print(f"projected onto the budget: dropped {len(arch.dropped)} gate(s): "
              + ", ".join(arch.dropped[:8]) + (" ..." if len(arch.dropped) > 8 else ""))
    print(f"run directory: {run_dir}")


def _selection_line(m: dict[str, Any]) -> str:
    vals = ", ".join(f"{100 * c['val_acc']:.2f}%" for c in m["selection"])
    pick = "the found architecture" if m["selected"] == 0 else f"sample {m['selected']} of the gates"
    return f"chosen on validation among {len(m['selection'])} candidates ({vals}): {pick}"


# ---- commands on a finished run: export, train, eval, show -------------------------------------------------
def _model_factory(spec: str | None):
    """`--model package.module:factory`: named by the user on the command line, never read from a run."""
    if spec is None:
        return None
    from bsnet.budgets import load_object
    factory = load_object(spec)
    if not callable(factory):
        raise UsageError(f"--model {spec} is not callable")
    return factory


def _open_run(run_dir: str) -> tuple[Path, dict[str, Any]]:
    from bsnet.architecture import Architecture
    path = Path(run_dir)
    if not (path / "architecture.json").exists():
        raise UsageError(f"{run_dir} is not a finished bsnet search run (no architecture.json)")
    Architecture.from_json(path)  # checks the format version
    cfg = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").exists() else {}
    return path, cfg or {}


def _run_data(cfg: dict[str, Any], args: argparse.Namespace):
    from bsnet.data import load_dataset
    return load_dataset(args.dataset or cfg.get("dataset", "digits"), args.data_dir or cfg.get("data_dir"),
                        val_size=cfg.get("val_size"), seed=cfg.get("seed", 0))


def cmd_export(args: argparse.Namespace) -> int:
    from bsnet.export import export_onnx, export_python, save_weights
    from bsnet.export.load import load_with_info
    from bsnet.runs import atomic_write_text
    run, _ = _open_run(args.run_dir)
    module, arch, which = load_with_info(run, _model_factory(args.model))
    suffix = {"pt": ".safetensors", "onnx": ".onnx", "python": ".py"}[args.format]
    stem = "found_network" if args.format == "python" else "model"  # the python format writes its own weights
    out = Path(args.out) if args.out else run / "export" / f"{stem}{suffix}"
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory: name the file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "pt":
        save_weights(module, arch, out)
        atomic_write_text(out.with_name(out.stem + ".architecture.json"),
                          (run / "architecture.json").read_text())
    elif args.format == "onnx":
        export_onnx(module, tuple(arch.supernet_network(_model_factory(args.model)).input_shape), out)
    else:
        export_python(module, arch, out)
    extra = f" (weights: {out.with_suffix('.safetensors').name})" if args.format == "python" else ""
    print(f"exported the found network with its {which} weights to {out}{extra}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bsnet import runs
    from bsnet.architecture import Architecture
    from bsnet.export import save_weights
    from bsnet.export.load import load_with_info
    from bsnet.data import batches
    from bsnet.search import all_costs
    from bsnet.train import TrainConfig, accuracy, reset_parameters, train_network
    run, cfg = _open_run(args.run_dir)
    data = _run_data(cfg, args)
    factory = _model_factory(args.model)
    arch = Architecture.from_json(run)
    module, _, which = load_with_info(run / "weights.safetensors" if (run / "weights.safetensors").exists() else run,
                                      factory)
    seed = cfg.get("seed", 0) if args.seed is None else args.seed
    if not args.finetune:
        reset_parameters(module, seed)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size or cfg.get("batch_size", 64),
                       lr=args.lr if args.lr is not None else (0.1 if not args.finetune else 0.02),
                       schedule=args.schedule, seed=seed)
    device = _device(args.device)
    final = run / "final"
    if (final / "result.json").exists() and not args.overwrite:
        raise UsageError(f"{final} already holds a trained network: pass --overwrite to replace it")
    staging = run / "final.partial"  # final/ is replaced only by a finished training
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    metrics_path = staging / "metrics.jsonl"
    runs.atomic_write_text(metrics_path, "")
    err = Console(stderr=True)
    steps = -(-len(data.train) // tcfg.batch_size)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=err) as progress:
        task = progress.add_task("train", total=steps * tcfg.epochs, info="")
        for record in train_network(module, data, tcfg, device=device,
                                    on_step=lambda loss: progress.update(task, advance=1, info=f"loss {loss:.3f}")):
            runs.append_metrics(metrics_path, record)
            progress.update(task, info=f"epoch {record['epoch'] + 1} val {record['val_acc']:.3f}")
    module.cpu().eval()
    net = arch.supernet_network(factory)
    mask = arch.mask(net.gate_names)
    test_acc = accuracy(module, batches(data.test, 256))
    result = {"test_acc": test_acc, "val_acc": accuracy(module, batches(data.val, 256)),
              "cost": all_costs(net, mask, parallel_workers=cfg.get("parallel_workers")),
              "epochs": tcfg.epochs, "start": "search weights (fine-tune)" if args.finetune else "from scratch",
              "train_config": dataclasses.asdict(tcfg)}
    save_weights(module, arch, staging / "model.safetensors")
    runs.atomic_write_text(staging / "result.json", json.dumps(result, indent=1))
    replaced = run / "final.replaced"  # the earlier training, moved aside until the new one is in place
    shutil.rmtree(replaced, ignore_errors=True)
    if final.exists():
        final.rename(replaced)
    staging.rename(final)
    shutil.rmtree(replaced, ignore_errors=True)
    print(f"trained the found network {'from its search weights' if args.finetune else 'from scratch'} for "
          f"{tcfg.epochs} epochs: test accuracy {100 * test_acc:.2f}%; written to {final}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table
    from torch.utils import benchmark
    from torch.utils.flop_counter import FlopCounterMode

    from bsnet.costs import LatencyCost, ParallelCost
    from bsnet.export.load import load_with_info
    from bsnet.runs import atomic_write_text
    from bsnet.data import batches
    from bsnet.train import accuracy, mean_iou
    run, cfg = _open_run(args.run_dir)
    data = _run_data(cfg, args)
    factory = _model_factory(args.model)
    module, arch, which = load_with_info(run, factory)
    net = arch.supernet_network(factory)
    mask = arch.mask(net.gate_names)
    x1 = torch.zeros(1, *net.input_shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x1)
    xb = torch.randn(args.batch_size, *net.input_shape)
    with torch.no_grad():
        module(xb)
        end_to_end = benchmark.Timer("m(x)", globals={"m": module, "x": xb}).blocked_autorange(min_run_time=0.3).median
    estimate = float(LatencyCost(batch_size=args.batch_size)(net, mask))
    report = {"weights": which, "test_acc": accuracy(module, batches(data.test, 256)),
              **({"test_miou": mean_iou(module, batches(data.test, 256), data.num_classes)}
                 if data.task == "segmentation" else {}),
              "flops": int(counter.get_total_flops()), "params": sum(p.numel() for p in module.parameters()),
              "latency": end_to_end, "latency_per_node_estimate": estimate, "latency_batch_size": args.batch_size,
              "parallel": float(ParallelCost(cfg.get("parallel_workers"))(net, mask))}
    atomic_write_text(run / "eval.json", json.dumps(report, indent=1))
    t = Table(title=f"bsnet eval: the exported network, {which} weights")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("architecture.json", justify="right")
    label = "pixel accuracy" if data.task == "segmentation" else "test accuracy"
    t.add_row(label, f"{100 * report['test_acc']:.2f}%", "")
    if "test_miou" in report:
        t.add_row("mean IoU", f"{100 * report['test_miou']:.2f}%", "")
    t.add_row("FLOPs (FlopCounterMode)", _fmt(report["flops"]), _fmt(arch.cost.get("flops", 0)))
    t.add_row("parameters", _fmt(report["params"]), _fmt(arch.cost.get("params", 0)))
    t.add_row(f"latency, batch {args.batch_size}", f"{end_to_end * 1e3:.3g}ms",
              f"{estimate * 1e3:.3g}ms (sum of nodes)")
    t.add_row("parallel steps", f"{report['parallel']:g}", f"{arch.cost.get('parallel', 0):g}")
    Console().print(t)
    print(f"weights: {which} ({'retrained, final/' if which == 'final' else 'from the search, fine-tuned'}); "
          f"written to {run / 'eval.json'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bsnet.architecture import Architecture
    run, _ = _open_run(args.run_dir)
    arch = Architecture.from_json(run)
    con = Console()
    t = Table(title=f"{arch.supernet or 'custom super network'}: {len(arch.kept)} of {len(arch.gates)} gates kept"
                    + (" (projected onto the budget)" if arch.projected else ""))
    for col in ("cost", "found", "budget", "full network", "found / full"):
        t.add_column(col, justify="right" if col != "cost" else "left")
    for k, v in arch.cost.items():
        full = arch.full_cost.get(k, 0)
        t.add_row(k, _fmt(v, "s" if k == "latency" else ""),
                  ("<= " + _fmt(arch.budget[k], "s" if k == "latency" else "")) if k in arch.budget else "",
                  _fmt(full, "s" if k == "latency" else ""), f"{100 * v / full:.1f}%" if full else "")
    con.print(t)
    m = arch.metrics
    if m:
        con.print(f"test accuracy {100 * m['test_acc']:.2f}% (search weights {100 * m['test_acc_search_weights']:.2f}%,"
                  f" full super network {100 * m['full_test_acc']:.2f}%)")
    if "selection" in m:
        con.print(_selection_line(m))
    if arch.projected:
        con.print(f"projected: dropped {', '.join(arch.dropped)}")
    con.print("kept gates: " + ", ".join(arch.kept))
    if args.draw:
        import torch

        from bsnet.plots import plot_architecture
        net = arch.supernet_network(_model_factory(args.model))
        probs = torch.tensor([arch.gates.get(g, 0.0) for g in net.gate_names])
        plot_architecture(net, arch.mask(net.gate_names), probs, Path(args.draw))
        con.print(f"drawing written to {args.draw}")
    return 0


# ---- bsnet sweep ----------------------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    from bsnet.sweep import run_sweep
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    if not budgets:
        raise UsageError("--budgets takes a comma-separated list, e.g. 10%,20%,40%")
    if "--out" in args.search_args or "--resume" in args.search_args:
        raise UsageError("the sweep chooses each run's --out under its own --out; drop --out/--resume from the "
                         "search options")
    from bsnet.budgets import parse_value
    for b in budgets:
        if parse_value(b)[0] <= 0:
            raise UsageError(f"budget {b!r} must be positive")
    runs = run_sweep(budgets, Path(args.out), args.search_args, cost=args.sweep_cost, workers=args.workers,
                     engine=args.engine, train_epochs=args.train_epochs)
    for r in runs:
        cost = f"{r.cost:.4g}" if r.cost is not None else "not recorded"
        result = (f"{args.sweep_cost} {cost}, accuracy {100 * r.accuracy:.2f}%" if r.status != "failed"
                  else f"FAILED: {r.error}")
        print(f"{r.budget:>8}  {r.status:<9} {result}  ({r.run_dir})")
    print(f"sweep written to {Path(args.out) / 'sweep.csv'}")
    return 0 if all(r.status != "failed" for r in runs) else 1


# ---- bsnet profile --------------------------------------------------------------------------------------
def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    import bsnet
    from bsnet.costs.latency import measure_latency
    from bsnet.runs import atomic_write_text
    net = bsnet.create_supernet(args.supernet, **_key_values(args.supernet_config, "--supernet-config"))
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise UsageError(f"unknown dtype {args.dtype!r}")
    device = _device(args.device)
    table = measure_latency(net.to(device), device=device, batch_size=args.batch_size, dtype=dtype,
                            min_run_time=args.min_run_time)
    table["supernet_config"] = net.config
    atomic_write_text(Path(args.out), json.dumps(table, indent=1))
    total = sum(table["nodes"].values())
    print(f"{len(table['nodes'])} nodes measured on {table['device']}: full network {total * 1e3:.3g} ms "
          f"(batch {args.batch_size}, {args.dtype}); table written to {args.out}")
    return 0


# ---- parser -------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as every other usage error
        self.exit(EXIT_USAGE, f"bsnet: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bsnet", description="Budgeted super networks: architecture and weights under a cost budget.")
    p.add_argument("--version", action="version", version=f"bsnet {__import__('bsnet').__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    s = sub.add_parser("search", help="search an architecture under budgets (default: digits, cnf, 30%% FLOPs)")
    s.add_argument("--config", help="YAML file of options (a run's config.yaml reruns it)")
    s.add_argument("--supernet", help="registered super network (cnf, resnet_fabric)")
    s.add_argument("--supernet-config", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--dataset")
    s.add_argument("--data-dir")
    s.add_argument("--val-size", type=float)
    s.add_argument("--budget", action="append", metavar="[COST=]VALUE",
                   help="e.g. 30%%, params=1.2M, latency=3ms, parallel=6, mypkg.costs:energy=2e-3 (repeat)")
    s.add_argument("--parallel-workers", type=int)
    s.add_argument("--latency-table", help="JSON table written by `bsnet profile` on the target device")
    s.add_argument("--epochs", type=int)
    s.add_argument("--finetune-epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--device")
    s.add_argument("--select", type=int, metavar="K",
                   help="choose the final architecture among the found one and K - 1 samples of the gates at "
                   "--select-temperature, each fine-tuned for the fine-tune epochs (at least 1), best on validation")
    s.add_argument("--select-temperature", type=float, metavar="T", help="of --select's samples (default 3)")
    s.add_argument("--search-config", nargs="*", metavar="KEY=VALUE",
                   help="trainer settings, e.g. lambda_mode=fixed fixed_lambda=1e-7 sampling=per_example")
    s.add_argument("--model", help="package.module:factory returning your own torch model (searched over its "
                                   "residual branches)")
    s.add_argument("--input-shape", type=lambda v: [int(d) for d in v.split(",")], metavar="C,H,W",
                   help="the model's input shape, where the data set does not say it")
    s.add_argument("--out", help="run directory (default: a new runs/search-NNN)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    s.set_defaults(func=cmd_search)
    pr = sub.add_parser("profile", help="measure a per-node latency table on this machine")
    pr.add_argument("--supernet", required=True)
    pr.add_argument("--supernet-config", nargs="*", metavar="KEY=VALUE")
    pr.add_argument("--batch-size", type=int, default=1)
    pr.add_argument("--dtype", default="float32")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--min-run-time", type=float, default=0.05, help="seconds of timing per node")
    pr.add_argument("--out", required=True)
    pr.set_defaults(func=cmd_profile)
    sw = sub.add_parser("sweep", help="one search per budget, in parallel worker processes or on a Ray cluster; "
                                      "other options go to each `bsnet search`")
    sw.add_argument("--budgets", required=True, help="comma-separated budgets of the swept cost, e.g. 10%%,20%%,40%%")
    sw.add_argument("--sweep-cost", default="flops", help="the swept cost (default flops)")
    sw.add_argument("--workers", type=int, default=1)
    sw.add_argument("--engine", choices=("local", "ray"), default="local")
    sw.add_argument("--train-epochs", type=int, default=0, help="then `bsnet train` each found network")
    sw.add_argument("--out", required=True)
    sw.set_defaults(func=cmd_sweep, search_args=[])
    e = sub.add_parser("export", help="export a run's found network: pt (safetensors), onnx or python")
    e.add_argument("run_dir")
    e.add_argument("--format", choices=("pt", "onnx", "python"), default="pt")
    e.add_argument("--out", help="output file (default: RUN_DIR/export/model.*)")
    e.add_argument("--model", help="package.module:factory of a custom super network (never read from the run)")
    e.set_defaults(func=cmd_export)
    t = sub.add_parser("train", help="retrain the found network; writes RUN_DIR/final/")
    t.add_argument("run_dir")
    t.add_argument("--epochs", type=int, default=10)
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--from-scratch", dest="finetune", action="store_false", help="fresh weights (default)")
    mode.add_argument("--finetune", dest="finetune", action="store_true", help="start from the search weights")
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", default="cpu")
    t.add_argument("--dataset")
    t.add_argument("--data-dir")
    t.add_argument("--model")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier training's final/")
    t.set_defaults(func=cmd_train, finetune=False)
    ev = sub.add_parser("eval", help="accuracy and every cost of the exported network, measured on it")
    ev.add_argument("run_dir")
    ev.add_argument("--dataset")
    ev.add_argument("--data-dir")
    ev.add_argument("--batch-size", type=int, default=1, help="batch size of the latency measurement")
    ev.add_argument("--model")
    ev.set_defaults(func=cmd_eval)
    sh = sub.add_parser("show", help="print a run's architecture summary; --draw writes the drawing")
    sh.add_argument("run_dir")
    sh.add_argument("--draw", metavar="PNG")
    sh.add_argument("--model")
    sh.set_defaults(func=cmd_show)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["search"]  # `bsnet` alone runs the embedded demo
    if argv[0] == "sweep":  # the options it does not know are each search's own
        args, rest = make_parser().parse_known_args(argv)
        args.search_args = rest
    else:
        args = make_parser().parse_args(argv)
    if args.command is None:
        args = make_parser().parse_args(["search", *argv])
    from bsnet.runs import RunDirError
    try:
        return args.func(args)
    except (UsageError, RunDirError, ValueError, FileNotFoundError) as e:
        print(f"bsnet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as e:
        if e.name in CLI_EXTRAS:  # a core-only install
            print(f"bsnet: error: the command line needs {e.name}: pip install 'bsnet[cli]'", file=sys.stderr)
            return EXIT_USAGE
        raise
    except OSError as e:  # a path that cannot be written or read (permissions, a directory for a file, a full disk)
        print(f"bsnet: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("bsnet: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
