"""The `bsnet` command: a thin layer over the Python API (`bsnet.pipeline` for a search run). Bad input: one line
on stderr, exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from bsnet.config import ConfigError, RunConfig, key_values, read_config_file, resolve, resume_conflicts
from bsnet.parser import UsageError, check_output_file, make_parser, parse
from bsnet.tables import eval_table, print_summary, show_lines

EXIT_USAGE, EXIT_BUDGET, EXIT_DIVERGED = 2, 3, 4
CLI_EXTRAS = ("rich", "matplotlib", "sklearn", "PIL")  # bsnet[cli]


def _device(name: str) -> Any:
    from bsnet.inputs import available_device
    try:
        return available_device(name)
    except ValueError as e:
        raise UsageError(f"--{e}") from None


def _model_factory(spec: str | None) -> Callable[[], Any] | None:
    """`--model package.module:factory`, named by the user on the command line (never read from a run): the factory,
    each of its failures one line. It returns a torch module or a bsnet SuperNetwork, in every command."""
    if spec is None:
        return None
    import torch

    from bsnet.budgets import load_object
    factory = load_object(spec)
    if not callable(factory):
        raise UsageError(f"--model {spec} is not callable")

    def build() -> Any:
        try:
            model = factory()
        except Exception as e:  # the user's code: any failure is theirs to read, in one line
            raise UsageError(f"--model {spec} failed to build the model: {type(e).__name__}: {e}") from None
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"--model {spec} returned a {type(model).__name__}, not a torch.nn.Module")
        return model
    return build


def _user_model(spec: str | None) -> Any:
    factory = _model_factory(spec)
    return None if factory is None else factory()


# ---- bsnet search ---------------------------------------------------------------------------------------
def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options given on the command line (None: not given), KEY=VALUE lists parsed."""
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(RunConfig)}
    given["supernet_config"] = key_values(args.supernet_config, "--supernet-config") or None
    given["search_config"] = key_values(args.search_config, "--search-config") or None
    return given


def _new_config(args: argparse.Namespace) -> RunConfig:
    """A new run's configuration: the defaults, then the --config file, then the options. Code that the file names
    (a model, a cost of the user's) is imported only when the command line names it too: a file may come from anyone."""
    config = resolve(read_config_file(args.config) if args.config else {}, _given_options(args))
    table = config.latency_table and Path(config.latency_table)
    if table and not table.is_file():  # before any data is read or any network built
        raise UsageError(f"latency table {table} {'is a folder' if table.is_dir() else 'does not exist'} (make one "
                         "with `bsnet profile`)")
    from_file = [c for c in config.code() if not args.model and c.startswith("--model")
                 or args.budget is None and c.startswith("--budget")]
    if from_file:
        raise UsageError(f"{args.config} names code to import ({', '.join(from_file)}): bsnet runs code only when the "
                         f"command line names it, so pass {' '.join(from_file)} to run it")
    return config


def _resumed_config(args: argparse.Namespace) -> RunConfig:
    """A resumed run goes on as its config.yaml says: options that would change it are refused, not ignored
    (`--device` may change). Code it names (`--model`, a `package.module:cost` budget) is imported only when the
    user names it again: a run directory never makes bsnet import code."""
    if not args.out or not (Path(args.out) / "config.yaml").exists():
        raise UsageError(f"nothing to resume in {args.out}: it holds no bsnet run")
    recorded = read_config_file(Path(args.out) / "config.yaml")
    given, in_file = _given_options(args), read_config_file(args.config) if args.config else {}
    asked = {**in_file, **{k: v for k, v in given.items() if v is not None}}
    if recorded.get("model") and asked.get("model") != recorded["model"]:
        raise UsageError(f"this run searched --model {recorded['model']}: pass it again to resume (bsnet never "
                         "imports code named in a run directory)")
    custom = [b for b in recorded.get("budget", []) if ":" in str(b)]
    if custom and [str(b) for b in asked.get("budget", [])] != recorded["budget"]:
        raise UsageError(f"this run's budgets name your code ({', '.join(custom)}): pass "
                         f"{' '.join('--budget ' + b for b in recorded['budget'])} again to resume")
    conflict = resume_conflicts(recorded, in_file, given)
    if conflict:
        raise UsageError(f"--resume continues the run as it was configured: {conflict} (start a new run to "
                         "change it)")
    return resolve(recorded, {"device": args.device})


