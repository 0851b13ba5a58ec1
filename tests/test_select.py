"""Choosing the final architecture among the found one and tempered samples of the gates (`BudgetedSearch.candidates`,
`bsnet search --select K`): the candidates meet the budgets, and the run keeps the best on validation."""
import json

import pytest
import torch

import bsnet
from bsnet.budgets import parse_budget
from bsnet.cli import main
from bsnet.search import BudgetedSearch, SearchConfig
from tests.cli_options import TINY


def search_with_logits(logits: float | torch.Tensor, budget: str = "50%", *more: str,
                       fill_budgets: bool = True) -> BudgetedSearch:
    net = bsnet.create_supernet("resnet_fabric", blocks=2, channels=[4, 8, 8])
    search = BudgetedSearch(net, [parse_budget(b) for b in (budget, *more)], SearchConfig(fill_budgets=fill_budgets))
    with torch.no_grad():
        search.gates.logits.copy_(torch.as_tensor(logits).expand_as(search.gates.logits))
    return search


# Seed 0's most probable architecture spends less than `low` of the budget (0.47): no lower bound unless the found
# architecture is filled to the budget; seed 1's spends 0.86.
@pytest.mark.parametrize("seed, fill_budgets, bounded", [(0, False, False), (0, True, True), (1, False, True)])
def test_candidates_are_the_found_architecture_then_distinct_samples_within_the_budget(seed, fill_budgets, bounded):
    torch.manual_seed(seed)
    search = search_with_logits(0.0, fill_budgets=fill_budgets)
    with torch.no_grad():
        search.gates.logits.copy_(torch.randn_like(search.gates.logits))
    net, limit = search.net, search.limits[0]
    cands = search.candidates(4, temperature=3.0, low=0.5)
    assert len(cands) == 4
    assert torch.equal(cands[0], search.found().mask)
    assert (search.costs(cands[0])[0] >= 0.5 * limit) == bounded
    for i, m in enumerate(cands):
        assert net.graph.connected(m) and torch.equal(net.graph.prune(m), m)
        if i > 0:
            assert (0.5 * limit if bounded else 0.0) <= float(bsnet.FlopsCost()(net, m)) <= limit
        assert not any(torch.equal(m, o) for o in cands[:i])
    single = search.candidates(1)
    assert len(single) == 1 and torch.equal(single[0], cands[0])


def test_certain_gates_leave_no_other_candidate_unless_the_temperature_flattens_them():
    # Every gate at probability 1 - 2e-9: every sample at temperature 1 is the full network, over the budget.
    search = search_with_logits(20.0, budget="60%")
    assert len(search.candidates(3, temperature=1.0)) == 1
    assert len(search.candidates(3, temperature=40.0)) == 3  # logits 0.5: samples differ from one another


def test_a_loose_second_budget_does_not_starve_the_candidates():
    # The lower bound holds only for budgets the found architecture uses to `low`: a params budget of 99% is not one.
    # Unfilled: filling spends every budget, a loose one too, so the found architecture itself would differ.
    alone = search_with_logits(0.0, "40%", fill_budgets=False)
    both = search_with_logits(0.0, "40%", "params=99%", fill_budgets=False)
    assert len(alone.candidates(3)) == 3
    cands = both.candidates(3)
    assert len(cands) == 3 and all(both.within_budget(m) for m in cands)
    assert all(torch.equal(a, b) for a, b in zip(cands, alone.candidates(3)))


@pytest.mark.parametrize("k, temperature", [(0, 3.0), (3, 0.0), (3, -1.0)])
def test_bad_candidate_settings_are_refused(k, temperature):
    with pytest.raises(ValueError, match="candidates needs"):
        search_with_logits(1.0).candidates(k, temperature)


def test_search_select_keeps_the_best_candidate_on_validation(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["search", *TINY, "--select", "3", "--select-temperature", "3", "--out", str(out)]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    m = arch["metrics"]
    sel = m["selection"]
    assert len(sel) == 3 and m["select_temperature"] == 3.0
    assert sel[m["selected"]]["kept"] == arch["kept"]
    assert sel[m["selected"]]["val_acc"] == max(c["val_acc"] for c in sel)
    for c in sel:
        assert c["cost"]["flops"] <= arch["budget"]["flops"]
    assert len({tuple(c["kept"]) for c in sel}) == len(sel)
    # The run's weights are the chosen candidate's fine-tuned ones: its validation score is what the choice saw.
    model = bsnet.load(out)
    from bsnet.data import batches, load_dataset
    from bsnet.train import accuracy
    data = load_dataset("digits", val_size=None, seed=0)
    assert accuracy(model, batches(data.val, 256)) == pytest.approx(sel[m["selected"]]["val_acc"], abs=1e-6)
    assert "chosen on validation among" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--select", "0"], "select must be an integer >= 1"),
    (["--select-temperature", "0"], "select_temperature must be a number > 0"),
])
def test_bad_select_options_are_one_line_and_exit_2(args, message, capsys, tmp_path):
    assert main(["search", *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
