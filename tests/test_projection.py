"""The projection onto the budgets and the candidates (`bsnet.projection`) on a hand-made graph, without a search."""
import pytest
import torch

from bsnet.graph import Graph
from bsnet.projection import (BudgetError, add_back, cheapest_drop, fallback_within_budget, fill,
                              find_architecture, meets_budgets, most_probable_connected, sample_candidates)

GATES = ["a", "b", "c", "d"]
FLOPS = torch.tensor([5.0, 2.0, 2.0, 1.0], dtype=torch.float64)  # what each gate adds to a cost


def paths() -> Graph:
    """Three input→output paths: through gate a; through b then c (a branch: without one the other is dead); d."""
    g = Graph("in", "out")
    for n in ("in", "m", "out"):
        g.add_node(n)
    g.add_edge("in", "out", gate="a")
    g.add_edge("in", "m", gate="b")
    g.add_edge("m", "out", gate="c")
    g.add_edge("in", "out", gate="d")
    return g.freeze()


def linear(*weights: torch.Tensor):
    """A costs function: [M, G] masks -> [J, M], each budget's cost the sum of its weights over the kept gates."""
    return lambda masks: torch.stack([masks.double() @ w for w in weights])


def mask(*kept: str) -> torch.Tensor:
    return torch.tensor([float(g in kept) for g in GATES])


def test_the_drop_charged_least_log_probability_per_excess_removed_goes_first_then_gates_that_fit_come_back():
    graph, costs = paths(), linear(FLOPS)
    logits = torch.tensor([3.0, 3.0, 3.0, 0.5])
    # Full: 10 against 6. Dropping b or c prunes the other: charged 6 for the pair, it loses too much.
    assert torch.equal(cheapest_drop(graph, mask(*GATES), logits, costs, [6.0]), mask("a", "b", "c"))
    found = find_architecture(graph, logits, costs, [6.0])
    # d then a dropped (down to 4), then d added back (5): the least likely gate stays, the costly one goes.
    assert torch.equal(found.mask, mask("b", "c", "d")) and found.dropped == ["a"]
    assert found.projected and not found.repaired
    assert not find_architecture(graph, logits, costs, [6.0], project_onto_budgets=False).projected
    assert not find_architecture(graph, logits, costs, [10.0]).projected  # the mode meets the budget


def test_a_disconnected_mode_gets_the_path_that_is_cheapest_to_switch_on():
    graph = paths()
    logits = torch.tensor([-1.0, -0.2, -0.2, -3.0])  # the mode keeps nothing; b and c together are nearest to on
    repaired, was = most_probable_connected(graph, logits)
    assert was and torch.equal(repaired, mask("b", "c"))
    found = find_architecture(graph, logits, linear(FLOPS), [100.0])
    assert found.repaired and torch.equal(found.mask, mask("b", "c"))


def test_add_back_adds_the_most_probable_gates_that_still_fit():
    graph, costs = paths(), linear(FLOPS)
    logits = torch.tensor([3.0, 1.0, 1.0, 2.0])
    assert torch.equal(add_back(graph, mask("d"), mask(*GATES), logits, costs, [6.0]), mask("a", "d"))
    assert torch.equal(add_back(graph, mask("d"), mask("b", "c", "d"), logits, costs, [6.0]), mask("d"))  # one by one


def test_fill_adds_the_most_probable_additions_that_fit_a_dead_gate_with_the_one_that_brings_it_to_life():
    graph, costs = paths(), linear(FLOPS)
    logits = torch.tensor([-1.0, -2.0, -2.0, 2.0])  # the mode keeps d alone (1 of the budget)
    # b or c alone is dead: only the pair adds anything, and it fits (5)
    assert torch.equal(fill(graph, mask("d"), logits, costs, [5.0]), mask("b", "c", "d"))
    # a (5 more, log-odds -1) fits too and is more probable than the pair (-4): after it the pair no longer fits
    assert torch.equal(fill(graph, mask("d"), logits, costs, [6.5]), mask("a", "d"))
    assert torch.equal(fill(graph, mask("d"), logits, costs, [3.0]), mask("d"))  # nothing fits
    for limit in (3.0, 5.0, 6.5, 8.0, 9.5):  # what fill leaves is maximal: no gate, nor any two, still fit
        filled = fill(graph, mask("d"), logits, costs, [limit])
        for extra in [[g] for g in range(4)] + [[g, h] for g in range(4) for h in range(g + 1, 4)]:
            trial = filled.clone()
            trial[extra] = 1.0
            trial = graph.prune(trial)
            assert torch.equal(trial, filled) or not meets_budgets(costs(trial.unsqueeze(0)), [limit])[0]
    found = find_architecture(graph, logits, costs, [5.0], fill_budgets=True)
    assert torch.equal(found.mask, mask("b", "c", "d")) and found.added == ["b", "c"]
    assert not found.projected and found.dropped == []
    assert find_architecture(graph, logits, costs, [5.0]).added == []  # only when asked
    # a projection that falls back to a path switches gates on without filling anything
    fallback = find_architecture(graph, torch.tensor([3.0, -1.0, -1.0, -1.0]), costs, [3.0], paths=[mask("d")])
    assert fallback.projected and fallback.dropped == ["a"] and fallback.added == []
    assert torch.equal(fallback.mask, mask("d"))
    # projected first, then filled: the mode {a, d} is over the budget, a goes; the pair then fits beside d
    found = find_architecture(graph, torch.tensor([1.0, -2.0, -2.0, 2.0]), costs, [5.0], fill_budgets=True)
    assert found.projected and found.dropped == ["a"] and found.added == ["b", "c"]
    assert torch.equal(found.mask, mask("b", "c", "d"))


