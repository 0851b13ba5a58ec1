"""Digits searches on the width fabric: does each reach its budget, and how good is what it finds?

`resnet_fabric` at 8x8 with one input channel (2 blocks per stage, channels 8/16/32, 4 width groups of blocks
twice their stage's width), the default search (12 epochs), no fine-tune. For each budget: the expected cost at the
end relative to the budget (goal: within [0.8, 1]), whether the most probable architecture had to be projected onto
the budget (goal: no), the found architecture's cost and its test accuracy with BatchNorm statistics recomputed
(goal: >= 95%), and the validation accuracy of the most probable architecture after each epoch.

    python benchmarks/width_search.py [--budgets 10% 30% 60% 25%+params=30% parallel=60% latency=40%]
                                      [--search-config KEY=VALUE ...] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bsnet import RunConfig, run_search
from bsnet.config import key_values

FABRIC = {"blocks": 2, "channels": [8, 16, 32], "width_groups": 4, "width_multiplier": 2.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", nargs="+", default=["10%", "30%", "60%", "25%+params=30%", "parallel=60%",
                                                         "latency=40%"], help="one search each; + joins budgets")
    parser.add_argument("--search-config", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    search = key_values(args.search_config, "--search-config")
    print(f"threads={torch.get_num_threads()} epochs={args.epochs} seed={args.seed} search_config={search}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, budget in enumerate(args.budgets):
            budgets = budget.split("+")
            config = RunConfig(supernet="resnet_fabric", supernet_config=FABRIC, budget=budgets, epochs=args.epochs,
                               finetune_epochs=0, seed=args.seed, search_config=search,
                               parallel_workers=2 if any(b.startswith("parallel") for b in budgets) else None)
            t0 = time.perf_counter()
            arch, out = run_search(config, Path(tmp) / f"run-{i}")
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            expected = {k: v / arch.budget[k] for k, v in records[-1]["expected_cost"].items()}
            found = {k: arch.cost[k] / arch.budget[k] for k in arch.budget}
            val = ",".join(f"{100 * r['val_acc']:.0f}" for r in records)
            print(f"budget={budget} seconds={time.perf_counter() - t0:.1f} "
                  f"expected/budget={','.join(f'{k}:{v:.3f}' for k, v in expected.items())} "
                  f"projected={arch.projected} dropped={len(arch.dropped)} "
                  f"found/budget={','.join(f'{k}:{v:.3f}' for k, v in found.items())} "
                  f"test_acc={100 * arch.metrics['test_acc_search_weights']:.2f} "
                  f"val_by_epoch={val}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
