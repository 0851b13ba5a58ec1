import pytest
import torch

from bsnet import SuperNetwork, create_supernet
from bsnet.graph import Graph
from torch import nn

# Small versions of every registered super network, for fast tests.
SMALL = {
    "cnf": dict(layers=3, channels=4, image_size=8),
    "resnet_fabric": dict(blocks=2, channels=[4, 8, 8], image_size=8, shift="slr"),
}


@pytest.fixture(params=sorted(SMALL))
def small_net(request) -> SuperNetwork:
    torch.manual_seed(0)
    return create_supernet(request.param, **SMALL[request.param])


class Lin(nn.Linear):
    """A linear node (FLOPs 2·in·out per example)."""


def diamond() -> SuperNetwork:
    """in -> a -> out and in -> b -> out, gates on the edges into `out`, plus a fixed branch c."""
    g = Graph(input="in", output="out")
    for n in ("in", "a", "b", "sum", "out"):
        g.add_node(n)
    g.add_edge("in", "a")
    g.add_edge("in", "b")
    g.add_edge("a", "sum", gate="a")
    g.add_edge("b", "sum", gate="b")
    g.add_edge("sum", "out")
    mods = {"in": nn.Identity(), "a": nn.Linear(4, 4), "b": nn.Linear(4, 4, bias=False), "sum": nn.Identity(),
            "out": nn.Linear(4, 2)}
    return SuperNetwork(g, mods, (4,))
