"""from_model: super networks from a user's own models (a ResNet-18 and a small ViT written here)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import bsnet
from bsnet.budgets import parse_budget
from bsnet.architecture import kept_names
from bsnet.export import save_weights
from bsnet.from_model import as_supernet, from_model
from bsnet.search import BudgetedSearch
from tests.user_layers import Act, Flip, Gain, Opaque


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, widths=(8, 16, 16, 32), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c, w, stride), BasicBlock(w, w, 1)))
            c = w
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class ViT(nn.Module):
    def __init__(self, dim=32, depth=3, heads=2, patch=8, image=32, classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), Flip(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.body(h)
        return self.head(h.mean((2, 3)))


def randomised(model: nn.Module) -> nn.Module:
    """Trained-looking BatchNorm statistics and affine weights, so that eval-mode comparisons mean something."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


MODELS = {"resnet18": ResNet18, "vit": ViT}


def branch_layer(model: nn.Module, gate: str, first: bool = True) -> nn.Module:
    """The first (or last) layer of the branch a gate switches: `layer1.0` -> conv1 or bn2, `blocks.0.mlp` -> 0 or 2."""
    kind = "resnet" if gate.startswith("layer") else gate.rsplit(".", 1)[1]
    suffix = {"resnet": ("conv1", "bn2"), "attn": ("qkv", "proj"), "mlp": ("0", "2")}[kind][0 if first else 1]
    return model.get_submodule(f"{gate}.{suffix}")


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    torch.manual_seed(0)
    model = randomised(MODELS[request.param]())
    x = torch.randn(4, 3, 32, 32)
    return model, from_model(model, x).eval(), x


def connected_masks(net, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = [m for m in torch.bernoulli(torch.full((4 * n, net.num_gates), 0.5), generator=g) if net.graph.connected(m)]
    return masks[:n]


def test_all_ones_mask_is_the_model(built):
    model, net, x = built
    with torch.no_grad():
        assert (net(x, net.full_mask()) - model(x)).abs().max() <= 1e-6


def test_one_gate_per_residual_branch(built):
    model, net, _ = built
    if isinstance(model, ResNet18):
        assert net.gate_names == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
        # projection shortcuts are their own fixed nodes; identity shortcuts are plain edges
        skips = [n for n in net.graph.order if n.endswith("_skip")]
        assert skips == ["layer2_0_skip", "layer3_0_skip", "layer4_0_skip"]
    else:
        assert net.gate_names == [f"blocks.{i}.{b}" for i in range(3) for b in ("attn", "mlp")]
    assert net.num_gates == {ResNet18: 8, ViT: 6}[type(model)]
    assert all(e.gate is None for e in net.graph.edges if not e.dst.endswith("_add"))  # gates only into sums


def test_attributes_and_shared_weights(built):
    model, net, _ = built
    assert net.name is None and net.input_shape == (3, 32, 32)
    assert net.config == {"from_model": type(model).__qualname__, "input_shape": [3, 32, 32], "gate": "residual",
                          "leaf_modules": []}
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}


def test_dropped_branches_are_not_executed(built):
    model, net, x = built
    calls = {g: 0 for g in net.gate_names}
    hooks = [branch_layer(model, g).register_forward_hook(lambda m, i, o, g=g: calls.__setitem__(g, calls[g] + 1))
             for g in net.gate_names]
    try:
        for mask in connected_masks(net, 4):
            for g in calls:
                calls[g] = 0
            with torch.no_grad():
                net(x, mask)
            assert [calls[g] for g in net.gate_names] == mask.int().tolist()
    finally:
        for h in hooks:
            h.remove()


def test_a_dropped_branch_leaves_the_skip_path(built):
    model, net, x = built
    gate = net.gate_names[1]
    mask = net.full_mask()
    mask[1] = 0
    # The model with that branch's output set to zero: x + 0.
    hook = branch_layer(model, gate, first=False).register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        with torch.no_grad():
            expected = model(x)
    finally:
        hook.remove()
    with torch.no_grad():
        assert (net(x, mask) - expected).abs().max() <= 1e-6


def test_flops_cost_is_what_the_live_network_computes(built):
    _, net, x = built
    for mask in [net.full_mask(), *connected_masks(net, 5, seed=1)]:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x[:1], mask)
        measured = counter.get_total_flops()
        assert measured > 0
        assert abs(float(bsnet.FlopsCost()(net, mask)) - measured) <= 0.01 * measured


