"""Width splits: channel groups of a layer pair as gated branches, run fused, counted per group."""
import copy
import json

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from bsnet import FlopsCost, Graph, ParallelCost, ParamsCost, SuperNetwork, create_supernet
from bsnet.fabrics.resnet_fabric import resnet_mask
from bsnet.width import Bias, WidthGroup, fuse_groups, fused_forward, keep_strongest, split_layer_pair

SMALL = dict(blocks=2, channels=[4, 8, 8], image_size=8, shift="slr")


def fabric(groups: int, multiplier: float = 2.0) -> SuperNetwork:
    torch.manual_seed(0)  # the same seed gives the split network the unsplit one's weights
    return create_supernet("resnet_fabric", **SMALL, width_groups=groups, width_multiplier=multiplier)


def shift_batchnorms(*nets: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine weights, the same in every net (modules in the same order)."""
    g = torch.Generator().manual_seed(7)
    for net in nets:
        g.manual_seed(7)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.data.uniform_(-1.0, 1.0, generator=g)
                m.running_var.data.uniform_(0.5, 2.0, generator=g)


def widened(mask: torch.Tensor, plain: SuperNetwork, split: SuperNetwork, groups: torch.Tensor | None = None
            ) -> torch.Tensor:
    """`plain`'s mask on `split`'s gates: the same block, skip and shortcut gates; width gates from `groups` (all
    kept by default)."""
    value = dict(zip(plain.gate_names, mask.tolist()))
    out = torch.ones(split.num_gates) if groups is None else groups.clone()
    for i, name in enumerate(split.gate_names):
        if name in value:
            out[i] = value[name]
    return out


def masks(net: SuperNetwork, n: int, p: float = 0.7, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, net.num_gates), p), generator=torch.Generator().manual_seed(seed))


class ConvCalls(TorchFunctionMode):
    """Records the weight shape of every convolution run: what reaches the fused layers."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.conv2d:
            self.shapes.append(tuple(args[1].shape))
        return func(*args, **(kwargs or {}))


def pair_network(groups: int = 4, bias: bool = True, declare: bool = True
                 ) -> tuple[SuperNetwork, nn.Sequential, nn.Module]:
    """in -> conv-BN-ReLU-conv split into `groups` gated groups -> sum (bias, BN) -> out; and the unsplit pair.
    Without `declare` the groups are plain nodes, not a width split."""
    torch.manual_seed(0)
    pair = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=bias), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 5, 3, padding=1, bias=bias))
    after = nn.BatchNorm2d(5)
    shift_batchnorms(pair, after)
    parts, tail = split_layer_pair(pair, groups, "pair")
    g = Graph(input="in", output="out")
    g.add_node("in")
    names = [f"W-{j}" for j in range(groups)]
    g.add_node("sum")
    for n in names:
        g.add_node(n)
        g.add_edge("in", n, gate=n)
        g.add_edge(n, "sum")
    g.add_node("out")
    g.add_edge("sum", "out")
    if declare:
        g.add_width_split("W", names)
    mods = {"in": nn.Identity(), "sum": nn.Sequential(tail, after), "out": nn.Flatten(), **dict(zip(names, parts))}
    return SuperNetwork(g, mods, (3, 6, 6)), pair, after


# ---- an exact rewrite ---------------------------------------------------------------------------------------
def copy_plain_weights(plain: SuperNetwork, split: SuperNetwork) -> None:
    """Give `split` the weights of `plain`, each split block's pair split as the fabric splits it."""
    for n in plain.graph.order:
        ws = [w for w in split.graph.width_splits if w.merge == n]
        if not ws:
            split.blocks[n].load_state_dict(plain.blocks[n].state_dict())
            continue
        block = plain.blocks[n]
        parts, _ = split_layer_pair([*block[0], block[1][0]], len(ws[0].groups))
        for name, part in zip(ws[0].groups, parts):
            split.blocks[name].load_state_dict(part.state_dict())
        split.blocks[n].load_state_dict(block[1][1].state_dict())


def test_the_split_fabric_starts_from_the_unsplit_weights():
    plain, split = fabric(1), fabric(4)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in split.parameters())
    conv1 = torch.cat([split.blocks[f"WX-2_1_0_{j}"][0].weight for j in range(4)])
    assert torch.equal(conv1, plain.blocks["X-2_1_0"][0][0].weight)


