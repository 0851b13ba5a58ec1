"""The CUDA path: search, training, the CLI and latency profiling on `cuda` (skipped where no GPU is visible; on a GPU
machine, `pytest tests/test_cuda.py`)."""
import json

import pytest
import torch
import torch.distributed as dist

import bsnet
from bsnet.budgets import parse_budget
from bsnet.cli import main
from bsnet.data import batches, load_dataset
from bsnet.search import BudgetedSearch, SearchConfig
from bsnet.train import accuracy
from tests.cli_options import TINY
from tests.test_distributed import one_rank_collectives

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FABRIC = dict(layers=4, channels=8, image_size=8, in_channels=1, num_classes=10)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("cfg", [SearchConfig(), SearchConfig(sampling="per_example", baseline="mean")],
                         ids=["grouped", "per_example"])
def test_search_on_cuda_learns_and_meets_the_budget(digits, cfg):
    torch.manual_seed(0)
    net = bsnet.create_supernet("cnf", **FABRIC)
    search = BudgetedSearch(net, [parse_budget("30%")], cfg, steps_per_epoch=21, epochs=6, device="cuda")
    assert next(net.parameters()).is_cuda and search.gates.logits.device.type == "cpu"
    first = search.expected_costs()[0]
    for epoch in range(6):
        for x, y in batches(digits.train, 64, shuffle=True, generator=torch.Generator().manual_seed(epoch)):
            assert not search.step(x, y).skipped
    assert search.expected_costs()[0] < first
    found = search.found()
    assert search.within_budget(found.mask)
    assert accuracy(search.net, batches(digits.val, 256), "cuda", mask=found.mask) > 0.3  # chance: 0.1


def test_forward_on_cuda_matches_the_cpu(small_net):
    small_net.eval()
    x = torch.randn(6, *small_net.input_shape)
    masks = small_net.graph.prune(torch.bernoulli(torch.full((3, small_net.num_gates), 0.7),
                                                  generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        want = small_net(x, masks, grouped=True)
        got = small_net.cuda()(x.cuda(), masks.cuda(), grouped=True)
    assert torch.allclose(got.cpu(), want, atol=1e-4)


def test_fused_width_groups_train_on_cuda_as_on_the_cpu():
    """The live groups of a width split run as one layer on the GPU too: a grouped training step's outputs,
    gradients and BatchNorm statistics match the CPU's."""
    import copy
    torch.manual_seed(0)
    cpu = bsnet.create_supernet("resnet_fabric", blocks=2, channels=[4, 8, 8], image_size=8, width_groups=4,
                                width_multiplier=2.0)
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(8, *cpu.input_shape)
    masks = cpu.graph.prune(torch.bernoulli(torch.full((4, cpu.num_gates), 0.6),
                                            generator=torch.Generator().manual_seed(3)))
    for net, xs in ((cpu, x), (gpu, x.cuda())):
        net.train()(xs, masks, grouped=True).pow(2).mean().backward()
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad.cpu(), atol=1e-4, rtol=1e-3), name
    for a, b in zip(cpu.buffers(), gpu.buffers()):
        assert torch.allclose(a.double(), b.cpu().double(), atol=1e-4)


def test_cli_search_train_and_export_on_cuda(tmp_path):
    out = tmp_path / "r"
    assert main(["search", *TINY, "--device", "cuda", "--out", str(out)]) == 0
    assert 0.1 < json.loads((out / "architecture.json").read_text())["metrics"]["test_acc"] <= 1.0
    assert main(["train", str(out), "--epochs", "2", "--device", "cuda"]) == 0
    assert json.loads((out / "final" / "result.json").read_text())["test_acc"] > 0.3
    assert main(["export", str(out), "--format", "onnx"]) == 0 and (out / "export" / "model.onnx").stat().st_size > 0


def test_latency_profile_on_cuda_feeds_a_latency_budget(tmp_path):
    table = tmp_path / "gpu.json"
    assert main(["profile", "--supernet", "cnf", "--supernet-config", "layers=3", "channels=8", "image_size=8",
                 "in_channels=1", "--device", "cuda", "--out", str(table)]) == 0
    doc = json.loads(table.read_text())
    assert doc["device"].startswith("cuda:") and all(t > 0 for t in doc["nodes"].values())
    full = sum(doc["nodes"].values())
    out = tmp_path / "lat"
    assert main(["search", *TINY, "--budget", f"latency={0.6 * full * 1e3:.6f}ms", "--latency-table", str(table),
                 "--out", str(out)]) == 0
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["cost"]["latency"] <= arch["budget"]["latency"]


@pytest.mark.skipif(not dist.is_nccl_available(), reason="needs nccl")
def test_collectives_over_nccl_carry_cuda_tensors(tmp_path):
    # One rank is enough: nccl refuses a CPU tensor whatever the world size.
    torch.cuda.set_device(0)
    one_rank_collectives("nccl", tmp_path)


def test_fit_of_a_hugging_face_model_with_heads_and_widths_runs_on_cuda():
    """Captured on the GPU (a captured program makes its position ids and masks on its capture's device)."""
    from tests.test_real_models import hf_gpt2, tokens
    torch.manual_seed(0)
    batch = tokens(4)
    train = [(batch, torch.randint(0, 3, (4,))) for _ in range(3)]
    variant, report = bsnet.fit(hf_gpt2(), (), batch, budgets=["50%"], train=train, val=train, epochs=1,
                                width_groups=2, device="cuda")
    assert any(".h" in g for g in report.architecture.gates) and report.fraction() <= 0.5 + 1e-9
    out = variant({k: v.cuda() for k, v in batch.items()})
    assert out.is_cuda and out.shape == (4, 3)
