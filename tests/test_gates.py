import math

import pytest
import torch
from torch.distributions import Bernoulli

from bsnet import BernoulliGates


def test_initial_probability_defaults_to_the_reference_sigmoid_3():
    gates = BernoulliGates(5)
    assert torch.allclose(gates.probs(), torch.full((5,), 1 / (1 + math.exp(-3))))
    assert torch.allclose(BernoulliGates(3, init_prob=0.7).probs(), torch.full((3,), 0.7))
    with pytest.raises(ValueError):
        BernoulliGates(3, init_prob=1.0)


def test_log_probabilities_equal_torch_bernoulli():
    torch.manual_seed(0)
    gates = BernoulliGates(7)
    with torch.no_grad():
        gates.logits.copy_(torch.randn(7) * 2)
    masks, logp = gates.sample(11, generator=torch.Generator().manual_seed(1))
    assert masks.shape == (11, 7) and set(masks.unique().tolist()) <= {0.0, 1.0}
    expected = Bernoulli(probs=torch.sigmoid(gates.logits)).log_prob(masks).sum(-1)
    assert torch.allclose(logp, expected, atol=1e-6)
    logp.sum().backward()
    assert gates.logits.grad is not None


def test_mode_entropy_and_sampling_frequencies():
    gates = BernoulliGates(4)
    with torch.no_grad():
        gates.logits.copy_(torch.tensor([2.0, -2.0, 0.1, -0.1]))
    assert gates.mode().tolist() == [1.0, 0.0, 1.0, 0.0]
    p = torch.sigmoid(gates.logits.detach())
    assert torch.allclose(gates.entropy(), -(p * p.log() + (1 - p) * (1 - p).log()), atol=1e-6)
    masks, _ = gates.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(masks.mean(0), p, atol=0.02)