@pytest.mark.parametrize("train", [False, True])
def test_all_groups_equal_the_unsplit_fabric(train):
    plain, split = fabric(1), fabric(4)
    shift_batchnorms(plain)
    copy_plain_weights(plain, split)
    plain.train(train), split.train(train)
    x = torch.randn(6, *plain.input_shape)
    for mask in [plain.full_mask(), *masks(plain, 4, seed=1)]:
        if plain.graph.connected(mask):
            want = plain(x, mask)
            assert torch.allclose(split(x, widened(mask, plain, split)), want, atol=1e-5)
    if train:  # the fused BatchNorm updated each group's running statistics as the unsplit one updated its own
        first = torch.cat([split.blocks[f"W-1_0_{j}"][1].running_mean for j in range(4)])
        assert torch.allclose(first, plain.blocks["B-1_0"][0][1].running_mean, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_all_groups_equal_the_unsplit_custom_pair(bias):
    net, pair, after = pair_network(bias=bias)
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        want = after.eval()(pair.eval()(x)).flatten(1)
        assert torch.allclose(net.eval()(x), want, atol=1e-5)
        assert torch.allclose(net(x, torch.ones(4, 4)), want, atol=1e-5)  # the reference mode too


def test_a_linear_pair_splits_exactly():
    torch.manual_seed(0)
    pair = [nn.Linear(5, 12), nn.BatchNorm1d(12), nn.GELU(), nn.Linear(12, 3)]
    groups, tail = split_layer_pair(pair, 3)
    x = torch.randn(8, 5)
    with torch.no_grad():
        want = nn.Sequential(*pair).train()(x)
        assert torch.allclose(tail(fused_forward(groups, x)), want, atol=1e-5)
        assert torch.allclose(tail(sum(g(x) for g in groups)), want, atol=1e-5)
    assert isinstance(tail, Bias)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fused_training_updates_each_groups_statistics_as_its_own_forward(momentum):
    torch.manual_seed(0)
    pair = [nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6, momentum=momentum), nn.ReLU(), nn.Conv2d(6, 2, 1)]
    fused, _ = split_layer_pair(pair, 3)
    alone = [copy.deepcopy(g) for g in fused]
    x = [torch.randn(4, 3, 5, 5) for _ in range(3)]
    for part, g in ((fused, 0), (alone, 0)):  # group 0 has seen one batch more: its cumulative factor differs
        part[g](x[0])
    fused_forward(fused, x[1]), fused_forward(fused[1:], x[2])
    for g in alone:
        g(x[1])
    alone[1](x[2]), alone[2](x[2])
    for f, a in zip(fused, alone):
        assert torch.equal(f[1].num_batches_tracked, a[1].num_batches_tracked)
        assert torch.allclose(f[1].running_mean, a[1].running_mean, atol=1e-6)
        assert torch.allclose(f[1].running_var, a[1].running_var, atol=1e-6)


# ---- live groups run as one layer ---------------------------------------------------------------------------
def test_dead_groups_are_not_computed():
    net, _, _ = pair_network()
    x = torch.randn(2, 3, 6, 6)
    for kept in ([0, 2], [1], [0, 1, 2, 3]):
        mask = torch.zeros(4)
        mask[kept] = 1.0
        with ConvCalls() as calls, torch.no_grad():
            net(x, mask)
        live = 4 * len(kept)  # 4 channels a group
        assert calls.shapes == [(live, 3, 3, 3), (5, live, 3, 3)]  # one conv pair, only the live channels


def test_dead_groups_are_not_computed_in_the_fabric():
    net = fabric(4).eval()
    for mask in masks(net, 5, seed=3):
        if not net.graph.connected(mask):
            continue
        with ConvCalls() as calls, torch.no_grad():
            net(torch.randn(1, *net.input_shape), mask)
        live = dict(zip(net.graph.order, net.graph.live(mask).tolist()))
        splits = [s for s in net.graph.width_splits if any(live[g] for g in s.groups)]
        hidden = sum(net.blocks[g].channels for s in splits for g in s.groups if live[g])
        projections = [n for n in net.graph.order if live[n] and n.startswith("S-")
                       and not isinstance(net.blocks[n], nn.Identity)]
        # the stem, the projections, and two convolutions a live pair, whose first writes only the live channels
        assert len(calls.shapes) == 1 + len(projections) + 2 * len(splits)
        assert sum(s[0] for s in calls.shapes) - sum_other_out(net, live) == hidden


