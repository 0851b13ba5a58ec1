"""Cost models against hand-worked examples and against FlopCounterMode."""
import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bsnet import FlopsCost, FunctionCost, Graph, LatencyCost, ParallelCost, ParamsCost, SuperNetwork
from bsnet.budgets import make_cost, parse_budget
from bsnet.costs import AdditiveCost, Cost, all_costs, create_cost, list_costs, register_cost
from bsnet.costs import registry as cost_registry
from bsnet.costs.latency import fingerprint, split_times, table_keys
from tests.conftest import diamond


def registered(name: str, net: SuperNetwork, tmp_path) -> Cost:
    """The registered cost `name` as a budget makes it; latency read from a table of made-up node times."""
    table = tmp_path / "latency.json"
    times = {n: 1e-4 * (1 + i % 3) for i, n in enumerate(table_keys(net))}
    table.write_text(json.dumps({"nodes": times, "fingerprint": fingerprint(net)}))
    return create_cost(name, parallel_workers=2, latency_table=str(table))


def masks_for(net: SuperNetwork, n: int, p: float, seed: int) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, net.num_gates), p), generator=torch.Generator().manual_seed(seed))


def test_flops_and_params_by_hand_on_a_diamond():
    net = diamond()
    flops, params = FlopsCost(), ParamsCost()
    lin = 2 * 4 * 4  # 2 FLOPs per multiply-add
    masks = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert flops(net, masks).tolist() == [lin * 2 + 2 * 4 * 2, lin + 16, lin + 16, 0]
    # a: 16 weights + 4 biases; b: 16 weights; out: 8 + 2.
    assert params(net, masks).tolist() == [20 + 16 + 10, 20 + 10, 16 + 10, 0]
    assert flops(net, masks[1]).item() == lin + 16  # one mask gives a scalar


def chain_graph(widths: dict[str, int], edges: list[tuple[str, str, str | None]]) -> SuperNetwork:
    """A graph of Linear(4, 4) nodes ('+' names are pure sums) for scheduling examples."""
    g = Graph(input="in", output="out")
    for n in widths:
        g.add_node(n)
    for s, d, gate in edges:
        g.add_edge(s, d, gate=gate)
    mods = {n: (nn.Identity() if n.startswith("+") else nn.Linear(4, 4)) for n in widths}
    return SuperNetwork(g, mods, (4,))


def fan() -> SuperNetwork:
    # in -> {a, b, c} (gated) -> + -> d -> out; a second path a -> e -> + (gated).
    names = {n: 4 for n in ("in", "a", "b", "c", "e", "+", "d", "out")}
    edges = [("in", "a", None), ("in", "b", None), ("in", "c", None), ("a", "e", None),
             ("a", "+", "a"), ("b", "+", "b"), ("c", "+", "c"), ("e", "+", "e"), ("+", "d", None), ("d", "out", None)]
    return chain_graph(names, edges)


@pytest.mark.parametrize("workers, expected", [
    # all gates: computing nodes in, a, b, c, e, d, out. Depth: in, a, e, d, out = 5.
    (None, [5, 4, 5]),
    # one worker: one node a step: 7 nodes; without e and c: 5; with only e (a is then live through e): 5.
    (1, [7, 5, 5]),
    # two workers: in | a b | c e | d | out = 5; {in,a,b,d,out}: in | a b | d | out = 4; in | a | e | d | out = 5.
    (2, [5, 4, 5]),
])
def test_parallel_steps_by_hand(workers, expected):
    net = fan()
    masks = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 1]])  # gates a, b, c, e
    assert ParallelCost(workers)(net, masks).tolist() == expected


def test_pure_sums_take_no_step_and_disconnected_costs_nothing():
    net = fan()
    assert net.profile["+"].steps is False and net.profile["d"].steps is True
    assert ParallelCost()(net, torch.zeros(4)).item() == 0


# ---- every registered cost ----------------------------------------------------------------------------------
def test_the_built_in_costs_are_registered():
    assert {"flops", "params", "parallel", "latency"} <= set(list_costs())


@pytest.mark.parametrize("name", list_costs())
def test_a_registered_cost_carries_its_name(small_net, name, tmp_path):
    cost = registered(name, small_net, tmp_path)
    assert isinstance(cost, Cost) and cost.name == name  # the key of the cost in architecture files and budgets


