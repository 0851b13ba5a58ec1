"""SuperNetwork.forward in its three modes, over every registered super network."""
import copy

import pytest
import torch
from torch import nn

from bsnet import BernoulliGates, FlopsCost, ParamsCost, SuperNetwork, create_supernet, list_supernets
from bsnet.graph import Graph
from tests.conftest import create_small, diamond


def random_masks(net, n, p=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, net.num_gates), p), generator=g)


def x_for(net, b=4):
    torch.manual_seed(1)
    return torch.randn(b, *net.input_shape)


def test_all_ones_equals_the_ungated_network(small_net):
    # The ungated network: every node fed by all its inputs, computed by hand from the graph.
    net = small_net.eval()
    x = x_for(net)
    outs = {}
    for n in net.graph.order:
        if n == net.graph.input:
            h = x
        else:
            ins = [outs[e.src] for e in net.graph.in_edges(n)]
            h = torch.cat(ins, 1) if net.graph.node(n).combine == "concat" else sum(ins)
        outs[n] = net.blocks[n](h)
    with torch.no_grad():
        assert torch.allclose(net(x, net.full_mask()), outs[net.graph.output], atol=1e-6)
        assert torch.allclose(net(x), outs[net.graph.output], atol=1e-6)


def test_dead_nodes_are_not_executed(small_net):
    net = small_net
    calls = []
    hooks = [net.blocks[n].register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n in net.graph.order]
    for mask in random_masks(net, 6):
        if not net.graph.connected(mask):
            continue
        calls.clear()
        net(x_for(net), mask)
        # a width split's groups run fused, not through their modules (tests/test_width.py counts their channels)
        live = {n for n, l in zip(net.graph.order, net.graph.live(mask).tolist()) if l and not net.graph.width_split(n)}
        calls = [n for n in calls if not net.graph.width_split(n)]
        assert set(calls) == live and len(calls) == len(live)
        assert len(live) < net.graph.num_nodes or mask.all()
    for h in hooks:
        h.remove()


def test_the_live_sub_graph_is_planned_once_per_mask(small_net):
    net = small_net.eval()
    x = x_for(net, 4)
    masks = torch.cat([random_masks(net, 3, seed=5)] * 2)  # each mask twice
    with torch.no_grad():
        outs = [net(x, m) for m in masks]
    assert len(net._plans) == len({m.numpy().tobytes() for m in (masks > 0.5)})
    assert all(torch.equal(a, b) for a, b in zip(outs[:3], outs[3:]))
    copied = copy.deepcopy(net)  # the search's validation scores a copy every epoch: the plans stay behind
    assert copied._plans == {} and net._plans
    with torch.no_grad():
        assert all(torch.equal(copied(x, m), out) for m, out in zip(masks, outs))


@pytest.mark.parametrize("pruned", [True, False])
def test_masked_mode_equals_live_mode(small_net, pruned):
    net = small_net.eval()
    for m in net.modules():  # BatchNorm shifts away from 0: a dead node computed anyway would show
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.bias, -1.0, 1.0)
    x = x_for(net, 6)
    masks = random_masks(net, 6, seed=3)
    if pruned:
        masks = net.graph.prune(masks)  # gates of dead edges set to 0
    with torch.no_grad():
        per_example = net(x, masks)
        one_by_one = torch.cat([net(x[i:i + 1], masks[i]) for i in range(6)])
    assert torch.allclose(per_example, one_by_one, atol=1e-5)


def test_grouped_mode_runs_each_group_on_its_own_architecture(small_net):
    net = small_net.eval()
    x = x_for(net, 8)
    masks = random_masks(net, 3, seed=5)
    with torch.no_grad():
        grouped = net(x, masks, grouped=True)
        chunks = torch.tensor_split(x, 3)
        separate = torch.cat([net(c, m) for c, m in zip(chunks, masks)])
    assert torch.allclose(grouped, separate, atol=1e-6)


