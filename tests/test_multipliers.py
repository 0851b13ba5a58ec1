"""The budgets' multipliers on their own: the penalty they charge and their dual ascent (`bsnet.multipliers`)."""
import pytest
import torch

from bsnet import multipliers


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_relative_penalty_charges_the_excess_over_each_limit_and_the_shortfall_below_the_floor():
    costs = t([3.0, 9.5, 10.0, 20.0])  # one budget of 10: 0.3, 0.95, 1 and 2 of it
    penalty = multipliers.penalty(costs, [10.0], t(1.0), t(0.5), floor=0.9)
    assert penalty.tolist() == pytest.approx([0.5 * 0.6, 0.0, 0.0, 1.0])  # within [floor, 1] of the budget: free
    no_floor = multipliers.penalty(costs, [10.0], t(1.0), t(0.5))
    assert no_floor.tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_fixed_penalty_is_in_the_costs_unit_and_budgets_add_up():
    costs = t([30.0, 5.0], [1.0, 4.0])  # two budgets, two architectures
    penalty = multipliers.penalty(costs, [10.0, 2.0], t(0.1, 1.0), t(0.0, 0.0), relative=False, floor=0.9)
    assert penalty.tolist() == pytest.approx([0.1 * 20 + 0.0, 0.0 + 1.0 * 2])


def test_ascent_moves_each_multiplier_by_at_most_lr_and_never_below_zero():
    lambdas, floors = t(0.0, 0.5), t(0.0, 0.0)
    costs = t([40.0, 60.0], [1.0, 1.0])  # 5x over the first budget of 10, 0.1 of the second of 10
    new, new_floors = multipliers.ascend(lambdas, floors, costs, [10.0, 10.0], lr=0.01, floor=0.9)
    assert new.tolist() == pytest.approx([0.01, 0.5 - 0.01 * 0.9])  # clipped at +1, then -0.9
    assert new_floors.tolist() == pytest.approx([0.0, 0.01 * 0.8])
    assert lambdas.tolist() == [0.0, 0.5]  # new tensors: the inputs are left alone
    low, _ = multipliers.ascend(t(0.001), t(0.0), t([1.0]), [10.0], lr=0.01)
    assert low.item() == 0.0
    _, unchanged = multipliers.ascend(t(0.0), t(0.3), t([1.0]), [10.0], lr=0.01, floor=0.0)
    assert unchanged.item() == 0.3  # no floor: μ does not move
