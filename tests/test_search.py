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
    # As in one CIFAR-10 search (BENCHMARKS.md, session 6): the least probable kept gate is the last skip of a stage
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


def test_warmup_trains_the_weights_and_holds_the_gates_and_lambda(digits):
    torch.manual_seed(0)
    net = bsnet.create_supernet("cnf", **FABRIC)
    x, y = next(batches(digits.train, 32))
    search = BudgetedSearch(net, [parse_budget("10%")], SearchConfig(warmup=0.5), steps_per_epoch=2, epochs=2)
    assert search.warmup_steps == 2
    logits, weights = search.gates.logits.detach().clone(), [p.detach().clone() for p in net.parameters()]
    for _ in range(2):
        search.step(x, y)
    assert torch.equal(search.gates.logits, logits) and search.lambdas.item() == 0.0
    assert any(not torch.equal(p, w) for p, w in zip(net.parameters(), weights))
    search.step(x, y)  # warm-up over: the gates and λ move
    assert not torch.equal(search.gates.logits, logits) and search.lambdas.item() > 0.0
    with pytest.raises(ValueError, match="warmup"):
        SearchConfig(warmup=1.0)


@pytest.mark.parametrize("explore", [0.0, 0.5])
def test_explore_keeps_training_a_block_the_gates_dropped(digits, explore):
    torch.manual_seed(0)
    net = bsnet.create_supernet("resnet_fabric", channels=[4, 8], image_size=8, in_channels=1, blocks=2)
    search = BudgetedSearch(net, [parse_budget("60%")], SearchConfig(explore=explore, groups=4))
    g = net.gate_names.index("B-1_1")
    with torch.no_grad():
        search.gates.logits[g] = -30.0  # the gates never sample this block
    block = [p.detach().clone() for p in net.blocks["B-1_1"].parameters()]
    steps = 0
    for x, y in batches(digits.train, 64, shuffle=True, generator=torch.Generator().manual_seed(0)):
        search.step(x, y)
        steps += 1
        if steps == 6:
            break
    trained = any(not torch.equal(p, b) for p, b in zip(net.blocks["B-1_1"].parameters(), block))
    assert trained == (explore > 0)
    assert search.gates.logits[g].item() == pytest.approx(-30.0, abs=1e-3)  # explored ones give the gates no gradient
    with pytest.raises(ValueError, match="explore"):
        SearchConfig(explore=0.5, sampling="per_example")


def test_anneal_moves_the_penalty_budget_from_the_full_cost_to_the_target_after_the_warmup(digits):
    torch.manual_seed(0)
    net = bsnet.create_supernet("cnf", **FABRIC)
    x, y = next(batches(digits.train, 32))
    search = BudgetedSearch(net, [parse_budget("10%")], SearchConfig(warmup=0.25, anneal=0.5),
                            steps_per_epoch=4, epochs=2)
    full, target = search.full_costs[0], search.limits[0]
    assert (search.warmup_steps, search.anneal_steps) == (2, 4)
    seen = []
    for _ in range(8):
        seen.append(search.penalty_limits().item())
        search.step(x, y)
    # Held at the full cost through the warm-up, then geometric: each step cuts the same fraction.
    assert seen[:3] == pytest.approx([full] * 3)
    assert seen[4] == pytest.approx(full * (target / full) ** 0.5)
    assert seen[6:] == pytest.approx([target] * 2)
    ratios = [b / a for a, b in zip(seen[2:6], seen[3:7])]
    assert ratios == pytest.approx([ratios[0]] * 4) and ratios[0] < 1
    # A penalty against the annealed budget is smaller than against the target for the same costs.
    costs = torch.tensor([[full * 0.5]], dtype=torch.float64)
    search.steps = search.warmup_steps + 1
    search.lambdas.fill_(1.0)
    annealed = search._penalty(costs).item()
    search.steps = search.warmup_steps + search.anneal_steps
    assert annealed < search._penalty(costs).item()
    # The found architecture is held to the target whatever the schedule.
    assert search.found().mask.shape == (net.num_gates,) and search.within_budget(search.found().mask)
    loose = BudgetedSearch(net, [parse_budget(f"{2 * full}")], SearchConfig(anneal=1.0), steps_per_epoch=1, epochs=4)
    loose.steps = 2
    assert loose.penalty_limits().item() == pytest.approx(full)  # a budget above the full cost is never raised to
    with pytest.raises(ValueError, match="anneal"):
        SearchConfig(warmup=0.6, anneal=0.5)


