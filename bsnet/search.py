"""BudgetedSearch: weights by back-propagation, gate logits by REINFORCE, under budgets (Veniat & Denoyer 2018).

Each step samples architectures H from the gates, trains the weights on their loss, and moves the gate logits
along the policy gradient of the reward r(H) = -(loss + sum_j λ_j · max(0, C_j(H)/b_j - 1)), with a baseline.

* Adaptive λ (default): the violation is measured relative to the budget, so λ_j is unit-free, and each λ_j
  follows dual ascent on the constraint E[C_j(H)] <= b_j:
  λ_j <- max(0, λ_j + η_λ clip(mean sampled C_j / b_j - 1, -1, 1)) at every step, the pace of the gates' own
  optimizer steps (a per-epoch pace let λ outrun the gates on small data sets and crush them). No hand tuning per
  cost scale.
* Fixed λ (the paper's): r = -(loss + λ · max(0, C(H) - b)) in the cost's absolute unit.
* Optional lower bound (`budget_floor` f): a second dual variable μ_j adds μ_j · max(0, f - C_j(H)/b_j) to the
  penalty, by the same dual ascent on E[C_j(H)] >= f · b_j, so gates that fell past the budget come back.

The trainer does no printing and no file I/O: the CLI and `bsnet.runs` do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bsnet.budgets import Budget
from bsnet.costs import Cost, FlopsCost, ParallelCost, ParamsCost
from bsnet.gates import BernoulliGates
from bsnet.supernet import SuperNetwork


class BudgetError(RuntimeError):
    """No connected architecture meets every budget (possible only with a user's own cost)."""


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite for `max_nonfinite_steps` steps in a row."""


@dataclass
class SearchConfig:
    """Defaults that work on the built-in fabrics (the reference's gate SGD at 1e-3 barely moves in a short run).

    Gate logits get Adam at 0.05: REINFORCE gradients vary in scale with the loss and the penalty, and Adam's
    per-gate normalisation lets every gate move at a steady pace, so the most probable architecture leaves
    the full network within a few epochs.
    """

    sampling: str = "grouped"  # "grouped": K architectures per batch, live nodes only; "per_example": reference
    groups: int = 4
    baseline: str = "loo"  # "loo" leave-one-out across groups, "mean" batch mean (reference), "ema"
    ema_decay: float = 0.9
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gate_lr: float = 0.05
    init_prob: float = 1 / (1 + math.exp(-3.0))
    # Initial probabilities of the gates whose names start with a prefix (the longest prefix wins), e.g.
    # {"X-": 0.5}: a gate that costs little gets little push from the budget, so it keeps its initial
    # probability unless the loss moves it; 0.5 leaves that choice to the loss.
    init_probs: dict[str, float] = field(default_factory=dict)
    lambda_mode: str = "adaptive"  # or "fixed"
    lambda_lr: float = 0.01  # per step: at 0.05, λ wound up far past the budget on CIFAR-10 (BENCHMARKS.md)
    fixed_lambda: float = 1e-7
    seed: int = 0
    # Share of the scheduled search during which only the weights learn (architectures still sampled from the
    # initial gates): on untrained weights the loss cannot rank architectures, yet Adam at gate_lr fixes the most
    # probable one within an epoch. Applies when the search knows its length (steps_per_epoch and epochs).
    warmup: float = 0.0
    # Grouped sampling only: score the K architectures for the gates' gradient on the same examples (one more
    # forward, without grad, of every architecture on the batch's first m examples, m the smallest group) rather
    # than each on its own group: unpaired, the rewards also differ by how hard each group's examples are.
    paired: bool = False
    # Bound on |logit| after each gate step (0: none), as ENAS bounds its controller's logits: a dropped block is
    # still sampled (1 / (1 + e^c) of the time), so its weights keep training and the loss can bring it back.
    logit_clip: float = 0.0
    # Share of the scheduled search (after any warm-up) over which the penalty's budget shrinks geometrically from
    # the full network's cost to the target. Against a far-off budget every sample is over it and the cheapest
    # always wins; against a budget that moves slowly, samples already under it earn nothing more by being cheaper,
    # so the loss chooses what goes. The found architecture is always held to the target. (Meant for the
    # small-budget trap in BENCHMARKS.md; it did not remove it: the gates still fell at Adam's pace once λ grew.)
    anneal: float = 0.0
    # What the penalty charges a sampled architecture: "live", the cost of its live sub-graph (the paper's), or
    # "linear", the full network's cost less what each of its dropped gates saves alone. With "live", a gate whose
    # loss prunes a whole stage is credited with all of it, so far over budget the cheapest sample is one that
    # kills stages; with "linear", each gate answers for its own cost and a skip that costs nothing is left to the
    # loss. λ and the found architecture always use the live cost. (On CIFAR-10 at 20% of the fabric it dropped
    # every block and kept two shortcuts: BENCHMARKS.md.)
    cost_credit: str = "live"
    # Adaptive λ only (ignored with a fixed λ): a lower bound E[C_j(H)] >= floor · b_j with its own dual variable
    # (0: none). Gates that fall past the budget (Adam moves them at gate_lr whatever λ's size) stop being sampled
    # and trained, so the loss alone rarely brings them back: on CIFAR-10 searches ended at 60-70% of the budget.
    # TuNAS (Bender et al. 2020) likewise penalises a cost below its target.
    budget_floor: float = 0.9
    # Grouped sampling only: share of each batch's K architectures drawn uniformly (every gate kept with probability
    # 1/2, redrawn until connected) instead of from the gates. They train the weights and take no part in the gates'
    # gradient, λ or the baseline, as single-path one-shot NAS (Guo et al. 2020) trains its weights: blocks the gates
    # dropped keep training, so the loss can still rank them when the budget asks for more cost again.
    explore: float = 0.0
    max_nonfinite_steps: int = 10  # NaN/inf losses in a row before the search stops (each such step is skipped)

    def __post_init__(self) -> None:
        checks = [(self.sampling in ("grouped", "per_example"), "sampling must be 'grouped' or 'per_example'"),
                  (self.baseline in ("loo", "mean", "ema"), "baseline must be 'loo', 'mean' or 'ema'"),
                  (self.lambda_mode in ("adaptive", "fixed"), "lambda_mode must be 'adaptive' or 'fixed'"),
                  (self.cost_credit in ("live", "linear"), "cost_credit must be 'live' or 'linear'"),
                  (self.groups >= 1, "groups must be >= 1"),
                  (self.lr > 0 and self.gate_lr > 0, "learning rates must be > 0"),
                  (0 < self.init_prob < 1, "init_prob must lie in (0, 1)"),
                  (isinstance(self.init_probs, dict) and all(
                      isinstance(k, str) and isinstance(p, (int, float)) and 0 < p < 1
                      for k, p in self.init_probs.items()),
                   "init_probs maps gate-name prefixes to probabilities in (0, 1)"),
                  (0 <= self.warmup < 1, "warmup must lie in [0, 1)"),
                  (0 <= self.anneal <= 1 and self.warmup + self.anneal <= 1,
                   "anneal must lie in [0, 1], and warmup + anneal must not exceed 1"),
                  (0 <= self.budget_floor < 1, "budget_floor must lie in [0, 1)"),
                  (0 <= self.explore < 1, "explore must lie in [0, 1)"),
                  (self.explore == 0 or self.sampling == "grouped", "explore needs grouped sampling"),
                  (self.logit_clip >= 0, "logit_clip must be >= 0 (0: no bound)")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass
class StepStats:
    loss: float
    accuracy: float
    costs: list[float]  # mean sampled cost per budget
    disconnected: float  # fraction of sampled architectures that are disconnected
    examples: int
    skipped: bool = False  # the loss was not finite: nothing was updated


@dataclass
class Found:
    """The found architecture: a pruned mask, whether it was projected onto the budgets, and how."""

    mask: torch.Tensor
    projected: bool = False
    dropped: list[str] = field(default_factory=list)
    repaired: bool = False  # the most probable mask was disconnected: the most probable connected one is used


def task_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (averaged over pixels for segmentation)."""
    loss = F.cross_entropy(out, y, reduction="none")
    return loss.flatten(1).mean(1) if loss.dim() > 1 else loss


def correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example accuracy (pixel accuracy for segmentation)."""
    hit = (out.argmax(1) == y).float()
    return hit.flatten(1).mean(1) if hit.dim() > 1 else hit


class BudgetedSearch:
    """Joint search of architecture and weights under one or more budgets.

    Args:
        net: the super network (its weights are trained in place).
        budgets: the constraints; relative budgets are resolved against the full network's cost here.
        config: optimisation settings.
        steps_per_epoch, epochs: the length of the cosine schedule of the weights' learning rate (without them the
            learning rate stays constant).
    """

    def __init__(self, net: SuperNetwork, budgets: Sequence[Budget], config: SearchConfig | None = None, *,
                 steps_per_epoch: int | None = None, epochs: int | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.net = net.to(device)
        self.device = torch.device(device)
        self.config = cfg = config or SearchConfig()
        self.budgets = list(budgets)
        full = net.full_mask()
        self.full_costs = [float(b.cost(net, full)) for b in self.budgets]
        self.limits = [b.value * f if b.relative else b.value for b, f in zip(self.budgets, self.full_costs)]
        for b, limit in zip(self.budgets, self.limits):
            if limit <= 0:
                raise ValueError(f"budget {b} must be positive")
            cheapest = b.cost.cheapest(net)
            if cheapest is not None and cheapest[0] > limit * (1 + 1e-9):
                raise ValueError(f"budget {b} ({limit:.4g} {b.cost.unit}) is below the cheapest connected "
                                 f"architecture ({cheapest[0]:.4g} {b.cost.unit})")
        # [J, G] what the full network saves by losing each gate alone (cost_credit="linear": G more cost calls).
        self.savings = torch.tensor(self.full_costs, dtype=torch.float64).unsqueeze(1) \
            - self._costs(1 - torch.eye(net.num_gates)) if cfg.cost_credit == "linear" else None
        # The gates stay on the CPU whatever the device: a few logits, sampled with the CPU generator that makes every
        # rank draw the same architectures (torch.bernoulli refuses a CPU generator for a CUDA tensor).
        self.gates = BernoulliGates(net.num_gates, cfg.init_prob)
        with torch.no_grad():
            for prefix in sorted(cfg.init_probs, key=len):  # longer prefixes last: they win
                which = [i for i, g in enumerate(net.gate_names) if g.startswith(prefix)]
                if not which:
                    raise ValueError(f"init_probs: no gate name starts with {prefix!r}")
                p = float(cfg.init_probs[prefix])
                self.gates.logits[which] = math.log(p / (1 - p))
        self.lambdas = torch.zeros(len(self.budgets), dtype=torch.float64)
        self.floor_lambdas = torch.zeros(len(self.budgets), dtype=torch.float64)  # of budget_floor's bounds
        if cfg.lambda_mode == "fixed":
            self.lambdas.fill_(cfg.fixed_lambda)
        self.ema_reward: float | None = None
        self.generator = torch.Generator().manual_seed(cfg.seed)  # architecture sampling only
        self.opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   nesterov=True)
        self.gate_opt = torch.optim.Adam(self.gates.parameters(), lr=cfg.gate_lr)
        if (steps_per_epoch is None) != (epochs is None) or min(steps_per_epoch or 1, epochs or 1) < 1:
            raise ValueError("give both steps_per_epoch and epochs (each >= 1) for the cosine schedule, or neither")
        total = (steps_per_epoch or 0) * (epochs or 0)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total) if total > 0 else \
            torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: 1.0)
        self.warmup_steps = int(cfg.warmup * total)
        self.anneal_steps = int(cfg.anneal * total)
        # Data-parallel (torchrun): every rank samples the same architectures (one seed), sees its own data shard;
        # the losses of each architecture, the gradients and BatchNorm statistics are averaged over ranks, so the
        # weights, gates and λ stay identical everywhere and the estimator is that of the global batch.
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.steps = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_steps = 0

    # ---- one step -------------------------------------------------------------------------------
    def _costs(self, masks: torch.Tensor) -> torch.Tensor:
        """[J, M] costs of M masks for each budget."""
        return torch.stack([b.cost(self.net, masks).to(torch.float64).reshape(-1) for b in self.budgets]) \
            if self.budgets else torch.zeros(0, masks.shape[0], dtype=torch.float64)

    def penalty_limits(self) -> torch.Tensor:
        """[J] the budgets the penalty and λ hold the samples to at this step: the targets, or on the annealing
        schedule's way down to them from the full network's cost."""
        limits = torch.tensor(self.limits, dtype=torch.float64)
        if self.anneal_steps == 0:
            return limits
        t = min(1.0, max(0, self.steps - self.warmup_steps) / self.anneal_steps)
        full = torch.tensor(self.full_costs, dtype=torch.float64)
        return torch.minimum(full, full * (limits / full) ** t)  # a budget above the full cost holds at full

    def charged_costs(self, masks: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """[J, M] the costs the penalty charges M masks whose live costs are `live` (see SearchConfig.cost_credit)."""
        if self.savings is None:
            return live
        full = torch.tensor(self.full_costs, dtype=torch.float64).unsqueeze(1)
        return full - self.savings @ (1 - masks.detach().double().cpu()).T

    def _penalty(self, costs: torch.Tensor) -> torch.Tensor:
        limits = self.penalty_limits().unsqueeze(1)
        if self.config.lambda_mode == "adaptive":
            excess = torch.relu(costs / limits - 1)
        else:
            excess = torch.relu(costs - limits)
        shortfall = torch.relu(self.config.budget_floor - costs / limits)  # zero unless budget_floor > 0
        return (self.lambdas.unsqueeze(1) * excess + self.floor_lambdas.unsqueeze(1) * shortfall).sum(0)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepStats:
        cfg, net = self.config, self.net
        net.train()
        x, y = x.to(self.device), y.to(self.device)
        # BatchNorm updates its running statistics during the forward: keep a copy to undo a diverging step.
        buffers = [(b, b.detach().clone()) for b in net.buffers()]
        paired = None
        if cfg.sampling == "grouped":
            k = min(cfg.groups, max(1, x.shape[0] // 2))  # at least 2 examples per group (BatchNorm)
            n_explore = min(round(cfg.explore * k), k - 1)  # at least one architecture from the gates
            masks, logp = self.gates.sample(k - n_explore, self.generator)
            if n_explore:
                masks = torch.cat([masks, self._uniform_connected(n_explore)])
            sizes = [len(c) for c in torch.tensor_split(torch.arange(x.shape[0]), k)]
            if cfg.paired and k - n_explore > 1:
                paired = self._paired_losses(x[:sizes[-1]], y[:sizes[-1]], masks[:k - n_explore])
                with torch.no_grad():  # that forward must not move BatchNorm's running statistics
                    for b, saved in buffers:
                        b.copy_(saved)
            out = net(x, masks, grouped=True)  # masks stay on the CPU, where the forward reads them
            group_of = torch.repeat_interleave(torch.arange(k), torch.tensor(sizes)).to(self.device)
        else:
            masks, logp = self.gates.sample(x.shape[0], self.generator)
            out = net(x, masks)
            group_of = torch.arange(x.shape[0], device=self.device)
        losses = task_loss(out, y)
        finite = torch.isfinite(losses).all()
        if paired is not None:
            finite = finite & torch.isfinite(paired).all()
        finite = finite.float().reshape(1)
        if self.world > 1:  # every rank must skip the same steps
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite.item()):
            # A diverging step updates nothing; too many in a row stop the search (the caller keeps its checkpoint).
            self.nonfinite_in_a_row += 1
            self.nonfinite_steps += 1
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                raise NonFiniteLossError(f"the loss was NaN or infinite for {self.nonfinite_in_a_row} steps in a row")
            return StepStats(float("nan"), float("nan"), [float("nan")] * len(self.budgets), 0.0, x.shape[0], True)
        self.nonfinite_in_a_row = 0
        n_arch = logp.shape[0]  # the gates' samples; explored architectures (after them) only train the weights
        if paired is not None:  # [K, m]: every architecture on the same m examples
            arch_loss = paired.sum(1)
            counts = torch.full_like(arch_loss, paired.shape[1])
        else:
            arch_loss = torch.zeros(masks.shape[0], device=self.device).index_add(0, group_of, losses.detach())[:n_arch]
            counts = torch.bincount(group_of, minlength=masks.shape[0])[:n_arch].to(arch_loss.dtype)
        if self.world > 1 and cfg.sampling == "grouped":  # the same K architectures on every rank's shard
            both = torch.stack([arch_loss, counts])
            dist.all_reduce(both)
            arch_loss, counts = both[0], both[1]
        arch_loss = arch_loss / counts.clamp(min=1)
        masks = masks[:n_arch]
        costs = self._costs(masks)
        reward = -(arch_loss.double().cpu() + self._penalty(self.charged_costs(masks, costs)))
        if cfg.baseline == "loo" and n_arch > 1:
            baseline = (reward.sum() - reward) / (n_arch - 1)
        elif cfg.baseline == "ema" and self.ema_reward is not None:
            baseline = torch.full_like(reward, self.ema_reward)
        else:
            baseline = reward.mean().expand_as(reward)
        advantage = (reward - baseline).float()
        self.opt.zero_grad(set_to_none=True)
        self.gate_opt.zero_grad(set_to_none=True)
        (losses.mean() - (advantage.detach() * logp).mean().to(self.device)).backward()
        if self.world > 1:
            self._average_over_ranks([p.grad for p in self.params_with_grad()])
        learn_gates = self.steps >= self.warmup_steps
        self.opt.step()
        if learn_gates:
            self.gate_opt.step()
            if cfg.logit_clip > 0:
                with torch.no_grad():
                    self.gates.logits.clamp_(-cfg.logit_clip, cfg.logit_clip)
        self.sched.step()
        if self.world > 1:
            self._average_over_ranks([b for b in net.buffers() if b.is_floating_point()])
        if cfg.baseline == "ema":
            mean_reward = reward.mean().reshape(1)
            if self.world > 1:
                self._average_over_ranks([mean_reward])
            m = float(mean_reward)
            d = cfg.ema_decay
            self.ema_reward = m if self.ema_reward is None else d * self.ema_reward + (1 - d) * m
        if cfg.lambda_mode == "adaptive" and self.budgets and learn_gates:
            # Clipped: a network 4x over budget must not wind λ up 3x faster than one 2x over, or λ overshoots
            # and drives the gates far below the budget before it can unwind.
            used = costs.mean(1) / self.penalty_limits()
            self.lambdas = torch.clamp(self.lambdas + cfg.lambda_lr * (used - 1).clamp(-1.0, 1.0), min=0.0)
            if cfg.budget_floor > 0:  # with a fixed λ, floor_lambdas stay 0
                self.floor_lambdas = torch.clamp(
                    self.floor_lambdas + cfg.lambda_lr * (cfg.budget_floor - used).clamp(-1.0, 1.0), min=0.0)
        self.steps += 1
        connected = self.net.graph.connected(masks)
        return StepStats(float(losses.detach().mean()), float(correct(out.detach(), y).mean()), costs.mean(1).tolist(),
                         1.0 - float(connected.float().mean()), x.shape[0])

    def _uniform_connected(self, n: int, tries: int = 64) -> torch.Tensor:
        """[n, G] connected masks, every gate kept with probability 1/2 (drawn on the search's generator, so every
        rank draws the same); the full network stands in where `tries` draws found too few."""
        graph = self.net.graph
        draws = graph.prune(torch.bernoulli(torch.full((tries, self.net.num_gates), 0.5), generator=self.generator))
        ok = draws[graph.connected(draws)][:n]
        return torch.cat([ok, self.net.full_mask().expand(n - ok.shape[0], -1)]) if ok.shape[0] < n else ok

    @torch.no_grad()
    def _paired_losses(self, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """[K, m] losses of K architectures on the same m examples (training mode: batch statistics, as in a step)."""
        k, m = masks.shape[0], x.shape[0]
        out = self.net(x.repeat(k, *([1] * (x.dim() - 1))), masks, grouped=True)
        return task_loss(out, y.repeat(k, *([1] * (y.dim() - 1)))).view(k, m)

    def params_with_grad(self) -> list[torch.Tensor]:
        return [p for p in list(self.net.parameters()) + list(self.gates.parameters()) if p.grad is not None]

    def _average_over_ranks(self, tensors: list[torch.Tensor]) -> None:
        if not tensors:
            return
        # One message per step, on the network's device (nccl sends CUDA tensors only; the gates' are on the CPU).
        flat = torch.cat([t.reshape(-1).to(self.device, torch.float64) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
            offset += t.numel()

    # ---- reading the distribution -------------------------------------------------------------
    def expected_costs(self, samples: int = 256) -> list[float]:
        """Monte-Carlo estimate of E[C_j(H)] under the current gates (a fixed generator: no drift of the RNG)."""
        g = torch.Generator().manual_seed(12345)
        masks, _ = self.gates.sample(samples, g)
        return self._costs(masks).mean(1).tolist()

    def mean_entropy(self) -> float:
        return float(self.gates.entropy().detach().mean())

    def costs(self, mask: torch.Tensor) -> list[float]:
        """One architecture's cost under each budget, in the budgets' order."""
        return self._costs(mask.unsqueeze(0))[:, 0].tolist()

    def _meets_budgets(self, costs: torch.Tensor) -> torch.Tensor:
        """[M] whether each of M architectures whose [J, M] `costs` are given holds every budget (rounding allowed)."""
        return (costs <= torch.tensor(self.limits, dtype=torch.float64).unsqueeze(1) * (1 + 1e-9)).all(0)

    def within_budget(self, mask: torch.Tensor) -> bool:
        return bool(self._meets_budgets(self._costs(mask.unsqueeze(0)))[0])

    def found(self, project: bool = True) -> Found:
        """The most probable architecture, pruned, made connected and projected onto the budgets.

        * Disconnected mode: the most probable connected architecture, i.e. the mode plus the input→output path
          whose dropped gates are cheapest to switch on (cost -log-odds per gate).
        * Over budget: gates are dropped one at a time until every budget holds, each time the drop that loses the
          least log-probability per unit of excess cost removed, counting the gates it prunes with it and never
          disconnecting the network; then the mode's gates that fit again are added back, most probable first.
          If no gate can be dropped, a connected path (the most probable one, else a cost's cheapest) is grown
          back with the most probable gates while every budget holds. Otherwise BudgetError.
        """
        graph = self.net.graph
        logits = self.gates.logits.detach().cpu()
        mask = graph.prune(self.gates.mode().cpu())
        result = Found(mask)
        if not graph.connected(mask):
            _, path = graph.shortest_path(gate_cost=torch.relu(-logits).tolist())
            mask = graph.prune(torch.maximum(mask, path))
            result.repaired = True
        start = mask.clone()
        while project and not self.within_budget(mask):
            smaller = self._cheapest_drop(mask, logits)
            if smaller is None:
                mask = self._fallback_within_budget(start)
                break
            mask = smaller
            if self.within_budget(mask):  # the last drop may have pruned more than the budget asked
                mask = self._add_back(mask, start, logits)
        if not torch.equal(mask, start):
            result.projected = True
            result.dropped = [self.net.gate_names[g] for g in range(len(mask)) if start[g] > mask[g]]
        result.mask = mask
        return result

    @torch.no_grad()
    def candidates(self, k: int, temperature: float = 3.0, low: float = 0.8, draws: int = 5000) -> list[torch.Tensor]:
        """Architectures to choose among by training each briefly and comparing them on validation data: the found
        one first, then distinct samples of the gates with their logits divided by `temperature` (flatter, so that
        a sample differs from the mode by several gates, not one), pruned, connected and costing between `low` and
        1 x every budget, in the order drawn; `k` at most, fewer when no more distinct samples qualify.

        The search ranks architectures by their loss on weights shared by all of them; a short training of each
        alone is a signal it does not have. On CIFAR-10 the best of 3 on validation closed the gap between the
        found architecture and the best of 3 random ones at the largest budget (BENCHMARKS.md)."""
        if k < 1 or temperature <= 0 or not 0.0 <= low <= 1.0:
            raise ValueError(f"candidates needs k >= 1, temperature > 0 and 0 <= low <= 1, got {k}, {temperature}, "
                             f"{low}")
        out = [self.found().mask]
        if k == 1:
            return out
        graph, gen = self.net.graph, torch.Generator().manual_seed(self.config.seed)
        probs = torch.sigmoid(self.gates.logits.detach().cpu() / temperature)
        masks = graph.prune(torch.bernoulli(probs.expand(draws, -1), generator=gen))
        limits = torch.tensor(self.limits, dtype=torch.float64).unsqueeze(1)
        costs = self._costs(masks)  # [budgets, draws], one batched call
        ok = graph.connected(masks) & (costs >= low * limits).all(0) & self._meets_budgets(costs)
        for m in masks[ok]:
            if len(out) == k:
                break
            if not any(torch.equal(m, o) for o in out):
                out.append(m)
        return out

    @torch.no_grad()
    def _fallback_within_budget(self, start: torch.Tensor) -> torch.Tensor:
        """When no single gate can go without disconnecting the network: start from the most probable
        input→output path (or a cost's cheapest path) that meets every budget, then add back the gates of `start`,
        most probable first, while every budget still holds."""
        graph = self.net.graph
        logits = self.gates.logits.detach().cpu()
        _, likely = graph.shortest_path(gate_cost=(-F.logsigmoid(logits)).tolist())
        candidates = [likely] + [c[1] for c in (b.cost.cheapest(self.net) for b in self.budgets) if c is not None]
        bases = [graph.prune(m) for m in candidates if self.within_budget(graph.prune(m))]
        if not bases:
            raise BudgetError("no connected architecture meets every budget: " +
                              ", ".join(f"{b} ({limit:.4g} {b.cost.unit})"
                                        for b, limit in zip(self.budgets, self.limits)))
        return self._add_back(bases[0], start, logits)

    @torch.no_grad()
    def _cheapest_drop(self, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """The connected, pruned mask one kept gate smaller that loses the least log-probability per unit of excess
        cost it removes (None if no drop removes any). Dropping a set of gates costs the sum of their logits, so a
        gate whose removal prunes a whole branch of likely gates with it is charged for all of them: least probable
        first alone cut a whole stage at once on CIFAR-10 (the small-budget trap in BENCHMARKS.md)."""
        graph = self.net.graph
        kept = torch.nonzero(mask).flatten()
        if len(kept) == 0:
            return None
        trials = mask.repeat(len(kept), 1)
        trials[torch.arange(len(kept)), kept] = 0
        trials = graph.prune(trials)  # every single drop at once: the graph's methods take a batch of masks
        stacked = trials[graph.connected(trials)]
        if len(stacked) == 0:
            return None
        limits = torch.tensor(self.limits, dtype=torch.float64).unsqueeze(1)
        excess = torch.relu(self._costs(torch.cat([mask.unsqueeze(0), stacked])) / limits - 1).sum(0)
        removed = excess[0] - excess[1:]
        lost = ((mask - stacked) * logits).sum(1).double()
        useful = removed > 1e-12
        if not bool(useful.any()):
            return None
        ratio = torch.where(useful, lost / removed.clamp(min=1e-12), torch.full_like(lost, math.inf))
        return stacked[int(torch.argmin(ratio))]

    @torch.no_grad()
    def _add_back(self, mask: torch.Tensor, start: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """`mask` plus the gates of `start` it lacks, most probable first, each while every budget still holds."""
        graph = self.net.graph
        for g in torch.argsort(logits, descending=True).tolist():
            if start[g] > 0 and mask[g] == 0:
                trial = mask.clone()
                trial[g] = 1.0
                trial = graph.prune(trial)
                if graph.connected(trial) and self.within_budget(trial):
                    mask = trial
        return mask

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "gates": self.gates.state_dict(), "opt": self.opt.state_dict(),
                "gate_opt": self.gate_opt.state_dict(), "sched": self.sched.state_dict(), "lambdas": self.lambdas,
                "floor_lambdas": self.floor_lambdas,
                "ema_reward": self.ema_reward, "generator": self.generator.get_state(), "steps": self.steps,
                "nonfinite_steps": self.nonfinite_steps}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.gates.load_state_dict(state["gates"])
        self.opt.load_state_dict(state["opt"])
        self.gate_opt.load_state_dict(state["gate_opt"])
        self.sched.load_state_dict(state["sched"])
        self.lambdas = state["lambdas"].to(torch.float64)
        self.floor_lambdas = state.get("floor_lambdas", torch.zeros_like(self.lambdas)).to(torch.float64)
        self.ema_reward = state["ema_reward"]
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))


# ---- helpers for a found architecture (used by the CLI and the benchmarks) ---------------------------
@torch.no_grad()
def recalibrate_bn(net: nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
                   data: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu") -> None:
    """Recompute BatchNorm running statistics (a cumulative average) by running `run` over `data`.

    Search weights are shared by many architectures, so their running statistics belong to none of them.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = net.training
    net.train()
    for x, _ in data:
        run(x.to(device))
    net.train(was)
    for m, mom in zip(bns, saved):
        m.momentum = mom


def finetune(net: SuperNetwork, mask: torch.Tensor, batches_fn: Callable[[int], Iterable], epochs: int,
             steps_per_epoch: int, *, lr: float = 0.02, weight_decay: float = 5e-4,
             device: torch.device | str = "cpu", on_step: Callable[[], None] | None = None) -> None:
    """Train the weights of one fixed architecture (live nodes only) for a few epochs, cosine schedule.

    `batches_fn(epoch)` yields that epoch's (x, y) mini-batches.
    """
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps_per_epoch * epochs))
    net.train()
    for epoch in range(epochs):
        for x, y in batches_fn(epoch):
            opt.zero_grad(set_to_none=True)
            task_loss(net(x.to(device), mask), y.to(device)).mean().backward()
            opt.step()
            sched.step()
            if on_step:
                on_step()


def all_costs(net: SuperNetwork, mask: torch.Tensor, extra: Sequence[Cost] = (),
              parallel_workers: int | None = None) -> dict[str, float]:
    """Every built-in cost of one architecture (and any other cost given), keyed by cost name."""
    costs: dict[str, Cost] = {"flops": FlopsCost(), "params": ParamsCost(), "parallel": ParallelCost(parallel_workers)}
    for c in extra:
        costs[c.name] = c
    return {name: float(c(net, mask)) for name, c in costs.items()}
