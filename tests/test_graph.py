"""The graph's own checks and queries, on small hand-made graphs."""
import pytest
import torch

from bsnet.graph import Graph


def fork() -> Graph:
    """in -a-> a -> out, in -> b -b-> out, and b -c-> c, a dead end that never reaches the output."""
    g = Graph("in", "out")
    for n in ("in", "a", "b", "c", "out"):
        g.add_node(n)
    g.add_edge("in", "a", gate="a")
    g.add_edge("a", "out")
    g.add_edge("in", "b")
    g.add_edge("b", "out", gate="b")
    g.add_edge("b", "c", gate="c")
    return g


def by_name(g: Graph, values: torch.Tensor) -> dict[str, bool]:
    return {n: bool(v) for n, v in zip(g.order, values.tolist())}


# ---- building and its checks --------------------------------------------------------------------------------
def test_the_constructor_takes_only_input_and_output():
    g = Graph("in", "out")
    assert (g.input, g.output) == ("in", "out")
    with pytest.raises(TypeError):
        Graph(input="in", output="out", _nodes={})  # type: ignore[call-arg]


def test_duplicate_node_names_are_refused():
    g = Graph("in", "out")
    g.add_node("in")
    with pytest.raises(ValueError, match="duplicate node name 'in'"):
        g.add_node("in")


def test_unknown_combine_is_refused():
    with pytest.raises(ValueError, match="combine must be"):
        Graph("in", "out").add_node("in", combine="max")  # type: ignore[arg-type]


def test_duplicate_gate_names_are_refused():
    g = fork()
    g.add_node("d")
    with pytest.raises(ValueError, match="duplicate gate name 'a'"):
        g.add_edge("in", "d", gate="a")


def test_edges_to_unknown_nodes_are_refused():
    g = Graph("in", "out")
    g.add_node("in")
    with pytest.raises(ValueError, match="unknown node 'x'"):
        g.add_edge("in", "x")
    with pytest.raises(ValueError, match="unknown node 'y'"):
        g.add_edge("y", "in")


@pytest.mark.parametrize("missing", ["in", "out"])
def test_a_missing_input_or_output_node_is_refused(missing):
    g = Graph("in", "out")
    g.add_node({"in": "out", "out": "in"}[missing])
    with pytest.raises(ValueError, match=f"no node named '{missing}'"):
        g.freeze()


def test_cycles_are_refused():
    g = Graph("in", "out")
    for n in ("in", "a", "b", "out"):
        g.add_node(n)
    g.add_edge("in", "a")
    g.add_edge("a", "b")
    g.add_edge("b", "a", gate="back")
    g.add_edge("b", "out")
    with pytest.raises(ValueError, match="cycle"):
        g.freeze()


def test_edges_into_the_input_are_refused():
    g = Graph("in", "out")
    for n in ("pre", "in", "out"):
        g.add_node(n)
    g.add_edge("pre", "in")
    g.add_edge("in", "out")
    with pytest.raises(ValueError, match="input node 'in' cannot have incoming edges"):
        g.freeze()


def test_mutating_after_freeze_is_refused():
    g = fork().freeze()
    assert g.freeze() is g  # freezing twice is harmless
    with pytest.raises(RuntimeError, match="frozen"):
        g.add_node("d")
    with pytest.raises(RuntimeError, match="frozen"):
        g.add_edge("a", "b")
    with pytest.raises(RuntimeError, match="frozen"):
        g.output = "a"


# ---- queries ------------------------------------------------------------------------------------------------
def test_queries_work_before_an_explicit_freeze():
    g = fork()
    assert g.order == ["in", "a", "b", "out", "c"]  # stable: ties keep insertion order
    assert [n.name for n in g.nodes] == g.order and g.num_nodes == 5
    assert g.live(torch.ones(3)).tolist() == [True, True, True, True, False]


def test_a_query_freezes_the_graph():
    g = fork()
    g.live(torch.ones(3))
    with pytest.raises(RuntimeError, match="frozen"):
        g.add_node("d")