def sum_other_out(net: SuperNetwork, live: dict[str, bool]) -> int:
    """Output channels of the live convolutions outside the width groups: the stem, projections, fused second
    layers (the stage's channels each)."""
    stem = net.blocks["input"][0].out_channels
    skips = sum(net.blocks[n][0].out_channels for n in live if live[n] and n.startswith("S-")
                and not isinstance(net.blocks[n], nn.Identity))
    seconds = sum(net.blocks[s.groups[0]][-1].out_channels for s in net.graph.width_splits
                  if any(live[g] for g in s.groups))
    return stem + skips + seconds


def test_grouped_mode_and_single_mode_agree():
    net = fabric(4).eval()
    x = torch.randn(9, *net.input_shape)
    m = masks(net, 3, seed=5)
    with torch.no_grad():
        separate = torch.cat([net(c, k) for c, k in zip(torch.tensor_split(x, 3), m)])
        assert torch.allclose(net(x, m, grouped=True), separate, atol=1e-6)


def test_reference_mode_agrees_with_the_live_mode():
    net = fabric(4).eval()
    shift_batchnorms(net)  # a dead group computed anyway would show through its BatchNorm shift
    x = torch.randn(6, *net.input_shape)
    m = masks(net, 6, p=0.6, seed=2)
    with torch.no_grad():
        one_by_one = torch.cat([net(x[i:i + 1], m[i]) for i in range(6)])
        assert torch.allclose(net(x, m), one_by_one, atol=1e-5)


def test_gradients_reach_every_live_group():
    net, _, _ = pair_network()
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    net.train()(torch.randn(4, 3, 6, 6), mask).pow(2).mean().backward()
    for j in range(4):
        grad = net.blocks[f"W-{j}"][0].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == bool(mask[j])


def test_a_training_batch_may_run_one_group_and_several():
    """Grouped mode in training: one slice of the batch runs a single group, the next several, BatchNorm
    statistics updated by both, then one backward pass (a group's own forward would break it)."""
    net, _, _ = pair_network()
    m = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 1]])
    net.train()(torch.randn(6, 3, 6, 6), m, grouped=True).pow(2).mean().backward()
    assert net.blocks["W-0"][1].num_batches_tracked.item() == 3 and net.blocks["W-3"][1].num_batches_tracked == 1
    assert net.blocks["W-0"][0].weight.grad.abs().sum() > 0


def test_fuse_groups_is_the_plain_narrower_pair():
    net, _, _ = pair_network()
    groups = [net.eval().blocks[n] for n in ("W-0", "W-3")]
    x = torch.randn(2, 3, 6, 6)
    plain = fuse_groups(groups).eval()
    assert plain[0].weight.shape == (8, 3, 3, 3) and plain[1].num_features == 8 and plain[3].in_channels == 8
    with torch.no_grad():
        assert torch.allclose(plain(x), fused_forward(groups, x), atol=1e-6)



def channel_norms(pair: nn.Sequential) -> torch.Tensor:
    """Each hidden channel's squared L2 norm over the pair: first filter and bias, BatchNorm, second layer's slice."""
    first, bn, second = pair[0], pair[1], pair[-1]
    return (first.weight.pow(2).flatten(1).sum(1) + first.bias.pow(2) + bn.weight.pow(2) + bn.bias.pow(2)
            + second.weight.pow(2).transpose(0, 1).flatten(1).sum(1))


def test_keep_strongest_moves_the_strongest_channels_into_the_live_groups():
    net, _, _ = pair_network()
    net.eval()
    names = [f"W-{j}" for j in range(4)]
    full = fuse_groups([net.blocks[n] for n in names])
    norms = channel_norms(full).detach()
    mask = torch.tensor([1.0 if n in ("W-1", "W-2") else 0.0 for n in net.gate_names])
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = net(x, net.full_mask())
        keep_strongest(net, mask)
        after = net(x, net.full_mask())
    assert torch.allclose(before, after, atol=1e-5)  # channels only moved between groups
    kept = channel_norms(fuse_groups([net.blocks["W-1"], net.blocks["W-2"]])).detach()
    assert torch.allclose(kept.sort().values, norms.sort().values[-8:])
    plain = fuse_groups([net.blocks[n] for n in names])
    assert torch.allclose(plain[1].running_mean.sort().values, full[1].running_mean.sort().values)

