"""From gate logits to architectures that meet the budgets: the found architecture and candidates to choose among.

Pure functions of a graph, the gates' logits, a costs function and the budgets' limits, so the projection can be
tested on a graph alone. `costs` maps masks [M, G] to float64 costs [J, M], one row per budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from bsnet.architecture import kept_names
from bsnet.graph import Graph

CostsFn = Callable[[torch.Tensor], torch.Tensor]


class BudgetError(RuntimeError):
    """No connected architecture meets every budget (possible only with a user's own cost)."""


@dataclass
class Found:
    """The found architecture: a pruned mask, whether it was projected onto the budgets, and how."""

    mask: torch.Tensor
    projected: bool = False
    dropped: list[str] = field(default_factory=list)
    repaired: bool = False  # the most probable mask was disconnected: the most probable connected one is used
    added: list[str] = field(default_factory=list)  # gates `fill` added to spend the budgets
    exchanged: list[str] = field(default_factory=list)  # gates `fill` took out for costlier ones


def _limits(limits: Sequence[float] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(limits, dtype=torch.float64).unsqueeze(1)  # [J, 1]


def meets_budgets(costs: torch.Tensor, limits: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """[M] whether each of M architectures whose costs are `costs` [J, M] holds every budget (rounding allowed)."""
    return (costs <= _limits(limits) * (1 + 1e-9)).all(0)


def within_budget(mask: torch.Tensor, costs: CostsFn, limits: Sequence[float] | torch.Tensor) -> bool:
    return bool(meets_budgets(costs(mask.unsqueeze(0)), limits)[0])


def most_probable_connected(graph: Graph, logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(mask, repaired): the pruned mode of the gates; where it is disconnected, the mode plus the input→output path
    whose dropped gates are cheapest to switch on (-log-odds per gate), i.e. the most probable connected mask."""
    mask = graph.prune((logits > 0).float())
    if graph.connected(mask):
        return mask, False
    _, path = graph.shortest_path(gate_cost=torch.relu(-logits).tolist())
    return graph.prune(torch.maximum(mask, path)), True


@torch.no_grad()
def cheapest_drop(graph: Graph, mask: torch.Tensor, logits: torch.Tensor, costs: CostsFn,
                  limits: Sequence[float] | torch.Tensor) -> torch.Tensor | None:
    """The connected, pruned mask one kept gate smaller that loses the least log-probability per unit of excess
    cost it removes (None if no drop removes any). Dropping a set of gates costs the sum of their logits, so a
    gate whose removal prunes a whole branch of likely gates with it is charged for all of them: least probable
    first alone cut a whole stage at once on CIFAR-10 (the small-budget trap in BENCHMARKS.md)."""
    kept = torch.nonzero(mask).flatten()
    if len(kept) == 0:
        return None
    trials = mask.repeat(len(kept), 1)
    trials[torch.arange(len(kept)), kept] = 0
    trials = graph.prune(trials)  # every single drop at once: the graph's methods take a batch of masks
    stacked = trials[graph.connected(trials)]
    if len(stacked) == 0:
        return None
    excess = torch.relu(costs(torch.cat([mask.unsqueeze(0), stacked])) / _limits(limits) - 1).sum(0)
    removed = excess[0] - excess[1:]
    lost = ((mask - stacked) * logits).sum(1).double()
    useful = removed > 1e-12
    if not bool(useful.any()):
        return None
    ratio = torch.where(useful, lost / removed.clamp(min=1e-12), torch.full_like(lost, math.inf))
    return stacked[int(torch.argmin(ratio))]


@torch.no_grad()
def add_back(graph: Graph, mask: torch.Tensor, start: torch.Tensor, logits: torch.Tensor, costs: CostsFn,
             limits: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """`mask` plus the gates of `start` it lacks, most probable first, each while every budget still holds: a drop
    may prune more than the budget asked."""
    for g in torch.argsort(logits, descending=True).tolist():
        if start[g] > 0 and mask[g] == 0:
            trial = mask.clone()
            trial[g] = 1.0
            trial = graph.prune(trial)
            if graph.connected(trial) and within_budget(trial, costs, limits):
                mask = trial
    return mask


@torch.no_grad()
def fallback_within_budget(graph: Graph, start: torch.Tensor, logits: torch.Tensor, costs: CostsFn,
                           limits: Sequence[float] | torch.Tensor, paths: Iterable[torch.Tensor] = ()) -> torch.Tensor:
    """When no single gate can go without disconnecting the network: the first of the most probable input→output
    path and `paths` (e.g. each cost's cheapest path, read only when needed) that meets every budget, plus the gates
    of `start`, most probable first, while every budget still holds. BudgetError if none meets them."""
    _, likely = graph.shortest_path(gate_cost=(-F.logsigmoid(logits)).tolist())
    bases = [graph.prune(m) for m in [likely, *paths] if within_budget(graph.prune(m), costs, limits)]
    if not bases:
        raise BudgetError("no connected architecture meets every budget")
    return add_back(graph, bases[0], start, logits, costs, limits)


@torch.no_grad()
def project(graph: Graph, mask: torch.Tensor, logits: torch.Tensor, costs: CostsFn,
            limits: Sequence[float] | torch.Tensor, paths: Iterable[torch.Tensor] = ()) -> torch.Tensor:
    """`mask` (connected, pruned) projected onto the budgets: gates dropped one at a time by `cheapest_drop` until
    every budget holds, then the gates that fit again added back; `fallback_within_budget` when no gate can go."""
    start = mask.clone()
    while not within_budget(mask, costs, limits):
        smaller = cheapest_drop(graph, mask, logits, costs, limits)
        if smaller is None:
            return fallback_within_budget(graph, start, logits, costs, limits, paths)
        mask = smaller
        if within_budget(mask, costs, limits):
            mask = add_back(graph, mask, start, logits, costs, limits)
    return mask


def _additions(graph: Graph, mask: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
    """[T, G] the distinct pruned masks `mask` grows into by one addition: one absent gate, two gates that each
    stay dead alone (a width group of a dropped block lives only with the block's own gate, so gates added one at a
    time never bring a block back), or, given `logits`, for each gate that stays dead alone the most probable
    input→output path through it (a block of a stage the mask bypasses lives only with the skips that lead to it)."""
    absent = torch.nonzero(mask == 0).flatten()
    singles = graph.prune(mask + F.one_hot(absent, len(mask)).to(mask.dtype))  # [A, G]
    dead = absent[~(singles > mask).any(1)]  # gates that stay dead alone: pairs of them may live
    pairs = torch.combinations(dead, 2)
    both = mask.repeat(len(pairs), 1)
    both[torch.arange(len(pairs)).unsqueeze(1), pairs] = 1.0
    paths = [] if logits is None else [_paths_through(graph, mask, logits, dead)]
    trials = torch.cat([singles, graph.prune(both), *paths])
    return torch.unique(trials[(trials > mask).any(1)], dim=0)  # only what grew, once: the costs are the work


def _paths_through(graph: Graph, mask: torch.Tensor, logits: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """[P, G] for each of `gates` that an input→output path goes through, `mask` plus the path through it whose
    other added gates are the most probable (a kept gate free, an absent one costing its -log p), pruned."""
    price = torch.where(mask > 0, torch.zeros_like(logits), F.softplus(-logits))
    paths = graph.paths_through(price.tolist())[gates]
    paths = paths[paths[torch.arange(len(gates)), gates] > 0]
    return graph.prune(torch.maximum(mask, paths))


def _exchanges(graph: Graph, mask: torch.Tensor) -> Iterator[torch.Tensor]:
    """For each kept gate of `mask`, [T, G] the connected masks with it out (and what its removal prunes) and one
    addition in, a gate or two (paths too would cost each found architecture seconds on a fabric): one batch per
    gate, so that memory stays that of one gate's additions."""
    for g in torch.nonzero(mask).flatten():
        trials = _additions(graph, graph.prune(mask * (1 - F.one_hot(g, len(mask)).to(mask.dtype))))
        yield trials[graph.connected(trials)]


def _best(trials: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor, costs: CostsFn,
          limits: Sequence[float] | torch.Tensor, above: float | None = None
          ) -> tuple[float, torch.Tensor, float] | None:
    """(gain, trial, its spent share) of the trial that fits every budget (and, given `above`, spends more than it:
    costs summed as shares of their limits) with the largest summed logit of the gates it switches (on minus off);
    None if none qualifies."""
    if len(trials) == 0:
        return None
    cost = costs(trials)
    shares = (cost / _limits(limits)).sum(0)
    ok = meets_budgets(cost, limits)
    if above is not None:
        ok &= shares > above * (1 + 1e-9)
    if not bool(ok.any()):
        return None
    gain = torch.where(ok, ((trials - mask) * logits).sum(1), torch.tensor(-math.inf))
    i = int(torch.argmax(gain))
    return float(gain[i]), trials[i], float(shares[i])


@torch.no_grad()
def fill(graph: Graph, mask: torch.Tensor, logits: torch.Tensor, costs: CostsFn,
         limits: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """`mask` (connected, pruned, within the budgets) grown while every budget holds: each step adds the most
    probable addition that fits (`_additions`), the one whose added gates have the largest summed logit. When none
    fits, the most probable exchange (`_exchanges`: a kept gate out, an addition in) that fits and spends more of the
    budgets than every mask before it (summed as shares of their limits: so the fill ends, whatever the cost) is
    taken, and filling goes on. Gates come in coarse steps of a few sizes (on a ResNet a width group of a stage's
    first block costs three quarters of one of the others), so additions alone can stop short of the budget by
    nearly a step."""
    mask = mask.clone()
    spent = float((costs(mask.unsqueeze(0)) / _limits(limits)).sum())
    while True:
        step = _best(_additions(graph, mask, logits), mask, logits, costs, limits)  # it keeps a mask connected
        if step is None:
            exchanges = (_best(t, mask, logits, costs, limits, above=spent) for t in _exchanges(graph, mask))
            step = max((e for e in exchanges if e is not None), key=lambda e: e[0], default=None)
        if step is None:
            return mask
        _, mask, share = step
        spent = max(spent, share)


@torch.no_grad()
def find_architecture(graph: Graph, logits: torch.Tensor, costs: CostsFn, limits: Sequence[float] | torch.Tensor, *,
                      project_onto_budgets: bool = True, fill_budgets: bool = False,
                      paths: Iterable[torch.Tensor] = ()) -> Found:
    """The most probable connected architecture (`most_probable_connected`), projected onto the budgets, and with
    `fill_budgets` grown by `fill` to spend them."""
    start, repaired = most_probable_connected(graph, logits)
    projected = project(graph, start, logits, costs, limits, paths) if project_onto_budgets else start
    names = graph.gate_names
    result = Found(projected, projected=not torch.equal(projected, start), repaired=repaired,
                   dropped=kept_names(start > projected, names))
    if fill_budgets and within_budget(projected, costs, limits):
        result.mask = fill(graph, projected, logits, costs, limits)
        result.added = kept_names(result.mask > projected, names)
        result.exchanged = kept_names(result.mask < projected, names)
    return result


@torch.no_grad()
def sample_candidates(graph: Graph, logits: torch.Tensor, costs: CostsFn, limits: Sequence[float] | torch.Tensor,
                      found: torch.Tensor, k: int, *, temperature: float = 3.0, low: float = 0.8, draws: int = 5000,
                      seed: int = 0) -> list[torch.Tensor]:
    """`found` then up to k - 1 distinct samples of the gates with their logits divided by `temperature` (flatter, so
    that a sample differs from the mode by several gates, not one), pruned, connected and within every budget, in the
    order drawn (`draws` draws on a generator seeded with `seed`).

    A sample must also use at least `low` x the limit of each budget that `found` itself uses to that fraction: a
    budget the found architecture leaves loose is no target for the samples either.
    """
    if k < 1 or temperature <= 0 or not 0.0 <= low <= 1.0:
        raise ValueError(f"candidates needs k >= 1, temperature > 0 and 0 <= low <= 1, got {k}, {temperature}, {low}")
    out = [found]
    if k == 1:
        return out
    gen = torch.Generator().manual_seed(seed)
    probs = torch.sigmoid(logits / temperature)
    masks = graph.prune(torch.bernoulli(probs.expand(draws, -1), generator=gen))
    floor = low * _limits(limits)
    costs_of = costs(masks)  # [J, draws], one batched call
    bounded = costs(found.unsqueeze(0)) >= floor  # [J, 1]: the budgets the found architecture uses to `low`
    ok = graph.connected(masks) & ((costs_of >= floor) | ~bounded).all(0) & meets_budgets(costs_of, limits)
    for m in masks[ok]:
        if len(out) == k:
            break
        if not any(torch.equal(m, o) for o in out):
            out.append(m)
    return out
