"""From a found architecture to plain networks: in memory, safetensors, ONNX, standalone Python, bsnet.load."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bsnet
from bsnet import Architecture, FlopsCost, ParamsCost, build_network, export_module
from bsnet.architecture import kept_mask, kept_names
from bsnet.export import export_onnx, export_python, read_weights, save_weights


def connected_masks(net, n, seed=0, p=0.6):
    g = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < n:
        m = net.graph.prune(torch.bernoulli(torch.full((net.num_gates,), p), generator=g))
        if net.graph.connected(m):
            out.append(m)
    return out


def arch_of(net, mask):
    return Architecture(net.name, net.config, {}, [g for g, k in zip(net.gate_names, mask.tolist()) if k])


def test_exported_module_equals_the_supernetwork_under_the_mask(small_net):
    net = small_net.eval()
    x = torch.randn(3, *net.input_shape)
    for mask in connected_masks(net, 4):
        plain = export_module(net, mask).eval()
        with torch.no_grad():
            assert (plain(x) - net(x, mask)).abs().max() <= 1e-5
        # only live nodes, and a forward without masks
        from bsnet.export import attribute_name
        # a width split's live groups are one module named after the split
        live = {(net.graph.width_split(n) or net.graph.node(n)).name: n
                for n, on in zip(net.graph.order, net.graph.live(mask).tolist()) if on}
        names = {name for name, _ in plain.named_children()}
        assert names <= {attribute_name(n) for n in live}  # identities and ReLUs are inlined
        with_weights = {n for n, node in live.items() if any(True for _ in net.blocks[node].parameters())}
        assert {attribute_name(n) for n in with_weights} <= names
        assert "mask" not in plain.code and "if " not in plain.code
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            plain(x[:1])
        assert counter.get_total_flops() == pytest.approx(float(FlopsCost()(net, mask)), rel=0.01)
        assert sum(p.numel() for p in plain.parameters()) == ParamsCost()(net, mask)


def test_build_from_the_registry_alone(small_net):
    mask = connected_masks(small_net, 1, seed=3)[0]
    arch = arch_of(small_net, mask)
    built = build_network(arch)
    plain = export_module(small_net, mask)
    assert built.state_dict().keys() == plain.state_dict().keys()


def test_architecture_does_not_import_export():
    """Architecture is data; export builds from it, never the other way round."""
    import ast
    import inspect

    import bsnet.architecture
    tree = ast.parse(inspect.getsource(bsnet.architecture))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported and not any(m.startswith("bsnet.export") for m in imported)


def test_disconnected_architecture_is_a_clear_error(small_net):
    with pytest.raises(ValueError, match="disconnected"):
        export_module(small_net, torch.zeros(small_net.num_gates))


def test_custom_supernetwork_needs_its_factory():
    from tests.conftest import diamond
    arch = Architecture(None, {}, {}, ["a"])
    with pytest.raises(ValueError, match="factory"):
        build_network(arch)
    assert {n for n, _ in build_network(arch, supernet=diamond).named_children()} == {"a", "out"}  # identities inlined


def test_onnx_runtime_agrees(small_net, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    net = small_net.eval()
    plain = export_module(net, connected_masks(net, 1, seed=5)[0]).eval()
    path = export_onnx(plain, net.input_shape, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, *net.input_shape)  # a batch size other than the exported one
    with torch.no_grad():
        want = plain(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    assert abs(got - want).max() <= 1e-4


def test_generated_python_file_runs_without_bsnet(small_net, tmp_path, check_generated_file):
    net = small_net.eval()
    mask = connected_masks(net, 1, seed=7)[0]
    plain = export_module(net, mask).eval()
    path = export_python(plain, arch_of(net, mask), tmp_path / "found.py")
    x = torch.randn(2, *net.input_shape)
    with torch.no_grad():
        check_generated_file(path, x, plain(x))


def test_weights_round_trip_with_the_architecture_inside(small_net, tmp_path):
    net = small_net.eval()
    mask = connected_masks(net, 1, seed=9)[0]
    plain = export_module(net, mask).eval()
    arch = arch_of(net, mask)
    save_weights(plain, arch, tmp_path / "m.safetensors")
    state, back = read_weights(tmp_path / "m.safetensors")
    assert back.kept == arch.kept
    loaded = bsnet.load(tmp_path / "m.safetensors")
    x = torch.randn(2, *net.input_shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), plain(x))


def test_values_feeding_branches_are_released_where_the_branches_meet():
    """Like an eager block's forward, the export frees a block's input after the block, not at its last use."""
    import operator

    from bsnet.export.module import release
    torch.manual_seed(0)
    net = bsnet.create_supernet("resnet_fabric", blocks=2, channels=[4, 8], image_size=8, shortcuts=False).eval()
    plain = export_module(net, net.full_mask())

    def block_input(n):  # back through the layers of a skip path (none for the identity, a projection's conv+BN)
        while n.op == "call_module":
            n = n.args[0]
        return n

    adds = [n for n in plain.graph.nodes if n.op == "call_function" and n.target is operator.add]
    releases = [n for n in plain.graph.nodes if n.op == "call_function" and n.target is release]
    assert len(adds) == len(releases) == 4  # one per basic block
    for add, r in zip(adds, releases):
        meeting = list(add.users)[0]  # the addition node's own ReLU
        assert r.prev is meeting and r.args == (block_input(add.args[1]),)


def test_python_export_keeps_layers_whose_flat_names_collide(tmp_path, check_generated_file):
    from torch import nn

    from bsnet.export.python_source import flat_module
    torch.manual_seed(0)
    root = nn.Module()
    root.a = nn.Module()
    root.a.b_c = nn.Linear(3, 3)
    root.a_b = nn.Module()
    root.a_b.c = nn.Linear(3, 3)  # `a.b_c` and `a_b.c` both flatten to `a_b_c`
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_module("a_b.c", (graph.call_module("a.b_c", (x,)),)))
    module = torch.fx.GraphModule(root, graph)
    flat = flat_module(module)
    assert {n for n, _ in flat.named_children()} == {"a_b_c", "a_b_c_1"}
    path = export_python(module, Architecture(None, {}, {}, []), tmp_path / "collide.py")
    x = torch.randn(2, 3)
    with torch.no_grad():
        check_generated_file(path, x, module(x))


def test_kept_names_and_kept_mask_are_inverses():
    names = ["B-0_0", "S-0_0", "X-1_0_0", "B-1_0"]
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert kept_names(mask, names) == ["B-0_0", "X-1_0_0"]
    assert torch.equal(kept_mask(kept_names(mask, names), names), mask)
    with pytest.raises(ValueError, match="does not have"):
        kept_mask(["B-9_9"], names)