@pytest.mark.parametrize("name", list_costs())
def test_registered_costs_are_vectorised_and_disconnected_costs_nothing(small_net, name, tmp_path):
    cost = registered(name, small_net, tmp_path)
    masks = masks_for(small_net, 9, 0.6, seed=4)
    costs = cost(small_net, masks)
    assert costs.shape == (9,) and (costs >= 0).all()
    # equal up to the order of a float sum (exactly, for counts)
    assert costs.tolist() == pytest.approx([cost(small_net, m).item() for m in masks], rel=1e-12, abs=0)
    assert cost(small_net, torch.zeros(small_net.num_gates)).item() == 0


@pytest.mark.parametrize("name", list_costs())
def test_registered_costs_cheapest_is_a_lower_bound(small_net, name, tmp_path):
    check_cheapest(small_net, registered(name, small_net, tmp_path))


@pytest.mark.parametrize("cost", [ParallelCost(), ParallelCost(1)])
def test_cheapest_connected_architecture(small_net, cost):
    check_cheapest(small_net, cost)


def check_cheapest(small_net: SuperNetwork, cost: Cost) -> None:
    found = cost.cheapest(small_net)
    if found is None:  # the cost knows no bound
        return
    bound, mask = found
    assert small_net.graph.connected(mask)
    assert float(cost(small_net, mask)) == pytest.approx(bound)
    masks = masks_for(small_net, 64, 0.5, seed=0)
    costs = cost(small_net, masks)[small_net.graph.connected(masks)]
    assert (costs >= bound - 1e-9).all()


def test_flops_cost_equals_flop_counter_on_the_forward_pass(small_net):
    net = small_net.eval()
    g = torch.Generator().manual_seed(2)
    checked = 0
    for mask in torch.bernoulli(torch.full((20, net.num_gates), 0.7), generator=g):
        if not net.graph.connected(mask):
            continue
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.randn(1, *net.input_shape), mask)
        assert float(FlopsCost()(net, mask)) == pytest.approx(counter.get_total_flops(), rel=0.01)
        checked += 1
    assert checked >= 5


def test_a_users_own_cost_from_a_function(small_net):
    energy = {n: float(i) for i, n in enumerate(small_net.graph.order)}  # a per-node table, say in joules
    per_node = torch.tensor([energy[n] for n in small_net.graph.order], dtype=torch.float64)
    cost = FunctionCost(lambda net, live: live.double() @ per_node, name="energy", unit="J")
    full = small_net.full_mask()
    assert cost(small_net, full).item() == pytest.approx(sum(energy.values()))
    assert cost(small_net, torch.zeros(small_net.num_gates)).item() == 0


def test_latency_cost_sums_the_measured_nodes(tmp_path, small_net):
    table = LatencyCost(cache=False, min_run_time=0.001)
    full = small_net.full_mask()
    per_node = table.node_costs(small_net)
    assert (per_node > 0).all()
    nodes, graph = table.table["nodes"], small_net.graph  # a width split: its fused pair of every group
    want = sum(nodes[n] for n in graph.order if graph.width_split(n) is None)
    want += sum(split_times(nodes, s.name, len(s.groups))[-1].item() for s in graph.width_splits)
    assert table(small_net, full).item() == pytest.approx(want)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table.table))
    again = LatencyCost.from_table(path)
    masks = torch.bernoulli(torch.full((5, small_net.num_gates), 0.7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(small_net, masks), table(small_net, masks))


def test_latency_cache_measures_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    net = diamond()
    first = LatencyCost(min_run_time=0.001).node_costs(net)
    assert len(list((tmp_path / "bsnet" / "latency").glob("*.json"))) == 1
    second = LatencyCost(min_run_time=0.001).node_costs(net)  # read from the cache: identical numbers
    assert torch.equal(first, second)


def test_latency_table_of_another_network_is_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"nodes": {"x": 1.0}, "fingerprint": "0"}))
    with pytest.raises(ValueError, match="another super network"):
        LatencyCost.from_table(path)(diamond(), torch.ones(2))


