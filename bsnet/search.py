"""BudgetedSearch: weights by back-propagation, gate logits by REINFORCE, under budgets (Veniat & Denoyer 2018).

Each step samples architectures H from the gates, trains the weights on their loss, and moves the gate logits
along the policy gradient of the reward r(H) = -(loss + penalty(H)), with a baseline. The penalty and its Lagrange
multipliers λ are in `bsnet.multipliers` (adaptive λ by default, at the pace of the gates' own steps: a per-epoch
pace let λ outrun the gates on small data sets and crush them); the found architecture and the candidates to choose
among are in `bsnet.projection`.

The trainer does no printing and no file I/O: `bsnet.pipeline` runs it and writes the run.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from bsnet import multipliers, projection
from bsnet.budgets import Budget, budget_limits
from bsnet.gates import BernoulliGates
from bsnet.inputs import Inputs, available_device, batch_size, to_device
from bsnet.projection import BudgetError, Found
from bsnet.supernet import SuperNetwork
from bsnet.train import correct, task_loss

__all__ = ["BudgetError", "BudgetedSearch", "Found", "NonFiniteLossError", "SearchConfig", "StepStats"]


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
    baseline: str = "loo"  # "loo" leave-one-out across groups, "mean" batch mean (reference)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gate_lr: float = 0.05
    init_prob: float = 1 / (1 + math.exp(-3.0))
    lambda_mode: str = "adaptive"  # or "fixed"
    lambda_lr: float = 0.01  # per step: at 0.05, λ wound up far past the budget on CIFAR-10 (BENCHMARKS.md)
    fixed_lambda: float = 1e-7
    seed: int = 0
    # Adaptive λ only: a lower bound E[C_j(H)] >= floor · b_j with its own multiplier (0: none); without it,
    # CIFAR-10 searches ended at 60-70% of the budget (see bsnet.multipliers).
    budget_floor: float = 0.9
    # The found architecture grown, most probable gates first, while every budget holds, then kept gates exchanged
    # for costlier ones (bsnet.projection.fill): searches settle under the budget in coarse steps, and the budget
    # left unspent cost 3.5 points on CIFAR-10 at the ResNet-8 budget (BENCHMARKS.md). False: the mode, projected.
    fill_budgets: bool = True
    max_nonfinite_steps: int = 10  # NaN/inf losses in a row before the search stops (each such step is skipped)

    def __post_init__(self) -> None:
        for name in ("groups", "seed", "max_nonfinite_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"search setting {name} must be an integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "gate_lr", "init_prob", "lambda_lr", "fixed_lambda",
                     "budget_floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"search setting {name} must be a finite number, got {value!r}")
        if not isinstance(self.fill_budgets, bool):
            raise ValueError(f"search setting fill_budgets must be true or false, got {self.fill_budgets!r}")
        checks = [(self.sampling in ("grouped", "per_example"), "sampling must be 'grouped' or 'per_example'"),
                  (self.baseline in ("loo", "mean"), "baseline must be 'loo' or 'mean'"),
                  (self.lambda_mode in ("adaptive", "fixed"), "lambda_mode must be 'adaptive' or 'fixed'"),
                  (self.groups >= 1, "groups must be >= 1"),
                  (self.lr > 0 and self.gate_lr > 0, "learning rates (lr, gate_lr) must be > 0"),
                  (0 <= self.momentum < 1, "momentum must lie in [0, 1)"),
                  (self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (0 < self.init_prob < 1, "init_prob must lie in (0, 1)"),
                  (self.lambda_lr > 0, "lambda_lr must be > 0 (a fixed λ is lambda_mode=fixed)"),
                  (self.fixed_lambda >= 0, "fixed_lambda must be >= 0"),
                  (0 <= self.seed < 2**32, "seed must lie in [0, 2**32)"),
                  (0 <= self.budget_floor < 1, "budget_floor must lie in [0, 1)"),
                  (self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"search setting {msg}")


@dataclass
class StepStats:
    loss: float
    accuracy: float
    costs: list[float]  # mean sampled cost per budget
    disconnected: float  # fraction of sampled architectures that are disconnected
    examples: int
    skipped: bool = False  # the loss was not finite: nothing was updated


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
        self.device = available_device(device)
        self.net = net.to(self.device)
        self.config = cfg = config or SearchConfig()
        self.budgets = list(budgets)
        full = net.full_mask()
        self.full_costs = [float(b.cost(net, full)) for b in self.budgets]
        self.limits = budget_limits(self.budgets, self.full_costs)  # warns of a budget that constrains nothing
        for b, limit in zip(self.budgets, self.limits):
            if limit <= 0:
                raise ValueError(f"budget {b} must be positive")
            cheapest = b.cost.cheapest(net)
            if cheapest is not None and cheapest[0] > limit * (1 + 1e-9):
                raise ValueError(f"budget {b} ({limit:.4g} {b.cost.unit}) is below the cheapest connected "
                                 f"architecture ({cheapest[0]:.4g} {b.cost.unit})")
        # The gates stay on the CPU whatever the device: a few logits, sampled with the CPU generator that makes every
        # rank draw the same architectures (torch.bernoulli refuses a CPU generator for a CUDA tensor).
        self.gates = BernoulliGates(net.num_gates, cfg.init_prob)
        self.lambdas = torch.zeros(len(self.budgets), dtype=torch.float64)
        self.floor_lambdas = torch.zeros(len(self.budgets), dtype=torch.float64)  # of budget_floor's bounds
        if cfg.lambda_mode == "fixed":
            self.lambdas.fill_(cfg.fixed_lambda)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # architecture sampling only
        self.opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   nesterov=True)
        self.gate_opt = torch.optim.Adam(self.gates.parameters(), lr=cfg.gate_lr)
        if (steps_per_epoch is None) != (epochs is None) or min(steps_per_epoch or 1, epochs or 1) < 1:
            raise ValueError("give both steps_per_epoch and epochs (each >= 1) for the cosine schedule, or neither")
        total = (steps_per_epoch or 0) * (epochs or 0)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total) if total > 0 else \
            torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: 1.0)
        # Data-parallel (torchrun): every rank samples the same architectures (one seed), sees its own data shard;
        # the losses of each architecture, the gradients and BatchNorm statistics are averaged over ranks, so the
        # weights, gates and λ stay identical everywhere and the estimator is that of the global batch.
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.steps = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_steps = 0
        # found()'s last answer, with what it was worked out from (the settings, then the logits): the last epoch's
        # record, the outcome and the candidates all ask for the same one, and filling the budgets is the costly part
        self._found: tuple[tuple, torch.Tensor, Found] | None = None

    # ---- one step -------------------------------------------------------------------------------
    def _costs(self, masks: torch.Tensor) -> torch.Tensor:
        """[J, M] costs of M masks for each budget."""
        return torch.stack([b.cost(self.net, masks).to(torch.float64).reshape(-1) for b in self.budgets]) \
            if self.budgets else torch.zeros(0, masks.shape[0], dtype=torch.float64)

    def step(self, x: Inputs, y: torch.Tensor) -> StepStats:
        """One step on a batch: `x` a tensor or a dict of named tensors (bsnet.inputs), `y` the targets."""
        cfg, net = self.config, self.net
        net.train()
        x, y = to_device(x, self.device), y.to(self.device)
        size = batch_size(x)
        # BatchNorm updates its running statistics during the forward: keep a copy to undo a diverging step.
        buffers = [(b, b.detach().clone()) for b in net.buffers()]
        if cfg.sampling == "grouped":
            k = min(cfg.groups, max(1, size // 2))  # at least 2 examples per group (BatchNorm)
            masks, logp = self.gates.sample(k, self.generator)
            sizes = [len(c) for c in torch.tensor_split(torch.arange(size), k)]
            out = net(x, masks, grouped=True)  # masks stay on the CPU, where the forward reads them
            group_of = torch.repeat_interleave(torch.arange(k), torch.tensor(sizes)).to(self.device)
        else:
            masks, logp = self.gates.sample(size, self.generator)
            out = net(x, masks)
            group_of = torch.arange(size, device=self.device)
        losses = task_loss(out, y)
        finite = torch.isfinite(losses).all().float().reshape(1)
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
            return StepStats(float("nan"), float("nan"), [float("nan")] * len(self.budgets), 0.0, size, True)
        self.nonfinite_in_a_row = 0
        n_arch = masks.shape[0]
        arch_loss = torch.zeros(n_arch, device=self.device).index_add(0, group_of, losses.detach())
        counts = torch.bincount(group_of, minlength=n_arch).to(arch_loss.dtype)
        if self.world > 1 and cfg.sampling == "grouped":  # the same K architectures on every rank's shard
            both = torch.stack([arch_loss, counts])
            dist.all_reduce(both)
            arch_loss, counts = both[0], both[1]
        arch_loss = arch_loss / counts.clamp(min=1)
        costs = self._costs(masks)
        reward = -(arch_loss.double().cpu() + multipliers.penalty(
            costs, self.limits, self.lambdas, self.floor_lambdas, relative=cfg.lambda_mode == "adaptive",
            floor=cfg.budget_floor))
        if cfg.baseline == "loo" and n_arch > 1:
            baseline = (reward.sum() - reward) / (n_arch - 1)
        else:
            baseline = reward.mean().expand_as(reward)
        advantage = (reward - baseline).float()
        self.opt.zero_grad(set_to_none=True)
        self.gate_opt.zero_grad(set_to_none=True)
        (losses.mean() - (advantage.detach() * logp).mean().to(self.device)).backward()
        if self.world > 1:
            self._average_over_ranks([p.grad for p in self.params_with_grad()])
        self.opt.step()
        self.gate_opt.step()
        self.sched.step()
        if self.world > 1:
            self._average_over_ranks([b for b in net.buffers() if b.is_floating_point()])
        if cfg.lambda_mode == "adaptive" and self.budgets:  # with a fixed λ, floor_lambdas stay 0
            self.lambdas, self.floor_lambdas = multipliers.ascend(self.lambdas, self.floor_lambdas, costs, self.limits,
                                                                  lr=cfg.lambda_lr, floor=cfg.budget_floor)
        self.steps += 1
        connected = self.net.graph.connected(masks)
        return StepStats(float(losses.detach().mean()), float(correct(out.detach(), y).mean()), costs.mean(1).tolist(),
                         1.0 - float(connected.float().mean()), size)

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

    def within_budget(self, mask: torch.Tensor) -> bool:
        return projection.within_budget(mask, self._costs, self.limits)

    def found(self, project: bool = True) -> Found:
        """The most probable architecture, pruned, made connected, projected onto the budgets and (setting
        `fill_budgets`, on by default) grown to spend them (`bsnet.projection.find_architecture`; BudgetError if no
        connected architecture meets every budget)."""
        logits = self.gates.logits.detach().cpu()
        key = (project, self.config.fill_budgets, tuple(self.limits))
        if self._found is not None and self._found[0] == key and torch.equal(self._found[1], logits):
            return copy.deepcopy(self._found[2])
        cheapest = (c[1] for c in (b.cost.cheapest(self.net) for b in self.budgets) if c is not None)
        try:
            found = projection.find_architecture(self.net.graph, logits, self._costs, self.limits,
                                                 project_onto_budgets=project,
                                                 fill_budgets=project and self.config.fill_budgets, paths=cheapest)
        except BudgetError:
            raise BudgetError("no connected architecture meets every budget: " +
                              ", ".join(f"{b} ({limit:.4g} {b.cost.unit})"
                                        for b, limit in zip(self.budgets, self.limits))) from None
        self._found = (key, logits.clone(), found)
        return copy.deepcopy(found)

    def candidates(self, k: int, temperature: float = 3.0, low: float = 0.8, draws: int = 5000) -> list[torch.Tensor]:
        """Architectures to choose among by training each briefly and comparing them on validation data: the found
        one first, then distinct tempered samples of the gates within the budgets that spend at least `low` of each
        budget the found one spends that much of (`bsnet.projection.sample_candidates`, on the search's seed); `k` at
        most, fewer when no more distinct samples qualify.

        The search ranks architectures by their loss on weights shared by all of them; a short training of each
        alone is a signal it does not have. On CIFAR-10 the best of 3 on validation closed the gap between the
        found architecture and the best of 3 random ones at the largest budget (BENCHMARKS.md)."""
        return projection.sample_candidates(self.net.graph, self.gates.logits.detach().cpu(), self._costs, self.limits,
                                            self.found().mask, k, temperature=temperature, low=low, draws=draws,
                                            seed=self.config.seed)

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "gates": self.gates.state_dict(), "opt": self.opt.state_dict(),
                "gate_opt": self.gate_opt.state_dict(), "sched": self.sched.state_dict(), "lambdas": self.lambdas,
                "floor_lambdas": self.floor_lambdas, "generator": self.generator.get_state(), "steps": self.steps,
                "nonfinite_steps": self.nonfinite_steps}

    def load_state_dict(self, state: dict) -> None:
        """Also reads older checkpoints: those without `floor_lambdas`, and those with keys of removed options
        (`ema_reward`), which are ignored."""
        self.net.load_state_dict(state["net"])
        self.gates.load_state_dict(state["gates"])
        self.opt.load_state_dict(state["opt"])
        self.gate_opt.load_state_dict(state["gate_opt"])
        self.sched.load_state_dict(state["sched"])
        self.lambdas = state["lambdas"].to(torch.float64)
        self.floor_lambdas = state.get("floor_lambdas", torch.zeros_like(self.lambdas)).to(torch.float64)
        self.generator.set_state(state["generator"])
        self.steps = int(state["steps"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
