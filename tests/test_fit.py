"""bsnet.fit: the whole job on a user's own model in one call, with the steps of `bsnet search --model`."""
import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bsnet
from bsnet.config import RunConfig
from bsnet.data import batches, load_dataset
from bsnet.pipeline import run_search
from bsnet.train import accuracy
from tests.test_from_model import ResNet18


def digits_cnn() -> torch.nn.Module:
    """A small ResNet for the 8x8 digits (1 channel in, 10 classes)."""
    net = ResNet18(widths=(8, 8, 16, 16))
    net.conv1 = torch.nn.Conv2d(1, 8, 3, 1, 1, bias=False)
    return net


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", val_size=0.2, seed=0)
    return [b for b in batches(data.train, 64, drop_last=True)], list(batches(data.val, 256))


@pytest.mark.parametrize("width_groups", [1, 2])
def test_fit_returns_a_fine_tuned_variant_within_the_budget_and_its_report(digits, width_groups):
    train, val = digits
    torch.manual_seed(0)
    model = digits_cnn()
    before = copy.deepcopy(model.state_dict())
    labels = []
    def progress(label, total):
        labels.append((label, total))
        return lambda info="": None
    variant, report = bsnet.fit(model, torch.randn(2, 1, 8, 8), budgets=["50%"], train=train, val=val, epochs=2,
                                width_groups=width_groups, progress=progress)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model untouched
    assert report.fraction() <= 0.5 + 1e-9 and report.architecture.kept
    if width_groups > 1:
        assert any(".w" in g for g in report.architecture.gates)
    with FlopCounterMode(display=False) as counter:
        variant(torch.randn(1, 1, 8, 8))
    assert counter.get_total_flops() == pytest.approx(report.cost["flops"], rel=0.01)
    # the exported variant is the fine-tuned network: its accuracy is the one reported
    assert accuracy(variant, val) == pytest.approx(report.val_acc, abs=1e-6)
    assert [r["epoch"] for r in report.history] == [0, 1] and report.val_acc_model is not None
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in report.history)
    assert report.history[0]["lambda"] != report.history[1]["lambda"]
    assert labels == [("epoch 1/2", len(train)), ("epoch 2/2", len(train)), ("fine-tune", len(train))]


def test_fit_and_the_command_line_search_take_the_same_steps(tmp_path):
    """`run_search --model` and `fit` given the batches that run draws (`train(epoch)`: shuffled from the pass's
    number as `bsnet search` does) give the same λ, gates and architecture: one code path (`fit`'s variant then starts
    from the model's weights, the command's from the search's)."""
    data = load_dataset("digits", val_size=0.2, seed=0)
    assert data.augment is None  # so the BatchNorm passes (not augmented) are the same batches too
    config = RunConfig(dataset="digits", budget=["50%"], epochs=3, finetune_epochs=1, batch_size=64, val_size=0.2,
                       seed=0, search_config={"lr": 0.02})
    torch.manual_seed(0)
    model = digits_cnn()
    arch, run_dir = run_search(config, tmp_path / "run", model=copy.deepcopy(model))

    def train(epoch):
        g = torch.Generator().manual_seed(epoch)  # SearchRun.batches: seed * 100_003 + epoch, seed 0
        return batches(data.train, 64, shuffle=True, generator=g, drop_last=True)
    variant, report = bsnet.fit(model, torch.randn(2, 1, 8, 8), budgets=["50%"], train=train,
                                val=list(batches(data.val, 256)), epochs=3, lr=0.02)
    recorded = bsnet.runs.read_metrics(run_dir / "metrics.jsonl")
    assert recorded[0]["lambda"] != recorded[-1]["lambda"]
    for mine, theirs in zip(report.history, recorded, strict=True):
        assert mine["lambda"] == pytest.approx(theirs["lambda"], rel=1e-5)
        assert mine["val_acc"] == pytest.approx(theirs["val_acc"], abs=1e-6)
    assert report.architecture.gates == pytest.approx(arch.gates, abs=1e-5)
    assert any(abs(p - arch.gates["layer1.0"]) > 1e-3 for p in arch.gates.values())  # the gates moved apart
    assert report.architecture.kept == arch.kept and report.cost == pytest.approx(arch.cost)


def test_the_variant_starts_from_the_models_weights_with_each_pairs_strongest_channels(digits):
    train, _ = digits
    torch.manual_seed(0)
    model = digits_cnn()
    variant, report = bsnet.fit(model, torch.randn(2, 1, 8, 8), budgets=["30%"], train=train, epochs=1,
                                finetune_epochs=0, width_groups=2)
    assert torch.equal(variant.get_submodule("input.conv1").weight, model.conv1.weight)  # not the search's weights
    thinned = 0
    for name, pair in variant.named_children():
        if not name.endswith("_width"):
            continue
        first, second = pair.get_submodule("0"), pair.get_submodule("3")
        block = model.get_submodule(name.removesuffix("_width").replace("_", "."))
        norm = (block.conv1.weight.pow(2).sum((1, 2, 3)) + block.bn1.weight.pow(2) + block.bn1.bias.pow(2)
                + block.conv2.weight.pow(2).sum((0, 2, 3)))
        strongest = norm.topk(first.out_channels).indices.sort().values
        assert torch.equal(first.weight, block.conv1.weight[strongest])
        assert torch.equal(second.weight, block.conv2.weight[:, strongest])
        thinned += first.out_channels < block.conv1.out_channels
    assert thinned, report.architecture.widths  # a pair kept part of its channels: the strongest


def test_fit_refuses_a_one_shot_iterator_and_bad_epochs(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="iterator, used up after one pass"):
        bsnet.fit(digits_cnn(), torch.randn(2, 1, 8, 8), budgets=["50%"], train=iter(train))
    with pytest.raises(ValueError, match="epochs >= 1"):
        bsnet.fit(digits_cnn(), torch.randn(2, 1, 8, 8), budgets=["50%"], train=train, epochs=0)
    with pytest.raises(ValueError, match="train holds no batches"):
        bsnet.fit(digits_cnn(), torch.randn(2, 1, 8, 8), budgets=["50%"], train=[])
    with pytest.raises(ValueError, match="cuda:99"):  # absent on every machine: one error before any work
        bsnet.fit(digits_cnn(), torch.randn(2, 1, 8, 8), budgets=["50%"], train=train, device="cuda:99")


def test_fit_takes_a_function_of_no_argument_for_its_batches(digits):
    train, val = digits
    calls = []
    def batches():
        calls.append(1)
        return train[:3]
    _, report = bsnet.fit(digits_cnn(), torch.randn(2, 1, 8, 8), budgets=["50%"], train=batches, val=val,
                          epochs=1, finetune_epochs=0)
    assert len(calls) >= 2 and report.fraction() <= 0.5 + 1e-9  # the count, the epoch, the BatchNorm pass
