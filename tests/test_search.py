"""BudgetedSearch on real data (scikit-learn's digits), with a small fabric so that the suite stays fast."""
import pytest
import torch

import bsnet
from bsnet.budgets import Budget, parse_budget, parse_value
from bsnet.data import batches, load_dataset
from bsnet.search import BudgetedSearch, SearchConfig
from bsnet.train import accuracy

FABRIC = dict(layers=4, channels=8, image_size=8, in_channels=1, num_classes=10)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def run(digits, budgets, epochs=4, **cfg):
    torch.manual_seed(0)
    net = bsnet.create_supernet("cnf", **FABRIC)
    search = BudgetedSearch(net, [parse_budget(b) for b in budgets], SearchConfig(**cfg),
                            steps_per_epoch=21, epochs=epochs)
    first = search.expected_costs()
    for epoch in range(epochs):
        for x, y in batches(digits.train, 64, shuffle=True, generator=torch.Generator().manual_seed(epoch)):
            search.step(x, y)
    return search, first


def test_search_lowers_expected_cost_below_budget_and_learns(digits):
    search, first = run(digits, ["30%"], epochs=8)
    assert first[0] > search.limits[0]
    assert search.expected_costs()[0] <= search.limits[0]
    found = search.found()
    acc = accuracy(search.net, batches(digits.val, 256), mask=found.mask)
    assert acc > 0.5  # chance is 0.1; BN statistics here are the search's, not recalibrated


@pytest.mark.parametrize("budgets", [["10%"], ["30%"], ["60%"], ["params=40%"], ["25%", "params=30%"]])
def test_found_architecture_meets_every_budget(digits, budgets):
    search, _ = run(digits, budgets, epochs=3)
    found = search.found()
    net = search.net
    assert net.graph.connected(found.mask)
    for b, limit in zip(search.budgets, search.limits):
        assert float(b.cost(net, found.mask)) <= limit


def test_projection_when_stopped_early(digits):
    torch.manual_seed(0)
    net = bsnet.create_supernet("cnf", **FABRIC)
    search = BudgetedSearch(net, [parse_budget("20%")])
    x, y = next(batches(digits.train, 64))
    search.step(x, y)  # one step: the most probable architecture is still the full network
    assert not search.within_budget(net.graph.prune(search.gates.mode()))
    found = search.found()
    assert found.projected and found.dropped
    assert search.within_budget(found.mask) and net.graph.connected(found.mask)


def test_projection_does_not_cut_a_whole_branch_when_less_likely_gates_suffice():
    # As in one CIFAR-10 search (BENCHMARKS.md): the least probable kept gate is the last skip of a stage
    # whose last block is off, so dropping it prunes every block before that stage's shortcut, far more than needed.
    net = bsnet.create_supernet("resnet_fabric", blocks=2, channels=[4, 8, 8])
    names = net.gate_names
    logits = {g: 3.0 for g in names} | {"B-2_1": -3.0, "S-2_1": 0.2, "X-1_0_0": 1.0, "X-1_1_0": 1.0}
    flops = bsnet.FlopsCost()
    mode = net.graph.prune(torch.tensor([float(logits[g] > 0) for g in names]))
    limit = 0.8 * float(flops(net, mode))
    search = BudgetedSearch(net, [parse_budget(f"{limit}")])
    with torch.no_grad():
        search.gates.logits.copy_(torch.tensor([logits[g] for g in names]))
    found = search.found()
    assert found.projected and search.within_budget(found.mask) and net.graph.connected(found.mask)
    assert set(found.dropped) == {"X-1_0_0", "X-1_1_0"}  # the two gates that were least sure, and enough
    # Least probable first would have dropped S-2_1 and pruned every block of stages 1 and 2 with it.
    alone = mode.clone()
    alone[names.index("S-2_1")] = 0
    assert float(flops(net, net.graph.prune(alone))) < 0.6 * float(flops(net, found.mask))


def test_disconnected_mode_is_repaired_to_the_most_probable_connected(digits):
    net = bsnet.create_supernet("cnf", **FABRIC)
    search = BudgetedSearch(net, [parse_budget("50%")])
    with torch.no_grad():
        search.gates.logits.fill_(-1.0)  # every gate improbable: the mode keeps nothing
    found = search.found()
    assert found.repaired and net.graph.connected(found.mask)


