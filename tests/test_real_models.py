"""from_model on the models users have, as they are: a MobileNetV2- and a ResNet-50-style network written here, and
Hugging Face ViT, BERT and GPT-2 (tiny configurations built in the test, random weights, nothing downloaded), the
transformers captured by torch.export with their dict of inputs."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import bsnet
from bsnet.architecture import kept_names
from bsnet.budgets import parse_budget
from bsnet.costs import FlopsCost
from bsnet.export import export_module, save_weights
from bsnet.export.onnx import export_onnx
from bsnet.from_model import from_model
from bsnet.inputs import split
from bsnet.search import BudgetedSearch
from bsnet.width import kept_widths
from tests.test_from_model import BasicBlock

transformers = pytest.importorskip("transformers")


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, depthwise 3x3, 1x1 projection; a residual only where shapes match."""

    def __init__(self, c_in, c_out, stride, expand):
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes=10, setting=((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2))):  # t, c, n, s
        super().__init__()
        c = 8
        features = [nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(inplace=True))]
        for t, out, n, s in setting:
            for i in range(n):
                features.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(c, classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


class FunctionalBlock(BasicBlock):
    """A CIFAR basic block as users often write it: functional ReLUs, an empty Sequential as the identity shortcut."""

    def __init__(self, c_in, c_out, stride):
        super().__init__(c_in, c_out, stride)
        if isinstance(self.shortcut, nn.Identity):
            self.shortcut = nn.Sequential()

    def forward(self, x):
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class FunctionalResNet(nn.Module):
    def __init__(self, widths=(8, 16), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layers = nn.Sequential(FunctionalBlock(widths[0], widths[0], 1), FunctionalBlock(widths[0], widths[1], 2),
                                    FunctionalBlock(widths[1], widths[1], 1))
        self.fc = nn.Linear(widths[1], classes)

    def forward(self, x):
        out = self.layers(nn.functional.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class Bottleneck(nn.Module):
    def __init__(self, c_in, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != 4 * width:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, 4 * width, 1, stride, bias=False),
                                            nn.BatchNorm2d(4 * width))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    """ResNet-50's shape at toy size: bottleneck blocks, a projection where the shape changes."""

    def __init__(self, widths=(4, 8), blocks=(2, 2), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        c = 8
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layer = []
            for j in range(n):
                layer.append(Bottleneck(c, w, 2 if i and not j else 1))
                c = 4 * w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ShapeBranching(nn.Module):
    """Python torch.fx cannot follow (a branch on a size) but torch.export can, with BatchNorm and dropout."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Conv2d(8, 8, 1, bias=False))  # captured as aten.conv2d(h, w): no other argument
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = self.stem(x)
        if h.shape[-1] > 4:  # sizes are Proxies to symbolic torch.fx
            h = h + self.body(h)
        return self.head(h.mean((2, 3)))


def images(batch=3):
    return torch.randn(batch, 3, 32, 32)


def tokens(batch=3):
    ids = torch.randint(1, 100, (batch, 16))
    mask = torch.ones(batch, 16, dtype=torch.long)
    mask[0, 10:] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}


def hf_vit():
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=10)
    return transformers.ViTForImageClassification(config)


def hf_bert():
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return transformers.BertForSequenceClassification(config)


def hf_gpt2():
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=3,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return transformers.GPT2ForSequenceClassification(config)


def randomised(model):
    """Trained-looking BatchNorm statistics, so that eval-mode comparisons mean something."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


# family -> (model factory, example inputs, the residual gates expected)
FAMILIES = {
    "mobilenetv2": (MobileNetV2, images, ["features.1.conv", "features.3.conv", "features.5.conv"]),
    "resnet50": (ResNet50, images, ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]),
    "shape-branching": (ShapeBranching, images, ["body"]),
    "hf-vit": (hf_vit, images, ["vit.layers.0.attention", "vit.layers.0.mlp", "vit.layers.1.attention",
                                "vit.layers.1.mlp"]),
    "hf-bert": (hf_bert, tokens, ["bert.encoder.layer.0.attention", "bert.encoder.layer.0.output",
                                  "bert.encoder.layer.1.attention", "bert.encoder.layer.1.output"]),
    "hf-gpt2": (hf_gpt2, tokens, ["transformer.h.0.attn", "transformer.h.0.mlp", "transformer.h.1.attn",
                                  "transformer.h.1.mlp"]),
}


def convert(model, inputs, width_groups=1):
    """from_model as a user calls it: a tensor positionally, a text model's inputs by keyword."""
    if isinstance(inputs, dict):
        return from_model(model, (), inputs, width_groups=width_groups)
    return from_model(model, inputs, width_groups=width_groups)


def predict(model, inputs):
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    factory, make_inputs, gates = FAMILIES[request.param]
    torch.manual_seed(0)
    model = randomised(factory())
    inputs = make_inputs()
    return model, convert(model, inputs).eval(), inputs, gates


def half_mask(net):
    """Every other gate dropped."""
    mask = net.full_mask()
    mask[::2] = 0
    return mask


def test_all_ones_mask_is_the_model(family):
    model, net, inputs, _ = family
    with torch.no_grad():
        assert (net(inputs, net.full_mask()) - predict(model, inputs)).abs().max() <= 1e-5


def test_every_residual_branch_is_gated(family):
    _, net, _, gates = family
    assert net.gate_names == gates


def test_grouped_and_per_example_masks_give_each_example_its_architecture(family):
    _, net, inputs, _ = family
    masks = torch.stack([half_mask(net), net.full_mask(), 1 - half_mask(net)])
    with torch.no_grad():
        alone = torch.cat([net(x, m) for x, m in zip(split(inputs, 3), masks)])
        assert (net(inputs, masks, grouped=True) - alone).abs().max() <= 1e-5
        assert (net(inputs, masks) - alone).abs().max() <= 1e-5


@pytest.mark.parametrize("width_groups", [1, 4])
def test_twenty_search_steps_under_half_the_flops_move_the_gates_and_lambda(family, width_groups, request):
    model, net, _, _ = family
    splits = request.node.callspec.params["family"] != "hf-gpt2"  # nothing to split there
    if width_groups > 1 and not splits:
        pytest.skip("no layer pair or attention to split")
    torch.manual_seed(0)
    inputs = net.example_inputs(8)  # 4 architectures of 2 examples per step
    inputs = {k: torch.randint(1, 100, v.shape) for k, v in inputs.items()} if isinstance(inputs, dict) \
        else torch.randn(inputs.shape)
    net = convert(copy.deepcopy(model), inputs, width_groups)
    flops = FlopsCost()
    # Half the FLOPs, or as little as the gates allow (MobileNetV2's residual branches are its cheap part).
    cheapest = float(flops(net, torch.zeros(net.num_gates)) / flops(net, net.full_mask()))
    search = BudgetedSearch(net, [parse_budget(f"{max(50, round(100 * cheapest) + 5)}%")])
    before = search.gates.probs().detach().clone()
    targets = torch.randint(0, net.profile[net.graph.output].out_shape[-1], (8,))
    costs = [search.step(inputs, targets).costs[0] for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(costs))) and max(costs) > 0
    assert not torch.equal(search.gates.probs().detach(), before)
    assert float(search.lambdas[0]) != 0.0


def test_a_variant_exports_with_fewer_parameters_equal_outputs_and_its_counted_flops(family, tmp_path):
    model, net, inputs, _ = family
    mask = half_mask(net)
    plain = export_module(net, mask).eval()
    with torch.no_grad():
        assert (plain(inputs) - net(inputs, mask)).abs().max() <= 1e-5
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        plain(net.example_inputs(1))
    assert float(FlopsCost()(net, mask)) == pytest.approx(counter.get_total_flops(), rel=0.01)
    path = export_onnx(plain, net.input_shape, tmp_path / "variant.onnx", input_spec=net.input_spec)  # ORT-checked
    assert path.stat().st_size > 0


def test_dropout_and_batchnorm_follow_the_training_flag_after_torch_export():
    torch.manual_seed(0)
    model = randomised(ShapeBranching())
    x = images(4)
    net = from_model(model, x)
    assert net.input_spec is None and "Start" in type(net.blocks["input"]).__name__
    running = model.body[1].running_mean.clone()
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x), net(x)) and torch.equal(model.body[1].running_mean, running)
        net.train()
        assert not torch.equal(net(x), net(x))  # dropout is on
    assert not torch.equal(model.body[1].running_mean, running)  # the model's own BatchNorm learned the batches