# ---- costs --------------------------------------------------------------------------------------------------
def test_costs_match_the_flop_counter_on_the_live_forward():
    net = fabric(4).eval()
    checked = 0
    for mask in masks(net, 12, p=0.6, seed=4):
        if not net.graph.connected(mask):
            continue
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.randn(1, *net.input_shape), mask)
        assert float(FlopsCost()(net, mask)) == counter.get_total_flops()
        checked += 1
    assert checked >= 5


def test_params_count_the_live_groups():
    net, pair, after = pair_network()
    mask = torch.tensor([0.0, 1.0, 1.0, 0.0])
    # half the hidden channels: half of each layer's weights, BN1's affine pair, the full bias and BN2
    want = (16 * 3 * 9 + 16 + 2 * 16 + 5 * 16 * 9) // 2 + 5 + 2 * 5
    assert ParamsCost()(net, mask).item() == want
    assert ParamsCost()(net, torch.ones(4)).item() == sum(p.numel() for p in [*pair.parameters(), *after.parameters()])


def test_resnet_mask_keeps_the_groups_of_the_plain_resnets():
    net = create_supernet("resnet_fabric", width_groups=4, width_multiplier=2.0)
    assert "W-1_2_3" in net.gate_names and "WX-1_2_0_3" in net.gate_names
    for depth, mflops, n_params in ((8, 25.0, 78_042), (20, 81.6, 272_474)):  # as test_supernet's plain fabric
        mask = resnet_mask(net, depth)
        assert abs(float(FlopsCost()(net, mask)) / 1e6 - mflops) < 0.05
        assert ParamsCost()(net, mask) == n_params
    with pytest.raises(ValueError, match="width groups"):
        resnet_mask(create_supernet("resnet_fabric", **SMALL, width_multiplier=2.0), 8)


def test_parallel_cost_counts_a_split_pair_once():
    net, _, _ = pair_network()  # the groups, then nothing that takes a step (a sum, a Flatten)
    undeclared, _, _ = pair_network(declare=False)
    some = torch.tensor([[1.0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 1, 0]])
    for workers in (None, 1, 2):
        assert ParallelCost(workers)(net, some).tolist() == [1, 1, 1]
    assert ParallelCost(1)(undeclared, some).tolist() == [4, 2, 1]  # as separate nodes, one step each
    plain, split = fabric(1), fabric(4)
    m = masks(plain, 8, seed=6)
    groups = masks(split, 8, p=0.5, seed=7)
    for mask, some in zip(m, groups):
        wide = widened(mask, plain, split, some)
        # a block whose groups are all dropped is dropped: so it is in the plain network
        keep = {n: bool(split.graph.live(wide)[split.graph.index(n)]) for n in plain.graph.order if n in split.blocks}
        narrowed = torch.tensor([float(keep[n] and v) if n[0] in "BX" else v for n, v in
                                 zip(plain.gate_names, mask.tolist())])
        for workers in (None, 1, 2):
            assert ParallelCost(workers)(split, wide) == ParallelCost(workers)(plain, narrowed)


# ---- declaration and its checks -----------------------------------------------------------------------------
def test_dropping_every_group_drops_the_block():
    net = fabric(4)
    mask = net.full_mask()
    for j in range(4):
        mask[net.gate_names.index(f"W-1_0_{j}")] = 0.0
    assert not net.graph.live(mask)[net.graph.index("B-1_0")]
    assert net.graph.prune(mask)[net.gate_names.index("B-1_0")] == 0


def test_groups_that_do_not_divide_are_refused_naming_the_layer():
    with pytest.raises(ValueError, match="B-0_0: its 8 hidden channels do not divide into 3 width groups"):
        fabric(3)
    with pytest.raises(ValueError, match="whole number"):
        fabric(1, 1.3)


