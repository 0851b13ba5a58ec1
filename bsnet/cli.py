"""The `bsnet` command: a thin layer over the Python API (`bsnet.pipeline` for a search run). Bad input: one line
on stderr, exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from bsnet.config import ConfigError, RunConfig, key_values, read_config_file, resolve, resume_conflicts
from bsnet.tables import eval_table, print_summary, show_lines

EXIT_USAGE, EXIT_BUDGET, EXIT_DIVERGED = 2, 3, 4
CLI_EXTRAS = ("rich", "matplotlib", "sklearn", "PIL")  # bsnet[cli]


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


def _device(name: str) -> Any:
    import torch
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available on this machine")
    return torch.device(name)


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

    if args.resume and args.out and (Path(args.out) / "architecture.json").exists():
        print(f"{args.out} has already finished: nothing to resume (its results are in {args.out}/architecture.json)")
        return 0
    if args.resume:
        config = _resumed_config(args)
    else:
        config = resolve(read_config_file(args.config) if args.config else {}, _given_options(args))
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


def cmd_export(args: argparse.Namespace) -> int:
    from bsnet.export import FORMATS, export_file
    from bsnet.export.load import load_with_info
    run, _ = _open_run(args.run_dir)
    model = _user_model(args.model)
    module, arch, which = load_with_info(run, model)
    stem = "found_network" if args.format == "python" else "model"  # the python format writes its own weights
    out = Path(args.out) if args.out else run / "export" / (stem + FORMATS[args.format])
    shape = tuple(arch.supernet_network(model).input_shape) if args.format == "onnx" else None
    export_file(module, arch, args.format, out, shape)
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
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size or cfg.batch_size,
                       lr=args.lr if args.lr is not None else (0.1 if not args.finetune else 0.02),
                       schedule=args.schedule, seed=seed)
    progress, bars = _progress_bars(Console(stderr=True), True)
    with bars:
        result = retrain(run, module, arch, arch.supernet_network(model), data, tcfg, finetune=args.finetune,
                         device=_device(args.device), parallel_workers=cfg.parallel_workers,
                         overwrite=args.overwrite, progress=progress)
    print(f"trained the found network {'from its search weights' if args.finetune else 'from scratch'} for "
          f"{tcfg.epochs} epochs: test accuracy {100 * result['test_acc']:.2f}%; written to {run / 'final'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bsnet.export.load import load_with_info
    from bsnet.retrain import measure
    from bsnet.runs import atomic_write_text
    run, cfg = _open_run(args.run_dir)
    data = _run_data(cfg, args)
    model = _user_model(args.model)
    module, arch, which = load_with_info(run, model)
    net = arch.supernet_network(model)
    report = {"weights": which, **measure(module, net, arch.mask(net.gate_names), data, batch_size=args.batch_size,
                                          parallel_workers=cfg.parallel_workers)}
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
    net = bsnet.create_supernet(args.supernet, **key_values(args.supernet_config, "--supernet-config"))
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


class _Help(argparse.HelpFormatter):
    """Every option's default in its help, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, [], argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    return "%.4g" % value if isinstance(value, float) else str(value)