def test_gradients_reach_weights_and_gate_logits(small_net):
    net = small_net.train()
    gates = BernoulliGates(net.num_gates)
    masks, logp = gates.sample(2)
    x = x_for(net, 4)
    out = net(x, masks, grouped=True)
    loss = out.float().pow(2).mean(dim=tuple(range(1, out.dim())))
    per_group = torch.stack([l.mean() for l in torch.tensor_split(loss, 2)])
    (per_group.mean() + (per_group.detach() * logp).mean()).backward()
    assert gates.logits.grad is not None and gates.logits.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_disconnected_masks_give_the_constant_prediction_and_zero_cost(small_net):
    net = small_net.eval()
    empty = torch.zeros(net.num_gates)
    assert not net.graph.connected(empty)
    x = x_for(net, 3)
    with torch.no_grad():
        y = net(x, empty)
        zero_pred = net.blocks[net.graph.output](torch.zeros(1, *net.profile[net.graph.output].in_shape))
        assert torch.allclose(y, zero_pred.expand_as(y))
        assert torch.allclose(net(x, empty.expand(3, -1)), y, atol=1e-6)  # the reference mode agrees
    assert FlopsCost()(net, empty) == 0


def test_a_concatenation_keeps_its_layout_when_an_input_is_dropped():
    g = Graph(input="in", output="out")
    for n in ("in", "a", "b"):
        g.add_node(n)
    g.add_node("cat", combine="concat")
    g.add_node("out")
    for src, dst, gate in (("in", "a", None), ("in", "b", None), ("a", "cat", "a"), ("b", "cat", "b"),
                           ("cat", "out", None)):
        g.add_edge(src, dst, gate=gate)
    torch.manual_seed(0)
    net = SuperNetwork(g, {"in": nn.Identity(), "a": nn.Linear(4, 3), "b": nn.Linear(4, 2), "cat": nn.Identity(),
                           "out": nn.Linear(5, 2)}, (4,))
    x = torch.randn(3, 4)
    with torch.no_grad():
        for mask in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])):
            want = net.blocks["out"](torch.cat([net.blocks["a"](x) * mask[0], net.blocks["b"](x) * mask[1]], 1))
            assert torch.allclose(net(x, mask), want, atol=1e-6)
            assert torch.allclose(net(x, mask.expand(3, -1)), want, atol=1e-6)  # the reference mode agrees


def test_custom_supernetwork_in_a_few_lines():
    net = diamond()
    assert net.gate_names == ["a", "b"]
    x = torch.randn(5, 4)
    only_a = net(x, torch.tensor([1.0, 0.0]))
    expected = net.blocks["out"](net.blocks["a"](x))
    assert torch.allclose(only_a, expected)


@pytest.mark.parametrize("bad", [torch.ones(3), torch.ones(2, 2, 5)])
def test_wrong_mask_shapes_are_refused(bad):
    with pytest.raises(ValueError):
        diamond()(torch.randn(2, 4), bad)


def test_cnf_layout_follows_the_reference():
    net = create_supernet("cnf", layers=4, channels=4, image_size=16)
    # log2(16)+1 = 5 scales, the first layer a chain of strided convs, the last chained down to 1x1.
    assert {n for n in net.graph.order if n.startswith("A-0_")} == {f"A-0_{s}" for s in range(5)}
    assert "C-0_3-0_4" in net.gate_names and "C-3_3-3_4" in net.gate_names
    assert net.profile["A-3_4"].out_shape == (4, 1, 1)
    seg = create_supernet("cnf", layers=4, channels=4, image_size=16, task="segmentation", num_classes=3)
    assert "C-3_1-3_0" in seg.gate_names
    assert seg(torch.randn(2, 3, 16, 16)).shape == (2, 3, 16, 16)


def test_cnf_refuses_sizes_it_cannot_take():
    with pytest.raises(ValueError, match="power-of-two"):
        create_supernet("cnf", image_size=28)


def test_plain_resnets_are_subgraphs_of_the_resnet_fabric():
    from bsnet.fabrics.resnet_fabric import resnet_mask
    net = create_supernet("resnet_fabric")
    flops = FlopsCost()
    params = ParamsCost()
    for depth, mflops, n_params in ((8, 25.0, 78_042), (14, 53.3, 175_258), (20, 81.6, 272_474)):
        # ResNet-20 on CIFAR: 0.27M parameters, about 41M multiply-adds (82 MFLOPs at 2 per multiply-add).
        mask = resnet_mask(net, depth)
        assert abs(float(flops(net, mask)) / 1e6 - mflops) < 0.05
        assert params(net, mask) == n_params
    with pytest.raises(ValueError):
        resnet_mask(net, 32)


@pytest.mark.parametrize("name", list_supernets())
def test_registry_builds_every_supernet_and_refuses_unknown_settings(name):
    net = create_small(name)
    assert net.name == name and net.config["image_size"] == 8
    with pytest.raises(ValueError, match="unknown"):
        create_supernet(name, no_such_setting=1)
    with pytest.raises(ValueError, match="unknown super network"):
        create_supernet("nope")