def test_bsnet_profile_writes_a_table_that_reads_back_to_the_same_cost(tmp_path):
    from bsnet import create_supernet
    from bsnet.cli import main
    cfg = ["layers=2", "channels=4", "image_size=8", "in_channels=1"]
    path = tmp_path / "table.json"
    assert main(["profile", "--supernet", "cnf", "--supernet-config", *cfg, "--min-run-time", "0.001",
                 "--out", str(path)]) == 0
    table = json.loads(path.read_text())
    assert table["batch_size"] == 1 and table["dtype"] == "float32" and table["input_shape"] == [1, 8, 8]
    assert table["device"].startswith("cpu")
    net = create_supernet("cnf", layers=2, channels=4, image_size=8, in_channels=1)
    mask = torch.bernoulli(torch.full((net.num_gates,), 0.7), generator=torch.Generator().manual_seed(1))
    live = net.graph.live(mask).tolist()
    expected = sum(table["nodes"][n] for n, l in zip(net.graph.order, live) if l)
    assert LatencyCost.from_table(path)(net, mask).item() == pytest.approx(expected)
    # and a search optimises for it, as on the target device
    out = tmp_path / "run"
    full = sum(table["nodes"].values())
    assert main(["search", "--supernet-config", "layers=2", "channels=4", "--epochs", "1", "--finetune-epochs", "0",
                 "--budget", f"latency={full * 0.8 * 1e3:.6f}ms", "--latency-table", str(path), "--out", str(out)]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["cost"]["latency"] <= arch["budget"]["latency"]


# ---- costs by name ------------------------------------------------------------------------------------------
def node_count(net: SuperNetwork, live: torch.Tensor) -> torch.Tensor:
    """A user's cost function, named in a budget as `tests.test_costs:node_count`."""
    return live.sum(1)


def test_budgets_make_costs_from_the_registry_and_from_user_objects():
    assert isinstance(make_cost("flops"), FlopsCost) and isinstance(make_cost("params"), ParamsCost)
    assert make_cost("parallel", parallel_workers=3).workers == 3
    assert make_cost("latency", device="cpu").device == "cpu"
    user = make_cost("tests.test_costs:node_count")
    assert isinstance(user, FunctionCost) and user.name == "node_count"
    assert user(diamond(), torch.ones(2)).item() == 5
    with pytest.raises(ValueError, match=r"unknown cost 'nope' \(known: flops, latency, parallel, params"):
        make_cost("nope")
    with pytest.raises(ValueError, match="unknown cost 'nope'"):
        create_cost("nope")


def test_a_registered_user_cost_is_usable_in_budgets(monkeypatch):
    monkeypatch.setattr(cost_registry, "_REGISTRY", dict(cost_registry._REGISTRY))

    @register_cost("nodes")
    class NodeCost(AdditiveCost):
        name = "nodes"

        def node_costs(self, net: SuperNetwork) -> torch.Tensor:
            return torch.ones(net.graph.num_nodes, dtype=torch.float64)

    @register_cost("scaled")
    def scaled(parallel_workers: int | None = None, scale: float = 1.0) -> Cost:
        return FunctionCost(lambda net, live: live.sum(1) * scale * (parallel_workers or 1), name="scaled")

    assert {"nodes", "scaled"} <= set(list_costs())
    budget = parse_budget("nodes=4", parallel_workers=2, device="cpu")  # options it does not take are dropped
    assert isinstance(budget.cost, NodeCost) and budget.value == 4 and str(budget) == "nodes<=4"
    assert create_cost("scaled", parallel_workers=2, scale=0.5)(diamond(), torch.ones(2)).item() == 5


def test_all_costs_of_one_architecture(small_net):
    mask = masks_for(small_net, 1, 0.7, seed=1)[0]
    extra = FunctionCost(node_count, name="nodes")
    got = all_costs(small_net, mask, [extra], parallel_workers=2)
    assert list(got) == ["flops", "params", "parallel", "nodes"]
    assert got == {"flops": float(FlopsCost()(small_net, mask)), "params": float(ParamsCost()(small_net, mask)),
                   "parallel": float(ParallelCost(2)(small_net, mask)), "nodes": float(extra(small_net, mask))}
    assert all_costs(small_net, mask)["parallel"] == float(ParallelCost()(small_net, mask))