def test_linear_cost_credit_charges_each_dropped_gate_its_own_cost_and_lambda_the_live_cost(digits):
    net = bsnet.create_supernet("resnet_fabric", blocks=2, channels=[4, 8, 8], image_size=8, in_channels=1)
    flops, names = bsnet.FlopsCost(), net.gate_names
    search = BudgetedSearch(net, [parse_budget("30%")], SearchConfig(cost_credit="linear"))
    full = search.full_costs[0]
    for g in ("B-0_0", "S-0_0", "S-1_0"):  # a block, an identity skip (free) and a projection skip
        alone = net.full_mask()
        alone[names.index(g)] = 0
        assert search.savings[0, names.index(g)].item() == pytest.approx(full - float(flops(net, alone)))
    assert search.savings[0, names.index("S-0_0")].item() == 0.0
    # Without B-2_1 and S-2_1 the last node is reached only by the stage-0 shortcut: stages 1 and 2 die.
    kill = net.full_mask()
    kill[[names.index("B-2_1"), names.index("S-2_1")]] = 0
    masks = torch.stack([net.full_mask(), kill])
    live = search._costs(masks)
    charged = search.charged_costs(masks, live)
    assert charged[0, 0].item() == pytest.approx(full) and live[0, 0].item() == pytest.approx(full)
    assert charged[0, 1].item() == pytest.approx(full - search.savings[0, names.index("B-2_1")].item())
    assert live[0, 1].item() < 0.5 * charged[0, 1].item()  # the live credit would reward the kill switch
    assert torch.equal(BudgetedSearch(net, [parse_budget("30%")]).charged_costs(masks, live), live)
    # λ follows the live cost the samples had, not the charged one.
    x, y = next(batches(digits.train, 32))
    stats = search.step(x, y)
    violation = max(-1.0, min(1.0, stats.costs[0] / search.limits[0] - 1))
    assert search.lambdas.item() == pytest.approx(max(0.0, SearchConfig().lambda_lr * violation))
    with pytest.raises(ValueError, match="cost_credit"):
        SearchConfig(cost_credit="own")


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
    limit = search.limits[0]
    penalty = search._penalty(torch.tensor([[0.3 * limit, 0.95 * limit, limit]], dtype=torch.float64))
    assert penalty[0] > 0 and penalty[1] == 0 and penalty[2] == 0  # within [floor, 1] of the budget: free
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


def test_init_probs_set_the_initial_probability_of_gates_by_name_prefix():
    net = bsnet.create_supernet("resnet_fabric", blocks=2, channels=[4, 8, 8])
    search = BudgetedSearch(net, [parse_budget("50%")], SearchConfig(init_probs={"X-": 0.5, "S-": 0.2, "S-1_0": 0.7}))
    probs = dict(zip(net.gate_names, search.gates.probs().tolist()))
    assert probs["X-1_0_0"] == pytest.approx(0.5) and probs["S-0_0"] == pytest.approx(0.2)
    assert probs["S-1_0"] == pytest.approx(0.7)  # the longest prefix wins
    assert probs["B-0_0"] == pytest.approx(SearchConfig().init_prob)
    with pytest.raises(ValueError, match="no gate name starts with 'Q'"):
        BudgetedSearch(net, [parse_budget("50%")], SearchConfig(init_probs={"Q": 0.5}))
    with pytest.raises(ValueError, match="init_probs"):
        SearchConfig(init_probs={"X-": 1.0})
    with pytest.raises(ValueError, match="init_probs"):
        SearchConfig(init_probs={3: 0.5})


def test_paired_scores_the_architectures_on_the_same_examples_and_changes_only_the_gates_step(digits):
    x, y = next(batches(digits.train, 32))
    after = {}
    for paired in (False, True):
        torch.manual_seed(0)
        net = bsnet.create_supernet("cnf", **FABRIC)
        search = BudgetedSearch(net, [parse_budget("50%")], SearchConfig(paired=paired, init_prob=0.5))
        search.step(x, y)
        after[paired] = ({k: v.clone() for k, v in net.state_dict().items()}, search.gates.logits.detach().clone())
    # The extra forward leaves the weights' step and BatchNorm's running statistics as they were ...
    assert all(torch.equal(after[False][0][k], after[True][0][k]) for k in after[False][0])
    # ... and changes what the gates learn.
    assert not torch.equal(after[False][1], after[True][1])
    masks = search.gates.sample(2, torch.Generator().manual_seed(1))[0]
    same = search._paired_losses(x[:8], y[:8], masks[:1].repeat(3, 1))
    assert same.shape == (3, 8) and torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])
    two = search._paired_losses(x[:8], y[:8], masks)
    assert not torch.equal(two[0], two[1])


def test_logit_clip_bounds_the_gates_logits(digits):
    free, _ = run(digits, ["10%"], epochs=1)
    clipped, _ = run(digits, ["10%"], epochs=1, logit_clip=1.0)
    assert free.gates.logits.abs().max() > 1.0  # the bound below is active
    assert clipped.gates.logits.abs().max() <= 1.0
    assert torch.isclose(clipped.gates.logits.abs(), torch.tensor(1.0)).any()
    with pytest.raises(ValueError, match="logit_clip"):
        SearchConfig(logit_clip=-1.0)
