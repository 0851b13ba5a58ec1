"""`bsnet search --model package.module:factory` on a user's own network, then export, train and eval with it."""
import json

import torch
from torch import nn

import bsnet
from bsnet.cli import main


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class SmallResNet(nn.Module):
    """A model of the user's own, for 1x8x8 digits: a stem, four residual blocks, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(*[Block(8) for _ in range(4)])
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def small_resnet() -> nn.Module:
    """A factory as users write them."""
    torch.manual_seed(0)
    return SmallResNet()


def test_search_a_users_model_under_half_its_flops(tmp_path, capsys):
    out = tmp_path / "run"
    model = "tests.test_cli_model:small_resnet"
    assert main(["search", "--model", model, "--budget", "50%", "--epochs", "2", "--finetune-epochs", "1",
                 "--out", str(out)]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["supernet"] is None and arch["cost"]["flops"] <= 0.5 * arch["full_cost"]["flops"]
    assert arch["supernet_config"]["input_shape"] == [1, 8, 8]
    # the factory is passed again: a run directory never makes bsnet import code by itself
    assert main(["export", str(out), "--format", "pt"]) == 2
    assert "factory" in capsys.readouterr().err
    for fmt in ("pt", "onnx", "python"):
        assert main(["export", str(out), "--format", fmt, "--model", model]) == 0
    plain = bsnet.load(out / "export" / "model.safetensors", supernet=small_resnet)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain(x), bsnet.load(out, supernet=small_resnet)(x))
    assert main(["eval", str(out), "--model", model]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert abs(report["flops"] - arch["cost"]["flops"]) <= 0.01 * arch["cost"]["flops"]


class FlippedResNet(SmallResNet):
    """A model with a layer torch.fx cannot trace (data-dependent control flow): it needs a leaf module."""

    def __init__(self) -> None:
        super().__init__()
        from tests.user_layers import Flip
        self.stem.append(Flip())


def flipped_resnet() -> nn.Module:
    torch.manual_seed(0)
    return FlippedResNet()


def small_fabric() -> bsnet.SuperNetwork:
    """A SuperNetwork factory: `--model` takes it in every command, search included."""
    torch.manual_seed(0)
    return bsnet.create_supernet("cnf", layers=3, channels=4, image_size=8, in_channels=1, num_classes=10)


def test_a_model_that_needs_a_leaf_module_goes_through_every_command(tmp_path, capsys):
    out, model = tmp_path / "run", "tests.test_cli_model:flipped_resnet"
    args = ["search", "--model", model, "--budget", "60%", "--epochs", "1", "--finetune-epochs", "0"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Flip" in err and "leaf" in err
    assert main([*args, "--leaf-modules", "tests.user_layers.Flip", "--out", str(out)]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["supernet_config"]["leaf_modules"] == ["tests.user_layers.Flip"]
    for command in (["export", str(out), "--format", "pt"], ["eval", str(out)],
                    ["show", str(out), "--draw", str(tmp_path / "a.png")], ["train", str(out), "--epochs", "1"]):
        assert main([*command, "--model", model]) == 0, command
    assert (tmp_path / "a.png").exists() and (out / "final" / "result.json").exists()


def test_model_means_the_same_in_search_a_supernetwork_factory(tmp_path):
    out, model = tmp_path / "run", "tests.test_cli_model:small_fabric"
    assert main(["search", "--model", model, "--epochs", "1", "--finetune-epochs", "0", "--out", str(out)]) == 0
    assert main(["export", str(out), "--format", "pt", "--model", model]) == 0
    assert json.loads((out / "architecture.json").read_text())["supernet"] == "cnf"


def test_width_groups_split_a_users_model_in_every_command(tmp_path, capsys):
    out, model = tmp_path / "run", "tests.test_cli_model:small_resnet"
    assert main(["search", "--model", model, "--width-groups", "2", "--budget", "50%", "--epochs", "1",
                 "--finetune-epochs", "0", "--out", str(out)]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["supernet_config"]["width_groups"] == 2 and arch["cost"]["flops"] <= 0.5 * arch["full_cost"]["flops"]
    assert "blocks.0.body.w0" in arch["gates"] and arch["widths"]  # group gates beside each block's own
    capsys.readouterr()
    assert main(["show", str(out), "--model", model]) == 0
    assert "kept widths:" in capsys.readouterr().out
    for fmt in ("pt", "python"):
        assert main(["export", str(out), "--format", fmt, "--model", model]) == 0
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():  # rebuilt from what the run recorded, width groups included
        assert torch.equal(bsnet.load(out / "export" / "model.safetensors", supernet=small_resnet)(x),
                           bsnet.load(out, supernet=small_resnet)(x))