def test_a_split_whose_groups_do_not_form_a_pair_is_refused():
    g = Graph("in", "out")
    for n in ("in", "a", "b", "out"):
        g.add_node(n)
    g.add_edge("in", "a", gate="a")
    g.add_edge("in", "b", gate="b")
    g.add_edge("a", "out")
    g.add_edge("b", "out")
    g.add_edge("a", "b")
    g.add_width_split("w", ["a", "b"])
    with pytest.raises(ValueError, match="exactly one incoming and one outgoing edge"):
        g.freeze()
    with pytest.raises(ValueError, match="unknown node"):
        Graph("in", "out").add_width_split("w", ["x"])
    net, _, _ = pair_network()
    mods = dict(net.blocks)
    mods["W-0"] = nn.Identity()
    graph = Graph("in", "out")
    for n in net.graph.order:
        graph.add_node(n, combine=net.graph.node(n).combine)
    for e in net.graph.edges:
        graph.add_edge(e.src, e.dst, gate=None if e.gate is None else net.gate_names[e.gate])
    graph.add_width_split("W", ["W-0", "W-1", "W-2", "W-3"])
    with pytest.raises(ValueError, match="must be a WidthGroup"):
        SuperNetwork(graph, mods, (3, 6, 6))
    with pytest.raises(ValueError, match="bias belongs"):
        WidthGroup(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))