def test_building_reads_do_not_freeze():
    g = fork()
    assert g.num_gates == 3 and g.gate_names == ["a", "b", "c"] and g.node("c").combine == "sum"
    g.add_node("d")  # still open
    g.add_edge("c", "d")


def test_topological_order_and_edge_order():
    g = fork()
    assert sorted(g.order) == sorted(["in", "a", "b", "c", "out"])
    for e in g.edges:
        assert g.index(e.src) < g.index(e.dst)
    assert [g.index(e.dst) for e in g.edges] == sorted(g.index(e.dst) for e in g.edges)
    assert {(e.src, e.dst) for e in g.in_edges("out")} == {("a", "out"), ("b", "out")}


@pytest.mark.parametrize("mask, live, connected, pruned", [
    ([1, 1, 1], "in a b out", True, [1, 1, 0]),  # c is kept but never reaches the output
    ([1, 0, 1], "in a out", True, [1, 0, 0]),  # b is computed from the input but leads nowhere
    ([0, 1, 0], "in b out", True, [0, 1, 0]),
    ([0, 0, 1], "", False, [0, 0, 0]),  # nothing reaches the output: nothing is live
])
def test_live_prune_connected(mask, live, connected, pruned):
    g = fork()
    m = torch.tensor(mask, dtype=torch.float32)
    assert {n for n, v in by_name(g, g.live(m)).items() if v} == set(live.split())
    assert bool(g.connected(m)) is connected
    assert g.prune(m).tolist() == pruned
    assert g.live(g.prune(m)).tolist() == g.live(m).tolist()  # pruning keeps the architecture
    kept = {(e.src, e.dst) for e, v in zip(g.edges, g.live_edges(m).tolist()) if v}
    assert all(a in live.split() and b in live.split() for a, b in kept)


def test_batched_masks_give_batched_answers():
    g = fork()
    masks = torch.tensor([[1.0, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 1]])
    assert g.live(masks).shape == (4, 5)
    assert g.connected(masks).tolist() == [True, True, True, False]
    assert torch.equal(g.prune(masks), torch.stack([g.prune(m) for m in masks]))
    with pytest.raises(ValueError, match="mask has 2 gates, the graph has 3"):
        g.live(torch.ones(2))


def test_shortest_path():
    g = fork()
    cost = {"in": 1.0, "a": 5.0, "b": 2.0, "c": 0.0, "out": 1.0}
    best, mask = g.shortest_path([cost[n] for n in g.order])
    assert best == 4.0 and mask.tolist() == [0, 1, 0]  # in -> b -> out
    best, mask = g.shortest_path(gate_cost=[0.0, 10.0, 0.0])
    assert best == 0.0 and mask.tolist() == [1, 0, 0]  # in -> a -> out keeps only the free gate
    assert g.connected(mask)


def test_paths_through_each_gate_are_the_cheapest_input_output_paths_that_use_it():
    g = fork()
    rows = g.paths_through([3.0, 1.0, 0.0])
    assert rows.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]  # c's edge leads to a dead end: no path uses it
    g = Graph("in", "out")  # two routes from m to out, through gate b or c, then on through d
    for n in ("in", "m", "n", "out"):
        g.add_node(n)
    g.add_edge("in", "m", gate="a")
    g.add_edge("m", "n", gate="b")
    g.add_edge("m", "n", gate="c")
    g.add_edge("n", "out", gate="d")
    g.add_edge("in", "out", gate="e")
    rows = g.paths_through([1.0, 2.0, 1.0, 1.0, 0.0])
    assert rows.tolist() == [[1, 0, 1, 1, 0], [1, 1, 0, 1, 0], [1, 0, 1, 1, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert g.connected(rows).all()


def test_shortest_path_without_a_path():
    g = Graph("in", "out")
    g.add_node("in")
    g.add_node("out")
    with pytest.raises(ValueError, match="cannot be reached"):
        g.shortest_path()
