"""Searches on the width fabric with the default settings but `fill_budgets` off: digits, `resnet_fabric` at 8x8 with
one input channel and 2 blocks per stage, 4 width groups of blocks twice their stage's width, under FLOPs, a
FLOPs+params pair, a parallel and a latency budget. Each finds an architecture within every budget, records the width
it keeps of each block, and its most probable architecture scores >= 95% on the test set with its BatchNorm statistics
recomputed, before any fine-tune. Filled, the found architecture carries gates the search rarely sampled, whose weights
are barely trained: before any fine-tune the latency search's scored 89.7% in one of three suite runs (BENCHMARKS.md,
"Search on the width fabric"). (Not met yet, so not asserted: the expected cost ending within [0.8, 1] x every budget
with the most probable architecture never projected.)"""
import json

import pytest

from bsnet import RunConfig, run_search

FABRIC = {"blocks": 2, "channels": [8, 16, 32], "width_groups": 4, "width_multiplier": 2.0}


@pytest.mark.parametrize("budgets, workers", [(["10%"], None), (["30%"], None), (["60%"], None),
                                              (["25%", "params=30%"], None), (["parallel=60%"], 2),
                                              (["latency=40%"], None)],
                         ids=["flops-10", "flops-30", "flops-60", "flops-params", "parallel", "latency"])
def test_a_width_search_reaches_its_budgets_and_learns(budgets, workers, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the latency table: measured here, once
    config = RunConfig(supernet="resnet_fabric", supernet_config=FABRIC, budget=budgets, parallel_workers=workers,
                       finetune_epochs=0, search_config={"fill_budgets": False})
    arch, out = run_search(config, tmp_path / "run")
    assert arch.widths and all(0 < kept <= full for kept, full in arch.widths.values())
    assert json.loads((out / "architecture.json").read_text())["widths"] == arch.widths
    for cost, limit in arch.budget.items():
        assert arch.cost[cost] <= limit
    assert arch.metrics["test_acc_search_weights"] >= 0.95