# ---- export: the live groups as one plain narrower layer pair ------------------------------------------------
def test_export_fuses_the_live_groups_into_one_narrower_pair(tmp_path, check_generated_file):
    from bsnet import Architecture, export_module
    from bsnet.export import export_onnx, export_python
    net = fabric(4).eval()
    shift_batchnorms(net)
    mask = resnet_mask(net, 14)  # every stage's blocks 0 and 1 at their stage's channels (2 of 4 groups)
    for j in (1, 2, 3):
        mask[net.gate_names.index(f"W-2_1_{j}")] = 0.0  # block 2_1 thinned to one group of 4 channels
    plain = export_module(net, mask).eval()
    convs = {name: m for name, m in plain.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs["W_0_0.0"].out_channels == 4 and convs["W_0_0.3"].in_channels == 4  # 2 groups of 2
    assert convs["W_2_1.0"].out_channels == 4 and convs["W_2_1.3"].out_channels == 8
    assert not any(name.startswith("W_2_1_") for name in convs)  # no group survives as a branch
    assert "mask" not in plain.code
    x = torch.randn(3, *net.input_shape)
    with torch.no_grad():
        want = net(x, mask)
        assert (plain(x) - want).abs().max() <= 1e-5
    arch = Architecture(net.name, net.config, {}, [g for g, k in zip(net.gate_names, mask.tolist()) if k])
    check_generated_file(export_python(plain, arch, tmp_path / "found.py"), x, want)
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    runtime = ort.InferenceSession(str(export_onnx(plain, net.input_shape, tmp_path / "m.onnx")),
                                   providers=["CPUExecutionProvider"])
    assert abs(runtime.run(None, {"input": x.numpy()})[0] - want.numpy()).max() <= 1e-4


# ---- latency: a split timed as one fused pair, by its number of live groups -------------------------------------
def test_latency_is_keyed_by_the_number_of_live_groups():
    from bsnet import LatencyCost
    from bsnet.costs.latency import measure_latency, table_keys
    net = fabric(4)
    table = measure_latency(net, min_run_time=1e-4)
    assert set(table["nodes"]) == set(table_keys(net))
    assert "W-1_0/4" in table["nodes"] and "W-1_0_3" not in table["nodes"] and "B-1_0" in table["nodes"]
    # a table whose every time is distinct tells which entries a mask's cost adds up
    nodes = {key: float(i + 1) for i, key in enumerate(sorted(table["nodes"]))}
    cost = LatencyCost({**table, "nodes": nodes})
    for mask in masks(net, 6, p=0.6, seed=9):
        mask = net.graph.prune(mask)
        if not net.graph.connected(mask):
            continue
        live = dict(zip(net.graph.order, net.graph.live(mask).tolist()))
        want = sum(nodes[n] for n, on in live.items() if on and net.graph.width_split(n) is None)
        for split in net.graph.width_splits:  # the keys sort by k, so the times rise with k as measured ones do
            k = sum(live[m] for m in split.groups)
            want += nodes[f"{split.name}/{k}"] if k else 0.0
        assert float(cost(net, mask)) == want
        assert cost(net, mask.unsqueeze(0)).tolist() == [want]
    one, other = resnet_mask(net, 8), resnet_mask(net, 8)  # the same widths from other groups: the same time
    for j, keep in enumerate((0, 0, 1, 1)):
        other[net.gate_names.index(f"W-0_0_{j}")] = keep
    assert float(cost(net, one)) == float(cost(net, other))
    # a wider pair timed faster than a narrower one is noise: it counts as the narrower one's time
    nodes["W-0_0/2"], nodes["W-0_0/1"] = nodes["W-0_0/1"], nodes["W-0_0/2"]
    assert float(cost(net, one)) == float(LatencyCost({**table, "nodes": nodes})(net, one))


# ---- width_groups: one meaning on the command line, in a config and for a fabric ------------------------------
def test_width_groups_is_the_fabrics_setting():
    from bsnet import RunConfig
    from bsnet.config import ConfigError
    assert RunConfig(supernet="resnet_fabric", width_groups=4).supernet_config == {"width_groups": 4}
    assert RunConfig(supernet="resnet_fabric", width_groups=4, supernet_config={"width_groups": 4}).width_groups == 4
    assert RunConfig(supernet="cnf", width_groups=1).supernet_config == {}  # 1: no width gates, for every network
    for bad, message in ((dict(supernet="resnet_fabric", width_groups=4, supernet_config={"width_groups": 2}),
                          "disagree"), (dict(supernet="cnf", width_groups=4), "has no width groups"),
                         (dict(supernet="resnet_fabric", width_groups=0), "width_groups must be")):
        with pytest.raises(ConfigError, match=message):
            RunConfig(**bad)
    assert RunConfig(model="pkg.mod:make", width_groups=2).width_groups == 2  # from_model splits the user's pairs


def test_groups_that_do_not_divide_are_one_line_naming_the_layer(tmp_path, capsys):
    from bsnet.cli import main
    assert main(["search", "--supernet", "resnet_fabric", "--width-groups", "3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bsnet: error:") and "B-0_0: its 16 hidden channels do not divide into 3" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


# ---- the record: architecture.json's widths, shown -----------------------------------------------------------
def test_the_architecture_records_and_shows_each_blocks_kept_width(tmp_path):
    from rich.console import Console

    from bsnet import Architecture
    from bsnet.tables import show_lines
    from bsnet.width import kept_widths
    net = fabric(4)
    mask = resnet_mask(net, 8)
    mask[net.gate_names.index("W-2_0_1")] = 0.0
    widths = kept_widths(net, mask)
    assert widths == {"B-0_0": [4, 8], "B-1_0": [8, 16], "B-2_0": [4, 16]}  # two groups of 2, 4, and one of 4
    arch = Architecture(net.name, net.config, {g: 0.5 for g in net.gate_names},
                        [g for g, k in zip(net.gate_names, mask.tolist()) if k], widths=widths)
    arch.to_json(tmp_path / "architecture.json")
    back = Architecture.from_json(tmp_path)
    assert back.widths == widths and back.format_version == 2
    console = Console(width=200, record=True)
    for line in show_lines(back):
        console.print(line)
    assert "kept widths: B-0_0 4/8 ch, B-1_0 8/16 ch, B-2_0 4/16 ch" in console.export_text()
    doc = json.loads((tmp_path / "architecture.json").read_text())
    del doc["widths"]
    doc["format_version"] = 1  # written before widths were recorded: still read
    (tmp_path / "architecture.json").write_text(json.dumps(doc))
    assert Architecture.from_json(tmp_path).widths == {}
    doc.update(format_version=2, widths={"B-0_0": [9, 8]})
    (tmp_path / "architecture.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="widths"):
        Architecture.from_json(tmp_path)


# ---- a width run through every command -----------------------------------------------------------------------
def test_a_width_run_goes_through_every_command(tmp_path, capsys):
    from bsnet.cli import main
    out = tmp_path / "run"
    config = ["blocks=1", "channels=[4,8,8]", "width_multiplier=2"]
    assert main(["search", "--supernet", "resnet_fabric", "--supernet-config", *config, "--width-groups", "2",
                 "--epochs", "1", "--finetune-epochs", "0", "--out", str(out)]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["supernet_config"]["width_groups"] == 2 and arch["widths"]
    capsys.readouterr()
    assert main(["show", str(out), "--draw", str(tmp_path / "arch.png")]) == 0
    shown = capsys.readouterr().out
    assert "kept widths:" in shown and (tmp_path / "arch.png").stat().st_size > 0
    for fmt in ("pt", "onnx", "python"):
        assert main(["export", str(out), "--format", fmt]) == 0
    assert main(["train", str(out), "--epochs", "1"]) == 0
    assert main(["eval", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    # measured on the exported network: the FLOPs and parameters the search counted per group
    assert result["flops"] == pytest.approx(arch["cost"]["flops"], rel=0.01)
    assert result["params"] == arch["cost"]["params"]