def test_masked_mode_equals_live_mode(built):
    _, net, x = built
    masks = torch.stack(connected_masks(net, 4, seed=2))
    with torch.no_grad():
        per_example = net(x, masks)
        one_by_one = torch.cat([net(x[i:i + 1], masks[i]) for i in range(4)])
    assert torch.allclose(per_example, one_by_one, atol=1e-5)


def test_training_with_dropped_branches_and_inplace_relus():
    # The model's in-place ReLU after each addition must not overwrite a tensor autograd saved when the
    # addition has one live input left.
    torch.manual_seed(0)
    net = from_model(ResNet18(), torch.randn(2, 3, 32, 32)).train()
    mask = net.full_mask()
    mask[[1, 2, 5]] = 0
    net(torch.randn(4, 3, 32, 32), mask).sum().backward()
    assert all(p.grad is not None for p in net.blocks["layer1_0"].parameters())
    assert all(p.grad is None for p in net.blocks["layer1_1"].parameters())


def test_from_model_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = ResNet18().train()
    state = copy.deepcopy(model.state_dict())
    net = from_model(model, torch.randn(2, 3, 32, 32))
    assert model.training and net.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_gated_named_modules():
    torch.manual_seed(0)
    model = randomised(ResNet18())
    x = torch.randn(4, 3, 32, 32)
    names = ["layer1.0", "layer1.1", "layer3.1"]
    net = from_model(model, x, gate=names).eval()
    assert net.gate_names == names and net.config["gate"] == names
    with torch.no_grad():
        assert (net(x) - model(x)).abs().max() <= 1e-5
        mask = torch.tensor([1.0, 0.0, 1.0])
        hook = model.layer1[1].register_forward_hook(lambda m, i, o: i[0])  # layer1.1 as the identity
        try:
            expected = model(x)
        finally:
            hook.remove()
        calls = []
        hook = model.layer1[1].conv1.register_forward_hook(lambda m, i, o: calls.append(1))
        try:
            assert (net(x, mask) - expected).abs().max() <= 1e-5
        finally:
            hook.remove()
        assert not calls


def test_gated_module_must_keep_its_shape():
    model = ResNet18()
    with pytest.raises(ValueError, match=r"'layer2\.0'.*shape"):
        from_model(model, torch.randn(2, 3, 32, 32), gate=["layer1.1", "layer2.0"])
    with pytest.raises(ValueError, match="no submodule named 'layer9'"):
        from_model(model, torch.randn(2, 3, 32, 32), gate=["layer9"])
    with pytest.raises(ValueError, match="gate=\\['layer1.0'\\]"):
        from_model(model, torch.randn(2, 3, 32, 32), gate="layer1.0")


def test_a_module_inside_a_residual_cannot_be_gated_alone():
    with pytest.raises(ValueError, match=r"'layer1\.0\.conv2'.*flow around it"):
        from_model(ResNet18(), torch.randn(2, 3, 32, 32), gate=["layer1.0.conv2"])


def test_untraceable_submodule_is_named_and_can_be_a_leaf():
    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"submodule 'body\.1' \(Flip\).*if x\.sum\(\) > 0.*leaf_modules") as err:
        from_model(model, x)
    assert "control flow" in str(err.value)
    recorded = {Flip: "tests.user_layers.Flip", "Flip": "tests.user_layers.Flip",
                "tests.user_layers.Flip": "tests.user_layers.Flip", model.body[1]: "body.1", "body.1": "body.1"}
    for leaf, record in recorded.items():
        net = from_model(model, x, leaf_modules=[leaf]).eval()
        assert net.gate_names == ["body"] and net.config["leaf_modules"] == [record]
        with torch.no_grad():
            assert (net(x) - model(x)).abs().max() <= 1e-6


def test_a_model_without_residuals_needs_named_gates():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="no residual branch"):
        from_model(model, torch.randn(2, 3, 2, 2))
    net = from_model(model, torch.randn(2, 3, 2, 2), gate=["2"])
    assert net.gate_names == ["2"]


