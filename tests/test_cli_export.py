"""`bsnet export | train | eval | show` on a finished run, and `bsnet.load` of each form."""
import json

import pytest
import torch

import bsnet
from bsnet.cli import main
from tests.cli_options import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["search", *TINY, "--out", str(out)]) == 0
    return out


def outputs(module, n=4):
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return module.eval()(x)


def test_load_export_train_eval_show(run, capsys, tmp_path):
    searched = bsnet.load(run)
    arch = json.loads((run / "architecture.json").read_text())
    assert sum(p.numel() for p in searched.parameters()) == arch["cost"]["params"]

    assert main(["export", str(run), "--format", "pt", "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "search weights" in capsys.readouterr().out
    assert torch.equal(outputs(bsnet.load(tmp_path / "m.safetensors")), outputs(searched))
    assert (tmp_path / "m.architecture.json").exists()

    assert main(["export", str(run), "--format", "python"]) == 0
    assert (run / "export" / "found_network.py").exists() and (run / "export" / "found_network.safetensors").exists()

    assert main(["train", str(run), "--epochs", "1"]) == 0
    result = json.loads((run / "final" / "result.json").read_text())
    assert 0 <= result["test_acc"] <= 1 and result["cost"]["flops"] == arch["cost"]["flops"]
    assert len((run / "final" / "metrics.jsonl").read_text().splitlines()) == 1
    final = bsnet.load(run)  # final/ weights now take precedence
    assert torch.equal(outputs(final), outputs(bsnet.load(run / "final")))
    assert not torch.equal(outputs(final), outputs(searched))
    assert main(["train", str(run), "--epochs", "1"]) == 2  # a second training asks before replacing final/
    assert "--overwrite" in capsys.readouterr().err and torch.equal(outputs(bsnet.load(run)), outputs(final))
    assert main(["export", str(run), "--format", "pt", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err

    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "final" in out
    report = json.loads((run / "eval.json").read_text())
    assert report["weights"] == "final"
    assert report["flops"] == pytest.approx(arch["cost"]["flops"], rel=0.01)
    assert report["params"] == arch["cost"]["params"]
    assert report["test_acc"] == pytest.approx(result["test_acc"])
    assert report["latency"] > 0 and report["latency_per_node_estimate"] > 0

    assert main(["show", str(run), "--draw", str(tmp_path / "a.png")]) == 0
    assert "gates kept" in capsys.readouterr().out and (tmp_path / "a.png").stat().st_size > 0

    assert main(["train", str(run), "--epochs", "1", "--seed", "3", "--overwrite"]) == 0  # replaces final/
    assert json.loads((run / "final" / "result.json").read_text())["train_config"]["seed"] == 3
    assert not torch.equal(outputs(bsnet.load(run)), outputs(final))
    assert not (run / "final.partial").exists() and not (run / "final.replaced").exists()


def test_commands_on_something_that_is_not_a_run(tmp_path, capsys):
    for cmd in (["export", str(tmp_path)], ["train", str(tmp_path)], ["eval", str(tmp_path)], ["show", str(tmp_path)]):
        assert main(cmd) == 2
        assert "not a finished bsnet search run" in capsys.readouterr().err


def test_incompatible_format_version_is_refused(run, tmp_path, capsys):
    import shutil
    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    doc = json.loads((copy / "architecture.json").read_text())
    doc["format_version"] = 99
    (copy / "architecture.json").write_text(json.dumps(doc))
    assert main(["show", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "version 99" in err and "versions 1, 2" in err


def test_an_output_path_that_cannot_be_written_is_one_line(run, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a directory")
    assert main(["export", str(run), "--format", "pt", "--out", str(tmp_path / "a_file" / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bsnet: error:") and "a_file" in err and len(err.splitlines()) == 1
    assert (tmp_path / "a_file").read_text() == "not a directory"
