"""The steps of `bsnet search` called from Python (`bsnet.pipeline`): the same run as the command line's."""
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import bsnet
from bsnet.config import ConfigError, RunConfig
from bsnet.export import export_file
from bsnet.export.load import load_with_info
from bsnet.pipeline import build_run, run_search
from bsnet.runs import RunDirError

TINY = dict(supernet_config={"layers": 3, "channels": 8}, epochs=1, finetune_epochs=0)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head((h + self.block(h)).mean(dim=(2, 3)))


def test_an_unseeded_factory_is_called_once_the_run_is_seeded(tmp_path):
    """A factory that does not seed itself still gives the same run twice: bsnet seeds before calling it."""
    results = []
    for name in ("a", "b"):
        torch.manual_seed(len(name) * 1000 + ord(name))  # whatever the state before the run
        arch, run_dir = run_search(RunConfig(budget=["60%"], epochs=1, finetune_epochs=0), tmp_path / name, model=Net)
        results.append((load_file(str(run_dir / "weights.safetensors")), arch.gates))
    (a, gates_a), (b, gates_b) = results
    assert gates_a == gates_b and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_build_run_leaves_the_callers_config_as_it_was():
    config = RunConfig(**TINY)
    run = build_run(config)
    assert config.supernet_config == {"layers": 3, "channels": 8} and config.search_config == {}
    assert run.config.supernet_config["image_size"] == 8 and run.config.search_config["seed"] == 0


@pytest.mark.parametrize("values", [{"leaf_modules": ["Flip"]}, {"input_shape": [1, 8, 8]}])
def test_options_for_a_users_model_are_refused_for_a_fabric(values):
    with pytest.raises(ConfigError, match="model of your own"):
        build_run(RunConfig(**TINY, **values))


def test_resume_continues_only_the_run_as_it_was_configured(tmp_path):
    out = tmp_path / "r"
    arch, _ = run_search(RunConfig(**TINY), out)
    (out / "architecture.json").unlink()  # as if it stopped after its last checkpoint
    with pytest.raises(RunDirError, match="epochs is 1 in its config.yaml, not 2"):
        run_search(RunConfig(**{**TINY, "epochs": 2}), out, resume=True)
    warnings: list[str] = []
    again, _ = run_search(RunConfig(**TINY), out, resume=True, warn=warnings.append)
    assert again.kept == arch.kept and warnings == []
    (out / "architecture.json").unlink()
    for f in (out / "checkpoints").glob("epoch-*.safetensors"):
        f.write_bytes(b"damaged")
    run_search(RunConfig(**TINY), out, resume=True, warn=warnings.append)
    assert any("checksum" in w or "not a valid" in w for w in warnings) and warnings[-1].startswith("no intact")


@pytest.mark.parametrize("fmt", ["pt", "onnx", "python"])
def test_export_file_writes_each_format(tmp_path, fmt):
    _, run_dir = run_search(RunConfig(**TINY), tmp_path / "r")
    module, arch, _ = load_with_info(run_dir)
    out = export_file(module, arch, fmt, tmp_path / f"m{bsnet.export.FORMATS[fmt]}", (1, 8, 8))
    assert out.is_file() and out.stat().st_size > 0
    if fmt == "pt":
        assert json.loads(out.with_name("m.architecture.json").read_text())["kept"] == arch.kept
    with pytest.raises(ValueError, match="is a directory"):
        export_file(module, arch, fmt, tmp_path, (1, 8, 8))