def test_fill_brings_back_a_chain_that_no_gate_or_pair_of_gates_revives_along_its_most_probable_path():
    # in -a-> m -b or e-> n -c-> out beside d, in -> out: with d alone (a stage the mode bypasses) a, b, c and e each
    # stay dead, and so does any pair of them: only a whole path through m and n lives.
    graph = Graph("in", "out")
    for n in ("in", "m", "n", "out"):
        graph.add_node(n)
    for src, dst, gate in (("in", "m", "a"), ("m", "n", "b"), ("n", "out", "c"), ("in", "out", "d"), ("m", "n", "e")):
        graph.add_edge(src, dst, gate=gate)
    graph.freeze()
    costs, logits = linear(torch.ones(5, dtype=torch.float64)), torch.tensor([-1.0, -3.0, -1.0, 2.0, -1.0])
    alone = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    assert torch.equal(fill(graph, alone, logits, costs, [4.0]), torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))  # via e
    assert torch.equal(fill(graph, alone, logits, costs, [5.0]), torch.ones(5))  # then b fits beside it
    # a path costs 3 beside d: none fits, and an exchange brings in a gate or two, never a path (that would cost a
    # found architecture seconds on a fabric)
    assert torch.equal(fill(graph, alone, logits, costs, [3.0]), alone)


def test_fill_exchanges_a_kept_gate_for_a_costlier_addition_when_no_addition_fits():
    graph, costs = paths(), linear(torch.tensor([2.0, 0.75, 0.75, 1.0], dtype=torch.float64))
    logits = torch.tensor([2.0, -1.0, -1.0, 1.0])  # the mode {a, d} costs 3; the pair b, c 1.5 more
    # at 3.6 the pair does not fit beside a and d; with d out for it the network costs 3.5: more of the budget
    found = find_architecture(graph, logits, costs, [3.6], fill_budgets=True)
    assert torch.equal(found.mask, mask("a", "b", "c")) and found.added == ["b", "c"] and found.exchanged == ["d"]
    assert not found.projected and found.dropped == []
    every = graph.prune(torch.tensor([[float(b) for b in f"{i:04b}"] for i in range(16)]))
    connected_costs = costs(every[graph.connected(every)])[0]
    for limit in (3.0, 3.2, 3.6, 4.0, 4.5):  # here the fill ends on the costliest network within the budget
        filled = fill(graph, mask("a", "d"), logits, costs, [limit])
        assert float(costs(filled.unsqueeze(0))[0, 0]) == float(connected_costs[connected_costs <= limit].max())
    # nothing that spends no more is taken: at 3.2 the exchange's 3.5 does not fit, {a, d} stays
    assert find_architecture(graph, logits, costs, [3.2], fill_budgets=True).exchanged == []


def test_fallback_starts_from_a_given_path_when_the_most_probable_is_over_budget():
    graph, costs = paths(), linear(FLOPS)
    logits = torch.tensor([3.0, -1.0, -1.0, -1.0])
    assert torch.equal(fallback_within_budget(graph, mask(*GATES), logits, costs, [3.0], [mask("d")]), mask("d"))
    with pytest.raises(BudgetError, match="no connected architecture meets every budget"):
        fallback_within_budget(graph, mask(*GATES), logits, costs, [3.0])
    with pytest.raises(BudgetError):
        find_architecture(graph, logits, costs, [0.5])  # below the cheapest connected architecture


def test_meets_budgets_allows_rounding_only():
    costs = torch.tensor([[6.0, 6.0 * (1 + 1e-12), 6.01], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert meets_budgets(costs, [6.0, 1.0]).tolist() == [True, True, False]


def test_candidates_meet_every_budget_and_the_lower_bound_of_the_budgets_the_found_architecture_uses():
    graph = paths()
    logits = torch.zeros(4)
    flops = linear(FLOPS)
    found = find_architecture(graph, logits, flops, [6.0]).mask
    assert torch.equal(found, mask("a"))  # 5 of 6
    one = sample_candidates(graph, logits, flops, [6.0], found, 4, temperature=1.0, low=0.8)
    # Only three connected architectures cost between 4.8 and 6: fewer than asked.
    assert [m.tolist() for m in one] == [mask("a").tolist(), mask("a", "d").tolist(), mask("b", "c", "d").tolist()]
    two = linear(FLOPS, torch.tensor([3.0, 1.0, 1.0, 0.5], dtype=torch.float64))
    # A second budget the found architecture leaves loose (3 of 20) bounds nothing from below ...
    loose = sample_candidates(graph, logits, two, [6.0, 20.0], found, 4, temperature=1.0, low=0.8)
    assert len(loose) == 3 and all(torch.equal(a, b) for a, b in zip(one, loose))
    # ... one it uses to `low` (3 of 3.6) does: b, c and d cost 2.5 of it, less than 0.8 x 3.6.
    tight = sample_candidates(graph, logits, two, [6.0, 3.6], found, 4, temperature=1.0, low=0.8)
    assert [m.tolist() for m in tight] == [mask("a").tolist(), mask("a", "d").tolist()]
    assert len(sample_candidates(graph, logits, flops, [6.0], found, 1)) == 1
    with pytest.raises(ValueError, match="candidates needs"):
        sample_candidates(graph, logits, flops, [6.0], found, 0)