def _progress_bars(console: Any, main_rank: bool) -> tuple[Callable[[str, int], Callable[[str], None]], Any]:
    """A `bsnet.pipeline.Progress` drawing one rich bar per stretch of work, and the bars' context."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), console=console, disable=not main_rank)

    def start(label: str, total: int) -> Callable[[str], None]:
        task = bars.add_task(label, total=total, info="")
        return lambda info="": bars.update(task, advance=1, **({"info": info} if info else {}))
    return start, bars


def cmd_search(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bsnet.pipeline import run_search
    from bsnet.search import BudgetError, NonFiniteLossError

    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR: the run to continue")
    if args.resume and (Path(args.out) / "architecture.json").exists():
        print(f"{args.out} has already finished: nothing to resume (its results are in {args.out}/architecture.json)")
        return 0
    config = _resumed_config(args) if args.resume else _new_config(args)
    _device(config.device)
    model = _model_factory(config.model)  # called once the run is seeded
    progress, bars = _progress_bars(Console(stderr=True), os.environ.get("RANK", "0") == "0")  # torchrun
    warn = lambda m: print(f"bsnet: warning: {m}", file=sys.stderr)  # noqa: E731
    try:
        with bars:
            result = run_search(config, args.out, model=model, resume=args.resume, overwrite=args.overwrite,
                                progress=progress, warn=warn)
    except NonFiniteLossError as e:
        print(f"bsnet: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except BudgetError as e:
        print(f"bsnet: error: {e}", file=sys.stderr)
        return EXIT_BUDGET
    if result is not None:  # rank 0
        print_summary(*result)
    return 0


# ---- commands on a finished run: export, train, eval, show -------------------------------------------------
def _open_run(run_dir: str) -> tuple[Path, RunConfig]:
    """A finished run and its configuration (config.yaml, the defaults where it has none)."""
    from bsnet.architecture import Architecture
    path = Path(run_dir)
    if not (path / "architecture.json").exists():
        raise UsageError(f"{run_dir} is not a finished bsnet search run (no architecture.json)")
    Architecture.from_json(path)  # checks the format version
    return path, resolve(read_config_file(path / "config.yaml") if (path / "config.yaml").exists() else {}, {})


def _run_data(cfg: RunConfig, args: argparse.Namespace) -> Any:
    from bsnet.data import load_dataset
    return load_dataset(args.dataset or cfg.dataset, args.data_dir or cfg.data_dir, val_size=cfg.val_size,
                        seed=cfg.seed)


def _check_fits(data: Any, net: Any) -> None:
    """The data set is one the found network can take (a data set of another task would fail deep inside it)."""
    data.check_fits(net.input_shape, net.profile[net.graph.output].out_shape, "the found network")


def cmd_export(args: argparse.Namespace) -> int:
    from bsnet import rundir
    from bsnet.export import FORMATS, export_file, export_paths
    from bsnet.export.load import load_with_info
    run, _ = _open_run(args.run_dir)
    model = _user_model(args.model)
    stem = "found_network" if args.format == "python" else "model"  # the python format writes its own weights
    out = Path(args.out) if args.out else run / "export" / (stem + FORMATS[args.format])
    files = export_paths(args.format, out, protect=run)  # checked before the run records them as its own
    with rundir.writing(run, *files):  # the run's lock, when writing into the run
        module, arch, which = load_with_info(run, model)
        shape = tuple(arch.supernet_network(model).input_shape) if args.format == "onnx" else None
        export_file(module, arch, args.format, out, shape, protect=run)
    extra = f" (weights: {out.with_suffix('.safetensors').name})" if args.format == "python" else ""
    print(f"exported the found network with its {which} weights to {out}{extra}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bsnet.architecture import Architecture
    from bsnet.export.load import load_with_info
    from bsnet.retrain import retrain
    from bsnet.train import TrainConfig, reset_parameters
    run, cfg = _open_run(args.run_dir)
    data = _run_data(cfg, args)
    model = _user_model(args.model)
    arch = Architecture.from_json(run)
    module, _, _ = load_with_info(run / "weights.safetensors" if (run / "weights.safetensors").exists() else run,
                                  model)
    seed = cfg.seed if args.seed is None else args.seed
    if not args.finetune:
        reset_parameters(module, seed)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=cfg.batch_size if args.batch_size is None else args.batch_size,
                       lr=args.lr if args.lr is not None else (0.1 if not args.finetune else 0.02),
                       schedule=args.schedule, seed=seed)
    net = arch.supernet_network(model)
    _check_fits(data, net)
    progress, bars = _progress_bars(Console(stderr=True), True)
    with bars:
        result = retrain(run, module, arch, net, data, tcfg, finetune=args.finetune,
                         device=_device(args.device), parallel_workers=cfg.parallel_workers,
                         overwrite=args.overwrite, progress=progress)
    print(f"trained the found network {'from its search weights' if args.finetune else 'from scratch'} for "
          f"{tcfg.epochs} epochs: test accuracy {100 * result['test_acc']:.2f}%; written to {run / 'final'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bsnet import rundir
    from bsnet.architecture import Architecture
    from bsnet.export.load import load_with_info
    from bsnet.retrain import measure
    from bsnet.runs import atomic_write_text
    run, cfg = _open_run(args.run_dir)
    data = _run_data(cfg, args)
    model = _user_model(args.model)
    net = Architecture.from_json(run).supernet_network(model)
    _check_fits(data, net)
    with rundir.writing(run, run / "eval.json"):  # the run's lock
        module, arch, which = load_with_info(run, model)
        report = {"weights": which, **measure(module, net, arch.mask(net.gate_names), data,
                                              batch_size=args.batch_size, parallel_workers=cfg.parallel_workers)}
        atomic_write_text(run / "eval.json", json.dumps(report, indent=1))
    Console().print(eval_table(report, arch, which, data.task))
    print(f"weights: {which} ({'retrained, final/' if which == 'final' else 'from the search, fine-tuned'}); "
          f"written to {run / 'eval.json'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bsnet.architecture import Architecture
    run, _ = _open_run(args.run_dir)
    arch = Architecture.from_json(run)
    if args.draw:
        check_output_file("--draw", args.draw, (".png", ".pdf", ".svg"))
    con = Console()
    for line in show_lines(arch):
        con.print(line)
    if args.draw:
        import torch

        from bsnet.plots import plot_architecture
        net = arch.supernet_network(_user_model(args.model))
        probs = torch.tensor([arch.gates.get(g, 0.0) for g in net.gate_names])
        plot_architecture(net, arch.mask(net.gate_names), probs, Path(args.draw))
        con.print(f"drawing written to {args.draw}")
    return 0


# ---- bsnet sweep ----------------------------------------------------------------------------------------------
def _check_sweep(args: argparse.Namespace, budgets: list[str]) -> None:
    """Every run of the sweep configured as `bsnet search` would be, before any starts: a bad search option is one
    error now, not the failure of every run."""
    from bsnet.sweep import run_dir_name
    if not budgets:
        raise UsageError("--budgets takes a comma-separated list, e.g. 10%,20%,40%")
    names = [run_dir_name(b) for b in budgets]
    twice = sorted({b for b, n in zip(budgets, names) if names.count(n) > 1})
    if twice:
        raise UsageError(f"--budgets names a budget twice: {', '.join(twice)}")
    try:
        search = make_parser().parse_args(["search", *args.search_args])
    except UsageError as e:
        raise UsageError(f"the sweep's search options: {e}") from None
    if search.out is not None or search.resume:
        raise UsageError("the sweep chooses each run's --out under its own --out; drop --out/--resume from the "
                         "search options")
    given = list(search.budget or [])
    for b in budgets:
        search.budget = [*given, f"{args.sweep_cost}={b}"]
        _new_config(search)


def cmd_sweep(args: argparse.Namespace) -> int:
    from bsnet.sweep import run_sweep
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    _check_sweep(args, budgets)
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
    from bsnet.costs.latency import is_latency_table, measure_latency
    from bsnet.runs import atomic_write_text
    check_output_file("--out", args.out, (".json",), ours=is_latency_table)
    net = bsnet.create_supernet(args.supernet, **key_values(args.supernet_config, "--supernet-config"))
    dtype = getattr(torch, args.dtype)  # one of the parser's choices
    device = _device(args.device)
    table = measure_latency(net.to(device), device=device, batch_size=args.batch_size, dtype=dtype,
                            min_run_time=args.min_run_time)
    table["supernet_config"] = net.config
    atomic_write_text(Path(args.out), json.dumps(table, indent=1))
    total = sum(table["nodes"].values())
    print(f"{len(table['nodes'])} nodes measured on {table['device']}: full network {total * 1e3:.3g} ms "
          f"(batch {args.batch_size}, {args.dtype}); table written to {args.out}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "search": cmd_search, "profile": cmd_profile, "sweep": cmd_sweep, "export": cmd_export, "train": cmd_train,
    "eval": cmd_eval, "show": cmd_show}


def _error(message: object) -> int:
    """`message` on one line of stderr (a message that quotes a file or the user's code may hold line breaks)."""
    print("bsnet: error: " + re.sub(r"\s*[\r\n]+\s*", " ", str(message).strip()), file=sys.stderr)
    return EXIT_USAGE


def _show_warning(show: Callable[..., None]) -> Callable[..., None]:
    """`warnings.showwarning` that prints bsnet's own warnings (a budget that constrains nothing) as one line."""
    from bsnet.budgets import BudgetWarning

    def shown(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if issubclass(category, BudgetWarning):
            print(f"bsnet: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **kw)
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    from bsnet.budgets import BudgetWarning
    from bsnet.runs import RunDirError
    with warnings.catch_warnings():
        warnings.simplefilter("always", BudgetWarning)
        warnings.showwarning = _show_warning(warnings.showwarning)
        try:
            args = parse(list(sys.argv[1:] if argv is None else argv))
            return COMMANDS[args.command](args)
        except (UsageError, ConfigError, RunDirError, ValueError, FileNotFoundError) as e:
            return _error(e)
        except ModuleNotFoundError as e:
            if e.name in CLI_EXTRAS:  # a core-only install
                return _error(f"the command line needs {e.name}: pip install 'bsnet[cli]'")
            raise
        except OSError as e:  # a path that cannot be written or read (permissions, a folder for a file, a full disk)
            return _error(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}")
        except (MemoryError, RuntimeError) as e:
            asked = re.search(r"[Tt]ried to allocate (?:([0-9]+) bytes|([0-9.]+ ?[KMGT]i?B))", str(e))
            if not (isinstance(e, MemoryError) or asked or type(e).__name__ == "OutOfMemoryError"):
                raise  # a bug, not the user's input: its traceback is the report
            size = (f"{int(asked[1]) / 2**30:.3g} GiB" if asked[1] else asked[2]) if asked else ""
            return _error(f"out of memory{f' ({size} asked for at once)' if size else ''}: a smaller super network "
                          "(--supernet-config), model or --batch-size")
        except KeyboardInterrupt:
            print("bsnet: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
            return 130
