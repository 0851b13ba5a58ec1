"""BernoulliGates: the distribution Γ(Θ) over architectures, one independent Bernoulli gate per gated edge."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Bernoulli


class BernoulliGates(nn.Module):
    """One learnable logit per gate.

    Args:
        num_gates: number of gates of the super network.
        init_prob: initial probability of keeping each gate (the reference code starts at sigmoid(3) ≈ 0.95).
    """

    def __init__(self, num_gates: int, init_prob: float = 1 / (1 + math.exp(-3.0))) -> None:
        super().__init__()
        if not 0.0 < init_prob < 1.0:
            raise ValueError(f"init_prob must lie strictly between 0 and 1, got {init_prob}")
        self.logits = nn.Parameter(torch.full((num_gates,), math.log(init_prob / (1 - init_prob))))

    def distribution(self) -> Bernoulli:
        return Bernoulli(logits=self.logits)

    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` masks `[n, G]` (float 0/1, no gradient) and their log-probabilities `[n]` (differentiable)."""
        p = self.probs().detach().expand(n, -1)
        masks = torch.bernoulli(p, generator=generator)
        return masks, self.log_prob(masks)

    def log_prob(self, masks: torch.Tensor) -> torch.Tensor:
        return self.distribution().log_prob(masks).sum(-1)

    def mode(self) -> torch.Tensor:
        """The most probable architecture: gates with p > 0.5."""
        return (self.logits.detach() > 0).float()

    def entropy(self) -> torch.Tensor:
        """Entropy of each gate, `[G]` (nats)."""
        return self.distribution().entropy()