def test_fixed_lambda_zero_keeps_cost_and_large_lambda_meets_budget(digits):
    zero, first = run(digits, ["30%"], epochs=3, lambda_mode="fixed", fixed_lambda=0.0)
    assert zero.expected_costs()[0] >= 0.9 * first[0]
    large, _ = run(digits, ["30%"], epochs=8, lambda_mode="fixed", fixed_lambda=1e-4)
    assert large.expected_costs()[0] <= large.limits[0]


def test_per_example_sampling_mode_also_learns(digits):
    search, first = run(digits, ["40%"], epochs=3, sampling="per_example", baseline="mean")
    assert search.expected_costs()[0] < first[0]


def test_budget_below_the_cheapest_architecture_is_refused():
    net = bsnet.create_supernet("cnf", **FABRIC)
    with pytest.raises(ValueError, match="cheapest"):
        BudgetedSearch(net, [parse_budget("1000")])


@pytest.mark.parametrize("device, message", [("cuda:99", "cuda:99"), ("tpu0", "not a device")])
def test_a_device_this_machine_lacks_is_one_error_at_the_start(device, message):
    with pytest.raises(ValueError, match=message):
        BudgetedSearch(bsnet.create_supernet("cnf", **FABRIC), [parse_budget("30%")], device=device)


@pytest.mark.parametrize("text, value, relative", [("30%", 0.3, True), ("2.5e7", 2.5e7, False), ("25M", 25e6, False),
                                                   ("1.2G", 1.2e9, False), ("3ms", 0.003, False),
                                                   ("500", 500.0, False)])
def test_budget_values(text, value, relative):
    v, r = parse_value(text)
    assert v == pytest.approx(value) and r == relative


@pytest.mark.parametrize("bad", ["-3%", "0", "abc", "nope=30%", "30%%"])
def test_bad_budgets(bad):
    with pytest.raises(ValueError):
        parse_budget(bad)


def test_budget_names_the_cost():
    b = parse_budget("params=1.2M")
    assert isinstance(b, Budget) and b.cost.name == "params" and b.value == pytest.approx(1.2e6)
    assert parse_budget("parallel=6", parallel_workers=3).cost.workers == 3


def test_lambda_moves_at_most_lambda_lr_per_step_and_lr_is_constant_without_a_schedule(digits):
    torch.manual_seed(0)
    net = bsnet.create_supernet("cnf", **FABRIC)
    x, y = next(batches(digits.train, 32))
    paced = BudgetedSearch(net, [parse_budget("10%")])
    for _ in range(10):  # far over a 10% budget: the clipped violation is 1 at every step
        paced.step(x, y)
    assert paced.lambdas.item() == pytest.approx(10 * SearchConfig().lambda_lr)
    assert paced.opt.param_groups[0]["lr"] == SearchConfig().lr  # no epochs given: no schedule
    with pytest.raises(ValueError, match="both steps_per_epoch and epochs"):
        BudgetedSearch(net, [parse_budget("10%")], epochs=12)
    cosine = BudgetedSearch(net, [parse_budget("10%")], steps_per_epoch=2, epochs=2)
    for _ in range(4):
        cosine.step(x, y)
    assert cosine.opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_budget_floor_penalises_samples_that_leave_the_budget_unused(digits):
    net = bsnet.create_supernet("cnf", **FABRIC)
    x, y = next(batches(digits.train, 32))
    search = BudgetedSearch(net, [parse_budget("50%")], SearchConfig(budget_floor=0.9))
    with torch.no_grad():
        search.gates.logits.fill_(-2.0)  # samples far below the budget
    stats = search.step(x, y)
    used = stats.costs[0] / search.limits[0]
    assert used < 0.5 and search.lambdas.item() == 0.0
    assert search.floor_lambdas.item() == pytest.approx(SearchConfig().lambda_lr * min(1.0, 0.9 - used))
    resumed = BudgetedSearch(net, [parse_budget("50%")], SearchConfig(budget_floor=0.9))
    resumed.load_state_dict(search.state_dict())
    assert torch.equal(resumed.floor_lambdas, search.floor_lambdas)
    off = BudgetedSearch(net, [parse_budget("50%")], SearchConfig(budget_floor=0.0))
    with torch.no_grad():
        off.gates.logits.fill_(-2.0)
    off.step(x, y)
    assert off.floor_lambdas.item() == 0.0
    fixed = BudgetedSearch(net, [parse_budget("50%")], SearchConfig(lambda_mode="fixed"))  # a fixed λ has no floor
    fixed.step(x, y)
    assert fixed.floor_lambdas.item() == 0.0
    with pytest.raises(ValueError, match="budget_floor"):
        SearchConfig(budget_floor=1.0)


