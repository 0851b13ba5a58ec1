"""The budgets' Lagrange multipliers: the penalty they put on sampled architectures and their dual ascent.

Pure functions of costs `[J, M]` (J budgets, M architectures), limits `[J]` and multipliers `[J]`, all float64, so the
reward's penalty and λ's pace can be checked without a search.

* Adaptive λ (the default): the violation is measured relative to the budget, so λ_j is unit-free and one pace
  suits every cost scale; λ_j follows dual ascent on E[C_j(H)] <= b_j.
* Fixed λ (the paper's): λ · max(0, C(H) - b) in the cost's absolute unit.
* Lower bound `floor` f: a second multiplier μ_j charges max(0, f - C_j(H)/b_j), by the same ascent on
  E[C_j(H)] >= f · b_j. Gates that fell past the budget stop being sampled and trained, so the loss alone rarely
  brings them back; TuNAS (Bender et al. 2020) likewise penalises a cost below its target.
"""
from __future__ import annotations

from typing import Sequence

import torch


def penalty(costs: torch.Tensor, limits: Sequence[float] | torch.Tensor, lambdas: torch.Tensor,
            floor_lambdas: torch.Tensor, *, relative: bool = True, floor: float = 0.0) -> torch.Tensor:
    """[M] the penalty of M architectures whose costs are `costs` [J, M], summed over the budgets.

    Args:
        relative: charge the violation relative to each limit (adaptive λ), else in the cost's unit (fixed λ).
        floor: the lower bound's fraction of each limit, charged at `floor_lambdas` (zero multipliers: no charge).
    """
    limits = torch.as_tensor(limits, dtype=torch.float64).unsqueeze(1)
    excess = torch.relu(costs / limits - 1) if relative else torch.relu(costs - limits)
    shortfall = torch.relu(floor - costs / limits)
    return (lambdas.unsqueeze(1) * excess + floor_lambdas.unsqueeze(1) * shortfall).sum(0)


def ascend(lambdas: torch.Tensor, floor_lambdas: torch.Tensor, costs: torch.Tensor,
           limits: Sequence[float] | torch.Tensor, *, lr: float,
           floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of dual ascent of (λ, μ) on the mean sampled costs `costs` [J, M]; returns new tensors.

    The relative violation is clipped to [-1, 1]: a network 4x over budget must not wind λ up 3x faster than one 2x
    over, or λ overshoots and drives the gates far below the budget before it can unwind. μ moves only when
    `floor` > 0.
    """
    used = costs.mean(1) / torch.as_tensor(limits, dtype=torch.float64)
    lambdas = torch.clamp(lambdas + lr * (used - 1).clamp(-1.0, 1.0), min=0.0)
    if floor > 0:
        floor_lambdas = torch.clamp(floor_lambdas + lr * (floor - used).clamp(-1.0, 1.0), min=0.0)
    return lambdas, floor_lambdas
