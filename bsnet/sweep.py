"""Budget sweeps: one search per budget of one cost, run as parallel worker processes or as Ray tasks.

Each run is an ordinary `bsnet search` (then optionally `bsnet train`) in its own process and run directory
under the sweep's folder, so a failed budget loses nothing else, and rerunning the sweep skips what finished
(and resumes what was interrupted). `sweep.csv` and `pareto.png` summarise the runs.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from bsnet import rundir


@dataclass
class SweepRun:
    budget: str
    run_dir: str
    status: str = "pending"  # finished | skipped (already finished) | failed
    cost: float | None = None
    accuracy: float | None = None
    flops: float | None = None
    params: float | None = None
    error: str = ""


def cost_name(cost: str) -> str:
    """The key a cost's figures have in architecture.json: a cost of the user's own is recorded under its `name`."""
    if ":" not in cost:
        return cost
    from bsnet.budgets import make_cost
    return make_cost(cost).name


def run_dir_name(budget: str) -> str:
    return "budget-" + re.sub(r"[^0-9A-Za-z.]+", "_", budget.replace("%", "pct"))


def _commands(run: SweepRun, cost: str, search_args: Sequence[str], train_epochs: int) -> list[list[str]]:
    out = Path(run.run_dir)
    cmds = []
    if not (out / "architecture.json").exists():
        resume = ["--resume"] if (out / "config.yaml").exists() else []
        cmds.append([sys.executable, "-m", "bsnet", "search", *search_args, "--budget", f"{cost}={run.budget}",
                     "--out", str(out), *resume])
    if train_epochs > 0 and not (out / "final" / "result.json").exists():
        cmds.append([sys.executable, "-m", "bsnet", "train", str(out), "--epochs", str(train_epochs)])
    return cmds


def _execute(cmds: list[list[str]], threads: int) -> tuple[int, str]:
    """Run the commands in turn; (exit code, last line of stderr of the one that failed)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for cmd in cmds:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            lines = [l for l in r.stderr.splitlines() if l.strip()]
            return r.returncode, lines[-1] if lines else f"exit code {r.returncode}"
    return 0, ""


def _summarise(run: SweepRun, cost: str) -> None:
    out = Path(run.run_dir)
    arch = json.loads((out / "architecture.json").read_text())
    run.cost = arch["cost"].get(cost_name(cost))
    run.flops, run.params = arch["cost"].get("flops"), arch["cost"].get("params")
    result = out / "final" / "result.json"
    run.accuracy = json.loads(result.read_text())["test_acc"] if result.exists() else arch["metrics"]["test_acc"]


def run_sweep(budgets: Sequence[str], out: Path, search_args: Sequence[str], *, cost: str = "flops", workers: int = 1,
              engine: str = "local", train_epochs: int = 0) -> list[SweepRun]:
    out = out.resolve()  # the runs may execute in another working directory (Ray workers)
    out.mkdir(parents=True, exist_ok=True)
    with rundir.locked(out):  # before any run starts: a sweep.csv or pareto.png of the user's is never replaced
        rundir.claim(out, "sweep.csv", "pareto.png")
    runs = [SweepRun(b, str(out / run_dir_name(b))) for b in budgets]
    todo = []
    for run in runs:
        cmds = _commands(run, cost, search_args, train_epochs)
        if cmds:
            todo.append((run, cmds))
        else:
            run.status = "skipped"
    threads = max(1, (os.cpu_count() or 1) // max(1, min(workers, len(todo) or 1)))
    if engine == "local":
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # each thread waits on one process
            results = list(pool.map(lambda item: _execute(item[1], threads), todo))
    elif engine == "ray":
        try:
            import ray
        except ImportError:
            raise ValueError("--engine ray needs Ray: pip install 'bsnet[ray]'") from None
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), ignore_reinit_error=True, log_to_driver=False)
        remote = ray.remote(num_cpus=threads)(_execute)
        results = ray.get([remote.remote(cmds, threads) for _, cmds in todo])
    else:
        raise ValueError(f"unknown engine {engine!r} (local or ray)")
    for (run, _), (code, error) in zip(todo, results):
        run.status, run.error = ("finished", "") if code == 0 else ("failed", error)
    for run in runs:
        if run.status != "failed":
            _summarise(run, cost)
    write_results(runs, out, cost)
    return runs


def write_results(runs: Sequence[SweepRun], out: Path, cost: str) -> None:
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(runs[0])))
        writer.writeheader()
        for run in runs:
            writer.writerow(asdict(run))
    done = [r for r in runs if r.cost is not None and r.accuracy is not None]
    if done:
        from bsnet.plots import plot_pareto
        plot_pareto([r.cost for r in done], [r.accuracy for r in done], [r.budget for r in done], cost,
                    out / "pareto.png")