def test_fill_budgets_brings_thinned_and_dropped_blocks_back_while_the_budget_holds():
    net = bsnet.create_supernet("resnet_fabric", blocks=2, channels=[8, 16, 32], image_size=8, in_channels=1,
                                num_classes=10, width_groups=4, width_multiplier=2.0)
    budget = [parse_budget("80%")]
    plain, filled = BudgetedSearch(net, budget, SearchConfig(fill_budgets=False)), BudgetedSearch(net, budget)
    for search in (plain, filled):
        with torch.no_grad():  # a mode far under the budget: every stage's first block thinned to one group
            search.gates.logits.fill_(-2.0)
            for i, name in enumerate(net.gate_names):
                first_block = name.startswith("B-") and name.endswith("_0")
                if name.startswith(("S-", "X-")) or name.endswith("_0_0") or first_block:
                    search.gates.logits[i] = 2.0
    small, grown = plain.found(), filled.found()
    limit = plain.limits[0]
    assert plain.costs(small.mask)[0] < 0.5 * limit and small.added == []
    assert plain.costs(small.mask)[0] < filled.costs(grown.mask)[0] <= limit
    assert any(g.startswith("B-") for g in grown.added)  # a dropped block came back, with a group of its own
    assert all(grown.mask[net.gate_names.index(g)] > small.mask[net.gate_names.index(g)] for g in grown.added)
    for g in torch.nonzero(grown.mask == 0).flatten():  # no gate left out would still fit
        trial = grown.mask.clone()
        trial[g] = 1.0
        trial = net.graph.prune(trial)
        assert torch.equal(trial, grown.mask) or not filled.within_budget(trial)
    with pytest.raises(ValueError, match="fill_budgets"):
        SearchConfig(fill_budgets="yes")


def test_found_is_worked_out_once_per_state_of_the_gates(monkeypatch):
    net = bsnet.create_supernet("resnet_fabric", blocks=1, channels=[8, 16], image_size=8, in_channels=1,
                                num_classes=10, width_groups=2)
    search = BudgetedSearch(net, [parse_budget("60%")])
    calls = []
    real = bsnet.projection.find_architecture
    monkeypatch.setattr(bsnet.projection, "find_architecture", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = search.found()
    first.mask.zero_()  # what a caller does with its copy stays with it
    again = search.found()
    assert len(calls) == 1 and again.mask.sum() > 0 and search.within_budget(again.mask)
    search.found(project=False)
    with torch.no_grad():
        search.gates.logits[0] += 1.0
    search.found()
    assert len(calls) == 3


def test_a_checkpoint_resumes_bitwise_and_keys_of_removed_options_are_ignored(digits):
    x, y = next(batches(digits.train, 32))

    def search():
        torch.manual_seed(0)
        return BudgetedSearch(bsnet.create_supernet("cnf", **FABRIC), [parse_budget("30%")])

    whole, cut = search(), search()
    for _ in range(2):
        whole.step(x, y)
        cut.step(x, y)
    state = cut.state_dict()
    assert "ema_reward" not in state
    resumed = search()
    resumed.load_state_dict({**state, "ema_reward": -2.5})  # written by an older bsnet (baseline="ema")
    whole.step(x, y)
    resumed.step(x, y)
    assert torch.equal(whole.gates.logits, resumed.gates.logits) and torch.equal(whole.lambdas, resumed.lambdas)
    assert all(torch.equal(a, b) for a, b in zip(whole.net.state_dict().values(), resumed.net.state_dict().values()))


@pytest.mark.parametrize("removed", [dict(baseline="ema"), dict(warmup=0.3), dict(paired=True), dict(logit_clip=2.5),
                                     dict(anneal=0.5), dict(cost_credit="linear"), dict(explore=0.25),
                                     dict(init_probs={"X-": 0.5}), dict(ema_decay=0.9)])
def test_options_that_did_not_help_are_gone(removed):
    with pytest.raises((TypeError, ValueError)):
        SearchConfig(**removed)


def test_gates_started_from_given_logits_are_gone():
    """`init_logits` (gates started from each width group's weight norm) tied the plain start on a trained ResNet-20
    (BENCHMARKS.md, "Tried") and left the library."""
    from tests.conftest import diamond
    net = diamond()
    with pytest.raises(TypeError):
        BudgetedSearch(net, [parse_budget("90%")], init_logits=torch.zeros(net.num_gates))
    with pytest.raises(TypeError):
        bsnet.fit(torch.nn.Linear(2, 2), torch.zeros(1, 2), budgets=["50%"], train=[], init_logits=None)