def _add_run_options(s: argparse.ArgumentParser) -> None:
    """`bsnet search`'s run options, one per RunConfig field: None when not given, so that the config file and
    the defaults fill in what the command line leaves out."""
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        default = getattr(defaults, f.name)
        text = f.metadata["help"].replace("%", "%%")
        if default not in (None, [], {}) and "default" not in text:
            text += f" (default: {_shown(default)})".replace("%", "%%")
        kw: dict[str, Any] = {"help": text, "metavar": f.metadata.get("metavar")}
        base = f.type.removesuffix(" | None")
        if base in ("int", "float"):
            kw["type"] = int if base == "int" else float
        elif base == "list[str]":
            kw["action"] = "append"
            kw["help"] += " (repeat)"
        elif base == "list[int]":
            kw["type"] = lambda v: [int(d) for d in v.split(",")]
        elif base == "dict[str, Any]":
            kw["nargs"] = "*"
        s.add_argument("--" + f.name.replace("_", "-"), **kw)


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bsnet", description="Budgeted super networks: architecture and weights under a cost budget.",
                formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"bsnet {__import__('bsnet').__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    add = lambda name, **kw: sub.add_parser(name, formatter_class=_Help, **kw)  # noqa: E731
    s = add("search", help="search an architecture under budgets (default: digits, cnf, 30%% FLOPs)")
    s.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (a run's config.yaml reruns it)")
    _add_run_options(s)
    s.add_argument("--out", help="run directory (default: a new runs/search-NNN)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    s.set_defaults(func=cmd_search)
    pr = add("profile", help="measure a per-node latency table on this machine")
    pr.add_argument("--supernet", required=True, help="registered super network")
    pr.add_argument("--supernet-config", nargs="*", metavar="KEY=VALUE", help="its settings")
    pr.add_argument("--batch-size", type=int, default=1, help="batch size of the measurement")
    pr.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    pr.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    pr.add_argument("--min-run-time", type=float, default=0.05, help="seconds of timing per node")
    pr.add_argument("--out", required=True, help="the table to write (JSON)")
    pr.set_defaults(func=cmd_profile)
    sw = add("sweep", help="one search per budget, in parallel worker processes or on a Ray cluster; other options "
                           "go to each `bsnet search`")
    sw.add_argument("--budgets", required=True, help="comma-separated budgets of the swept cost, e.g. 10%%,20%%,40%%")
    sw.add_argument("--sweep-cost", default="flops", help="the swept cost")
    sw.add_argument("--workers", type=int, default=1, help="searches run at once (local engine)")
    sw.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local worker processes, or tasks on the Ray cluster RAY_ADDRESS names")
    sw.add_argument("--train-epochs", type=int, default=0, help="then `bsnet train` each found network")
    sw.add_argument("--out", required=True, help="the sweep's folder: one run directory per budget")
    sw.set_defaults(func=cmd_sweep, search_args=[])
    model_help = "package.module:factory of your model, as given to `bsnet search --model` (never read from the run)"
    e = add("export", help="export a run's found network: pt (safetensors), onnx or python")
    e.add_argument("run_dir", help="a finished search run")
    e.add_argument("--format", choices=("pt", "onnx", "python"), default="pt",
                   help="pt: safetensors; onnx: checked with ONNX Runtime; python: readable source and its weights")
    e.add_argument("--out", help="output file (default: RUN_DIR/export/model.*)")
    e.add_argument("--model", help=model_help)
    e.set_defaults(func=cmd_export)
    t = add("train", help="retrain the found network; writes RUN_DIR/final/")
    t.add_argument("run_dir", help="a finished search run")
    t.add_argument("--epochs", type=int, default=10, help="training epochs")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--from-scratch", dest="finetune", action="store_false", help="fresh weights (the default)")
    mode.add_argument("--finetune", dest="finetune", action="store_true", help="start from the search weights")
    t.add_argument("--lr", type=float, help="learning rate (default: 0.1 from scratch, 0.02 to fine-tune)")
    t.add_argument("--batch-size", type=int, help="(default: the search's)")
    t.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                   help="cosine, or step: x0.1 at 50%% and 75%% of the epochs")
    t.add_argument("--seed", type=int, help="(default: the search's)")
    t.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    t.add_argument("--dataset", help="(default: the search's)")
    t.add_argument("--data-dir", help="(default: the search's)")
    t.add_argument("--model", help=model_help)
    t.add_argument("--overwrite", action="store_true", help="replace an earlier training's final/")
    t.set_defaults(func=cmd_train, finetune=False)
    ev = add("eval", help="accuracy and every cost of the exported network, measured on it")
    ev.add_argument("run_dir", help="a finished search run")
    ev.add_argument("--dataset", help="(default: the search's)")
    ev.add_argument("--data-dir", help="(default: the search's)")
    ev.add_argument("--batch-size", type=int, default=1, help="batch size of the latency measurement")
    ev.add_argument("--model", help=model_help)
    ev.set_defaults(func=cmd_eval)
    sh = add("show", help="print a run's architecture summary; --draw writes the drawing")
    sh.add_argument("run_dir", help="a finished search run")
    sh.add_argument("--draw", metavar="PNG", help="write the architecture's drawing there")
    sh.add_argument("--model", help=model_help)
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
    except (UsageError, ConfigError, RunDirError, ValueError, FileNotFoundError) as e:
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
