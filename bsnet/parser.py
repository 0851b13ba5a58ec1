"""The `bsnet` command's parser: every command's options, each option's type and range checked as it is parsed,
so that a bad one is one line (`UsageError`) before any work starts. The commands themselves are in `bsnet.cli`."""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

from bsnet.config import DEVICE, RunConfig


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


def check_output_file(option: str, path: str, suffixes: tuple[str, ...],
                      ours: Callable[[Path], bool] | None = None) -> None:
    """A file bsnet is asked to write: named with one of `suffixes`, in a folder that exists, not a folder itself,
    and not a file that is there already unless `ours` recognises it as one bsnet wrote."""
    where = Path(path)
    if where.is_dir():
        raise UsageError(f"{option} {path} is a folder: name the file to write")
    if where.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: name a {' or '.join(suffixes)} file")
    if not where.parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {where.parent} does not exist")
    if (where.exists() or where.is_symlink()) and not (ours is not None and where.is_file() and ours(where)):
        raise UsageError(f"{option} {path} exists: bsnet does not replace a file it did not write; remove it, or "
                         "choose another name")


# ---- parser -------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as every other usage error
        raise UsageError(message)


def _integer(low: int) -> Callable[[str], int]:
    """An option's integer, at least `low`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def _positive(text: str) -> float:
    """An option's finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _device(text: str) -> str:
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


def _sizes(text: str) -> list[int]:
    """An option's comma-separated sizes, e.g. 3,32,32 (RunConfig checks that they are positive)."""
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be sizes like 3,32,32, got {text!r}") from None


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
            kw["type"] = _sizes
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
    pr = add("profile", help="measure a per-node latency table on this machine")
    pr.add_argument("--supernet", required=True, help="registered super network")
    pr.add_argument("--supernet-config", nargs="*", metavar="KEY=VALUE", help="its settings")
    pr.add_argument("--batch-size", type=_integer(1), default=1, help="batch size of the measurement")
    pr.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                    help="float32, float16 or bfloat16")
    pr.add_argument("--device", default="cpu", type=_device, help="cpu, cuda or cuda:N")
    pr.add_argument("--min-run-time", type=_positive, default=0.05, help="seconds of timing per node")
    pr.add_argument("--out", required=True, help="the table to write (JSON)")
    sw = add("sweep", help="one search per budget, in parallel worker processes or on a Ray cluster; other options "
                           "go to each `bsnet search`")
    sw.add_argument("--budgets", required=True, help="comma-separated budgets of the swept cost, e.g. 10%%,20%%,40%%")
    sw.add_argument("--sweep-cost", default="flops", help="the swept cost")
    sw.add_argument("--workers", type=_integer(1), default=1, help="searches run at once (local engine)")
    sw.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local worker processes, or tasks on the Ray cluster RAY_ADDRESS names")
    sw.add_argument("--train-epochs", type=_integer(0), default=0, help="then `bsnet train` each found network")
    sw.add_argument("--out", required=True, help="the sweep's folder: one run directory per budget")
    sw.set_defaults(search_args=[])
    model_help = "package.module:factory of your model, as given to `bsnet search --model` (never read from the run)"
    e = add("export", help="export a run's found network: pt (safetensors), onnx or python")
    e.add_argument("run_dir", help="a finished search run")
    e.add_argument("--format", choices=("pt", "onnx", "python"), default="pt",
                   help="pt: safetensors; onnx: checked with ONNX Runtime; python: readable source and its weights")
    e.add_argument("--out", help="output file (default: RUN_DIR/export/model.*)")
    e.add_argument("--model", help=model_help)
    t = add("train", help="retrain the found network; writes RUN_DIR/final/")
    t.add_argument("run_dir", help="a finished search run")
    t.add_argument("--epochs", type=_integer(1), default=10, help="training epochs")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--from-scratch", dest="finetune", action="store_false", help="fresh weights (the default)")
    mode.add_argument("--finetune", dest="finetune", action="store_true", help="start from the search weights")
    t.add_argument("--lr", type=_positive, help="learning rate (default: 0.1 from scratch, 0.02 to fine-tune)")
    t.add_argument("--batch-size", type=_integer(1), help="(default: the search's)")
    t.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                   help="cosine, or step: x0.1 at 50%% and 75%% of the epochs")
    t.add_argument("--seed", type=_integer(0), help="(default: the search's)")
    t.add_argument("--device", default="cpu", type=_device, help="cpu, cuda or cuda:N")
    t.add_argument("--dataset", help="(default: the search's)")
    t.add_argument("--data-dir", help="(default: the search's)")
    t.add_argument("--model", help=model_help)
    t.add_argument("--overwrite", action="store_true", help="replace an earlier training's final/")
    t.set_defaults(finetune=False)
    ev = add("eval", help="accuracy and every cost of the exported network, measured on it")
    ev.add_argument("run_dir", help="a finished search run")
    ev.add_argument("--dataset", help="(default: the search's)")
    ev.add_argument("--data-dir", help="(default: the search's)")
    ev.add_argument("--batch-size", type=_integer(1), default=1, help="batch size of the latency measurement")
    ev.add_argument("--model", help=model_help)
    sh = add("show", help="print a run's architecture summary; --draw writes the drawing")
    sh.add_argument("run_dir", help="a finished search run")
    sh.add_argument("--draw", metavar="PNG", help="write the architecture's drawing there")
    sh.add_argument("--model", help=model_help)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    if not argv:
        argv = ["search"]  # `bsnet` alone runs the embedded demo
    if argv[0] == "sweep":  # the options it does not know are each search's own
        args, rest = make_parser().parse_known_args(argv)
        args.search_args = rest
    else:
        args = make_parser().parse_args(argv)
    if args.command is None:
        args = make_parser().parse_args(["search", *argv])
    return args