def test_a_text_model_is_rebuilt_from_its_architecture_file(tmp_path):
    torch.manual_seed(0)
    model, inputs = randomised(hf_gpt2()), tokens()
    net = convert(model, inputs).eval()
    assert net.config["inputs"] == {"input_ids": ["int64", [16]], "attention_mask": ["int64", [16]]}
    arch = bsnet.Architecture(None, net.config, {g: 1.0 for g in net.gate_names}, net.gate_names[1:])
    arch.to_json(tmp_path / "architecture.json")
    again = bsnet.Architecture.from_json(tmp_path / "architecture.json").supernet_network(model).eval()
    mask = arch.mask(again.gate_names)
    with torch.no_grad():
        assert (again(inputs, mask) - net(inputs, mask)).abs().max() <= 1e-6


def test_a_model_neither_capture_follows_is_named_with_both_reasons():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            h = self.stem(x)
            # data-dependent: neither torch.fx nor torch.export can follow it
            if h.sum() > 0:
                h = -h
            return h + h.relu()

    with pytest.raises(ValueError, match=r"torch\.fx.*`if h\.sum\(\) > 0:`.*torch\.export.*data-dependent"):
        from_model(Untraceable(), images())


def digits_vit():
    """A factory for `--model`: a Hugging Face ViT for 1x8x8 digits."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=10)
    return transformers.ViTForImageClassification(config)


def test_a_hugging_face_vit_goes_through_every_command(tmp_path):
    from bsnet.cli import main
    out, model = tmp_path / "run", "tests.test_real_models:digits_vit"
    assert main(["search", "--model", model, "--budget", "60%", "--epochs", "1", "--finetune-epochs", "0",
                 "--out", str(out)]) == 0
    arch = bsnet.Architecture.from_json(out / "architecture.json")
    assert arch.supernet_config["input_shape"] == [1, 8, 8] and arch.kept
    assert arch.cost["flops"] <= 0.6 * arch.full_cost["flops"] * (1 + 1e-9)
    assert main(["export", str(out), "--format", "pt", "--model", model]) == 0
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():  # the exported weights are the run's
        assert torch.equal(bsnet.load(out / "export" / "model.safetensors", supernet=digits_vit)(x),
                           bsnet.load(out, supernet=digits_vit).eval()(x))
    for command in (["export", str(out), "--format", "onnx"], ["eval", str(out)], ["show", str(out)],
                    ["train", str(out), "--epochs", "1"]):
        assert main([*command, "--model", model]) == 0, command
    assert (out / "final" / "result.json").exists()


# ---- width groups: the first layer pair of each residual branch split into gated channel groups ------------------
def width_families():
    from tests.test_from_model import ResNet18, ViT
    return {"resnet18": (ResNet18, images), "functional-resnet": (FunctionalResNet, images), "vit": (ViT, images),
            "resnet50": (ResNet50, images),
            "mobilenetv2": (MobileNetV2, images), "shape-branching": (ShapeBranching, images),
            "hf-vit": (hf_vit, images), "hf-bert": (hf_bert, tokens), "hf-gpt2": (hf_gpt2, tokens)}


@pytest.mark.parametrize("name", ["resnet18", "functional-resnet", "vit", "resnet50", "mobilenetv2",
                                  "shape-branching", "hf-vit", "hf-bert", "hf-gpt2"])
def test_width_groups_split_each_branchs_first_layer_pair_exactly(name, tmp_path):
    torch.manual_seed(0)
    factory, make_inputs = width_families()[name]
    model, x = randomised(factory()), make_inputs(3)
    plain_net = convert(model, x)
    net = (from_model(model, (), x, width_groups=4) if isinstance(x, dict) else
           from_model(model, x, width_groups=4)).eval()
    assert net.config["width_groups"] == 4
    splits = net.graph.width_splits
    assert splits
    for s in splits:  # a pair's 4 groups `<branch>.w<j>`, or one group per head `<branch>.h<j>`, beside the branch
        branch, _, kind = s.name.rpartition(".")
        assert branch in plain_net.gate_names and kind in ("width", "heads")
        assert [net.gate_names[net.graph.in_edges(n)[0].gate] for n in s.groups] == \
            [f"{branch}.{kind[0]}{j}" for j in range(len(s.groups))]
        assert len(s.groups) == (4 if kind == "width" else model.config.num_attention_heads)
    assert any(s.name.endswith(".heads") for s in splits) == name.startswith("hf-")
    with torch.no_grad():
        assert (net(x, net.full_mask()) - predict(model, x)).abs().max() <= 1e-5  # an exact rewrite
    mask = net.full_mask()
    mask[[net.graph.in_edges(s.groups[j])[0].gate for s in splits for j in (1, 3)]] = 0
    plain = export_module(net, mask).eval()
    with torch.no_grad():
        assert (plain(x) - net(x, mask)).abs().max() <= 1e-5
        assert (net(x, mask.expand(3, -1)) - net(x, mask)).abs().max() <= 1e-5  # the reference mode agrees
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        plain(net.example_inputs(1))
    assert float(FlopsCost()(net, mask)) == pytest.approx(counter.get_total_flops(), rel=0.01)
    export_onnx(plain, net.input_shape, tmp_path / "variant.onnx", input_spec=net.input_spec)  # ORT-checked
    arch = bsnet.Architecture(None, net.config, dict.fromkeys(net.gate_names, 0.5), kept_names(mask, net.gate_names))
    save_weights(plain, arch, tmp_path / "variant.safetensors")  # the pt format: rebuilt from the model, loaded
    with torch.no_grad():
        assert (bsnet.load(tmp_path / "variant.safetensors", supernet=model)(x) - plain(x)).abs().max() <= 1e-5


def test_width_groups_are_refused_where_they_cannot_split():
    with pytest.raises(ValueError, match=r"layer1\.0: its 8 hidden channels do not divide into 3 width groups"):
        from_model(width_families()["resnet18"][0](), images(), width_groups=3)
    with pytest.raises(ValueError, match="width_groups must be an integer >= 1"):
        from_model(ResNet50(), images(), width_groups=0)


@pytest.mark.parametrize("name", ["resnet18", "hf-vit"])
def test_gate_width_keeps_every_branch_at_one_group_at_least(name, tmp_path):
    torch.manual_seed(0)
    factory, make_inputs = width_families()[name]
    model, x = randomised(factory()), make_inputs(3)
    net = (from_model(model, (), x, width_groups=4, gate="width") if isinstance(x, dict) else
           from_model(model, x, width_groups=4, gate="width")).eval()
    splits = net.graph.width_splits
    assert net.config["gate"] == "width" and splits
    assert net.gate_names == [f"{s.name.rpartition('.')[0]}.{s.name.rpartition('.')[2][0]}{j}"
                              for s in splits for j in range(1, len(s.groups))]  # no branch gates, no first groups
    none = torch.zeros(net.num_gates)
    assert all(kept == total // len(s.groups) for s, (kept, total) in zip(splits, kept_widths(net, none).values()))
    plain = export_module(net, none).eval()
    with torch.no_grad():
        assert (net(x, net.full_mask()) - predict(model, x)).abs().max() <= 1e-5
        assert (plain(x) - net(x, none)).abs().max() <= 1e-5
    arch = bsnet.Architecture(None, net.config, dict.fromkeys(net.gate_names, 0.5), [])
    save_weights(plain, arch, tmp_path / "variant.safetensors")  # rebuilt from the model with gate="width"
    with torch.no_grad():
        assert (bsnet.load(tmp_path / "variant.safetensors", supernet=model)(x) - plain(x)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match=r"gate='width' gates only the width groups: it needs width_groups > 1"):
        from_model(width_families()["resnet18"][0](), images(), gate="width")

class FixedHeadsLayer(nn.Module):
    """A pre-norm transformer layer whose attention code fixes its head count (4) instead of reading it from the
    weights: `view(B, T, 4, D // 4)` fails on fewer heads, `view(B, T, 4, -1)` silently changes the head size."""

    def __init__(self, dim=16, fail=True):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.fail = fail

    def heads(self, t):
        b, n, d = t.shape
        return (t.view(b, n, 4, d // 4) if self.fail else t.view(b, n, 4, -1)).transpose(1, 2)

    def forward(self, x):
        h = self.norm1(x)
        a = nn.functional.scaled_dot_product_attention(self.heads(self.q(h)), self.heads(self.k(h)),
                                                       self.heads(self.v(h)))
        x = x + self.o(a.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))


class FixedHeads(nn.Module):
    def __init__(self, fail=True):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.layers = nn.Sequential(FixedHeadsLayer(fail=fail), FixedHeadsLayer(fail=fail))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        if x.dim() == 2:  # a branch on a size: torch.fx cannot follow it, torch.export captures it
            x = x.unsqueeze(0)
        return self.head(self.layers(self.embed(x)).mean(1))


@pytest.mark.parametrize("fail", [True, False], ids=["fails-on-fewer-heads", "changes-the-head-size"])
def test_attention_of_a_fixed_head_count_keeps_one_gate_and_its_mlp_is_split(fail):
    torch.manual_seed(0)
    model = FixedHeads(fail).eval()
    x = torch.randn(3, 5, 8)
    with pytest.warns(UserWarning, match=r"the heads of layers\.0\.\w+, layers\.1\.\w+ in FixedHeads are not "
                                         r"split: its attention code fixes the head count"):
        net = from_model(model, x, width_groups=2).eval()
    assert not any(".h" in g for g in net.gate_names)
    assert sum(".w" in g for g in net.gate_names) == 4  # each layer's MLP in 2 groups
    with torch.no_grad():
        assert (net(x, net.full_mask()) - model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["hf-bert", "hf-gpt2", "hf-vit"])
def test_a_variant_without_whole_layers_is_a_hugging_face_model_again(name, tmp_path):
    from bsnet.export import save_pretrained
    factory, make_inputs, _ = FAMILIES[name]
    torch.manual_seed(0)
    model, inputs = factory().eval(), make_inputs()
    with torch.no_grad():  # trained-like: LayerNorms that are not the identity
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net = convert(model, inputs).eval()
    mask = net.full_mask()
    mask[:2] = 0  # layer 0: its attention and its MLP
    if name == "hf-bert":  # post-norm: the super network keeps layer 0's LayerNorms, a BERT of fewer layers cannot
        with pytest.raises(ValueError, match="computes other outputs than the variant .* post-norm layer"):
            save_pretrained(model, net, mask, tmp_path / "variant")
        assert not (tmp_path / "variant").exists()
        return
    save_pretrained(model, net, mask, tmp_path / "variant")
    back = type(model).from_pretrained(tmp_path / "variant").eval()
    assert back.config.num_hidden_layers == model.config.num_hidden_layers - 1
    with torch.no_grad():
        assert (predict(back, inputs) - net(inputs, mask)).abs().max() <= 1e-5
    mask[1] = 1  # the MLP of layer 0 kept alone: no config says that
    with pytest.raises(ValueError, match="keeps part of itself"):
        save_pretrained(model, net, mask, tmp_path / "half")
    assert not (tmp_path / "half").exists()


def mlp_width(config):
    return getattr(config, "intermediate_size", None) or config.n_inner or 4 * config.n_embd  # GPT-2: n_inner


@pytest.mark.parametrize("name", ["hf-bert", "hf-vit", "hf-gpt2"])
def test_a_variant_of_one_mlp_width_is_a_hugging_face_model_again(name, tmp_path):
    """Width groups dropped alike in every layer's MLP (and a whole layer dropped): the config's intermediate size
    says it, and the super network's trained group weights are what is written."""
    from bsnet.export import save_pretrained
    factory, make_inputs, _ = FAMILIES[name]
    torch.manual_seed(0)
    model, inputs = factory().eval(), make_inputs()
    net = convert(model, inputs, width_groups=4).eval()
    with torch.no_grad():  # the groups are copies: a change to them must reach the written model
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    gates = net.gate_names
    mask = net.full_mask()
    # ViT and GPT-2 (pre-norm) lose their first layer too; BERT's post-norm layers cannot be removed (the test above)
    layer = gates[0].rsplit(".", 2)[0] if name != "hf-bert" else "none"
    mlp = sorted({g.rsplit(".", 1)[0] for g in gates if g.rsplit(".", 1)[1] in ("w0", "w1", "w2", "w3")})
    for g in gates:
        if g.startswith(f"{layer}.") or g.rsplit(".", 1)[-1] in ("w1", "w3"):
            mask[gates.index(g)] = 0
    save_pretrained(model, net, mask, tmp_path / "variant")
    back = type(model).from_pretrained(tmp_path / "variant").eval()
    assert mlp_width(back.config) == mlp_width(model.config) // 2
    assert back.config.num_hidden_layers == model.config.num_hidden_layers - (name != "hf-bert")
    with torch.no_grad():
        assert (predict(back, inputs) - net(inputs, mask)).abs().max() <= 1e-5
    uneven = net.full_mask()
    uneven[gates.index(f"{mlp[-1]}.w1")] = 0  # the last layer's MLP one group narrower than the others'
    with pytest.raises(ValueError, match=r"MLP widths differ between layers \(\d+, \d+\)"):
        save_pretrained(model, net, uneven, tmp_path / "uneven")
    fewer_heads = net.full_mask()
    fewer_heads[gates.index(next(g for g in gates if g.endswith(".h0")))] = 0
    with pytest.raises(ValueError, match="keep fewer heads: a .*Config derives a head's size from the hidden size"):
        save_pretrained(model, net, fewer_heads, tmp_path / "heads")
    assert not (tmp_path / "uneven").exists() and not (tmp_path / "heads").exists()


def test_a_text_network_refuses_inputs_of_other_names_or_lengths_in_one_line():
    torch.manual_seed(0)
    inputs = tokens()
    net = convert(hf_bert().eval(), inputs)
    short = {k: v[:, :8] for k, v in inputs.items()}  # the program was captured at length 16
    with pytest.raises(ValueError, match=r"input 'input_ids' must be shaped \(batch, 16\), got \(3, 8\)"):
        net(short)
    with pytest.raises(ValueError, match="takes a dict of input_ids, attention_mask"):
        net({"input_ids": inputs["input_ids"]})
    with pytest.raises(ValueError, match="iterator, used up after one pass"):
        bsnet.fit(hf_bert(), (), inputs, budgets=["50%"], train=iter([(inputs, torch.zeros(3, dtype=torch.long))]))