def test_short_search_meets_the_budget():
    torch.manual_seed(0)
    net = from_model(randomised(ResNet18()), torch.randn(2, 3, 32, 32))
    search = BudgetedSearch(net, [parse_budget("50%")])
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        stats = search.step(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
        assert torch.isfinite(torch.tensor(stats.loss))
    found = search.found()
    assert search.within_budget(found.mask)
    flops = bsnet.FlopsCost()
    assert float(flops(net, found.mask)) <= 0.5 * float(flops(net, net.full_mask())) * (1 + 1e-9)


class WithLeaves(nn.Module):
    """Residual blocks around layers of the user's own code that torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), Gain(8, threshold=-1.0, mode="x"))
        self.body2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), Flip())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.body1(h)
        h = h + self.body2(h)
        return self.head(h.mean((2, 3)))


def test_leaf_modules_by_name_are_matched_against_the_models_classes():
    model, x = WithLeaves(), torch.randn(2, 3, 16, 16)
    net = from_model(model, x, leaf_modules=[Flip, "Gain", Opaque])  # no Opaque in the model: not recorded
    assert net.config["leaf_modules"] == ["tests.user_layers.Flip", "tests.user_layers.Gain"]
    with pytest.raises(ValueError, match="'Flop'.*no submodule at that path nor of that class"):
        from_model(model, x, leaf_modules=["Flop", Gain])
    with pytest.raises(ValueError, match="a Flip that is not a submodule of WithLeaves"):
        from_model(model, x, leaf_modules=[Flip(), Gain])
    model.body2[1] = type("Flip", (Flip,), {"__module__": "elsewhere", "__qualname__": "Flip"})()
    with pytest.raises(ValueError, match=r"several classes.*elsewhere\.Flip, tests\.user_layers\.Flip"):
        from_model(model, x, leaf_modules=["Flip", Gain])
    assert from_model(model, x, leaf_modules=["elsewhere.Flip", Gain]).config["leaf_modules"][0] == "elsewhere.Flip"


def test_a_model_with_leaf_modules_is_converted_again_from_its_architecture(tmp_path):
    """search -> architecture.json -> super network, plain network, bsnet.load, given the model's factory alone: the
    leaf modules the conversion needs are recorded as names and matched again, never imported."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    net = from_model(WithLeaves(), x, leaf_modules=[Flip, Gain])
    assert net.config == {"from_model": "WithLeaves", "input_shape": [3, 16, 16], "gate": "residual",
                          "leaf_modules": ["tests.user_layers.Flip", "tests.user_layers.Gain"]}
    search = BudgetedSearch(net, [parse_budget("70%")])
    g = torch.Generator().manual_seed(0)
    search.step(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
    found = search.found()
    bsnet.Architecture(net.name, net.config, dict(zip(net.gate_names, search.gates.probs().tolist())),
                       kept_names(found.mask, net.gate_names)).to_json(tmp_path / "architecture.json")
    arch = bsnet.Architecture.from_json(tmp_path)
    assert arch.supernet_config == net.config and len(arch.kept) < net.num_gates
    again = arch.supernet_network(WithLeaves)
    assert again.gate_names == net.gate_names and again.config == net.config
    plain = bsnet.export_module(net.eval(), arch).eval()
    assert bsnet.build_network(arch, WithLeaves).state_dict().keys() == plain.state_dict().keys()
    save_weights(plain, arch, tmp_path / "m.safetensors")
    loaded = bsnet.load(tmp_path / "m.safetensors", supernet=WithLeaves)
    with torch.no_grad():
        assert torch.equal(loaded(x), plain(x))


def test_as_supernet_takes_a_supernetwork_as_it_is_and_converts_a_model():
    model = WithLeaves()
    net = as_supernet(model, [3, 16, 16], leaf_modules=["Flip", "body1.1"])
    assert net.input_shape == (3, 16, 16) and net.config["leaf_modules"] == ["tests.user_layers.Flip", "body1.1"]
    assert as_supernet(net) is net and as_supernet(net, (3, 16, 16)) is net
    with pytest.raises(ValueError, match=r"takes inputs shaped \(3, 16, 16\), not \(3, 8, 8\)"):
        as_supernet(net, (3, 8, 8))
    with pytest.raises(ValueError, match="needs its input shape"):
        as_supernet(model)
    with pytest.raises(ValueError, match="got the callable WithLeaves"):
        as_supernet(WithLeaves, (3, 16, 16))  # the factory itself, not what it returns
    with pytest.raises(ValueError, match="got a str"):
        as_supernet("pkg.mod:factory", (3, 16, 16))


def test_the_package_and_the_function_share_a_name():
    import importlib

    import bsnet.from_model
    from bsnet.from_model import blocks, build, trace
    assert bsnet.from_model is from_model is build.from_model  # the attribute is the function
    assert importlib.import_module("bsnet.from_model").from_model is from_model
    assert callable(blocks.cuts) and callable(trace.capture)


def python_export(net, mask, tmp_path):
    from bsnet.export import export_python
    arch = bsnet.Architecture(None, {}, {g: 1.0 for g in net.gate_names},
                              [g for g, m in zip(net.gate_names, mask.tolist()) if m > 0.5])
    plain = bsnet.export_module(net, mask).eval()
    return plain, export_python(plain, arch, tmp_path / "variant.py")


def test_python_export_of_a_vit_variant_writes_its_parameters(tmp_path, check_generated_file):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    net = from_model(ViT().eval(), x).eval()
    mask = net.full_mask()
    mask[net.gate_names.index("blocks.1.attn")] = 0
    plain, path = python_export(net, mask, tmp_path)
    source = path.read_text()
    assert "cls_token = nn.Parameter(torch.zeros((1, 1, 32)))" in source and "blocks_1_attn_" not in source
    with torch.no_grad():
        check_generated_file(path, x, net(x, mask))


def test_python_export_imports_the_users_leaf_layers(tmp_path, check_generated_file):
    torch.manual_seed(0)
    model, x = WithLeaves().eval(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model.body1[1].weight.uniform_(0.5, 1.5)  # not the constructor's values: they must come from the weights
    net = from_model(model, x, leaf_modules=[Flip, Gain]).eval()
    plain, path = python_export(net, net.full_mask(), tmp_path)
    source = path.read_text()
    assert "from tests.user_layers import Flip, Gain" in source
    assert "tests.user_layers (Flip, Gain)" in source.split('"""')[1]  # said at its top
    assert "Gain(channels=8, threshold=-1.0, mode='x')" in source
    with torch.no_grad():
        check_generated_file(path, x, model(x))


def test_python_export_refuses_leaf_layers_it_cannot_rebuild(tmp_path):
    class Local(Flip):
        pass

    x = torch.randn(2, 3, 16, 16)
    for leaf, message in ((Opaque(8), r"body1_1 \(Opaque.*'size'.*self\.size"), (Local(), r"Local.*cannot import"),
                          (Act(8, fn=torch.sigmoid), r"body1_1 \(Act.*'fn' as a builtin_function")):
        model = WithLeaves()
        model.body1[1] = leaf
        net = from_model(model, x, leaf_modules=[type(leaf), Flip]).eval()
        with pytest.raises(ValueError, match=message):
            python_export(net, net.full_mask(), tmp_path)
        assert not (tmp_path / "variant.py").exists()


class Tied(nn.Module):
    """A residual block, and a head that calls a layer and also reads its weight directly (tied weights)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 8)

    def forward(self, x):
        h = x + self.body(x)
        return F.linear(self.head(h), self.head.weight)


def test_python_export_refuses_tied_weights_before_writing(tmp_path):
    net = from_model(Tied(), torch.randn(2, 8)).eval()
    with pytest.raises(ValueError, match=r"head\.weight.*tied weights"):
        python_export(net, net.full_mask(), tmp_path)
    assert not any(tmp_path.iterdir())


class Repeated(nn.Module):
    """A residual block the model runs twice (one set of weights, two branches), as weight-sharing models do."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.body(x)
        x = x + self.body(x)
        return self.head(x)


def test_a_layer_run_in_two_branches_is_counted_stored_and_exported_once(tmp_path, check_generated_file):
    torch.manual_seed(0)
    model, x = Repeated().eval(), torch.randn(2, 3, 8, 8)
    net = from_model(model, x).eval()
    assert net.gate_names == ["body.0", "body.0#2"]
    params = bsnet.ParamsCost()
    total, shared = (sum(p.numel() for p in m.parameters()) for m in (model, model.body))
    for kept, expected in (((1, 1), total), ((1, 0), total), ((0, 1), total), ((0, 0), total - shared)):
        assert float(params(net, torch.tensor(kept, dtype=torch.float32))) == expected
    lower, _ = params.cheapest(net)
    assert lower <= total - shared

    mask = torch.tensor([1.0, 0.0])
    plain = bsnet.export_module(net, mask).eval()
    assert sum(p.numel() for p in plain.parameters()) == total  # one copy of the shared layer, still shared
    arch = bsnet.Architecture(None, {}, {}, ["body.0", "body.0#2"])
    both = bsnet.export_module(net, net.full_mask()).eval()
    assert sum(p.numel() for p in both.parameters()) == total
    save_weights(both, arch, tmp_path / "m.safetensors")
    loaded = bsnet.load(tmp_path / "m.safetensors", supernet=lambda: from_model(Repeated(), x))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        loaded.get_parameter("body_0.body.0.weight").add_(1.0)  # still one tensor after the round trip
        assert torch.equal(loaded.get_parameter("body_0_2.body.0.weight"), loaded.get_parameter("body_0.body.0.weight"))

    plain, path = python_export(net, net.full_mask(), tmp_path)
    with torch.no_grad():
        check_generated_file(path, x, model(x))
