"""`bsnet search` end to end on digits with a tiny fabric, its run directory, resume and its error cases."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import bsnet
from bsnet import rundir
from bsnet.cli import main
from tests.cli_options import TINY


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["search", *TINY, "--out", str(out)]) == 0
    return out


def test_search_writes_a_complete_run_directory(finished_run):
    out = finished_run
    for f in ("config.yaml", "metrics.jsonl", "architecture.json", "weights.safetensors", "search.png",
              "architecture.png", "checkpoints/epoch-0002.safetensors", "checkpoints/epoch-0002.json",
              "checkpoints/epoch-0001.json",
              "checkpoints/best.safetensors"):
        assert (out / f).exists(), f
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["format_version"] == 2 and arch["supernet"] == "cnf" and arch["widths"] == {}
    assert set(arch["cost"]) >= {"flops", "params", "parallel"} and set(arch["full_cost"]) == set(arch["cost"])
    assert arch["cost"]["flops"] <= arch["budget"]["flops"] == pytest.approx(0.3 * arch["full_cost"]["flops"])
    assert set(arch["kept"]) <= set(arch["gates"]) and isinstance(arch["projected"], bool)
    assert 0.1 < arch["metrics"]["test_acc"] <= 1.0
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]
    assert {"train_loss", "train_acc", "val_acc", "expected_cost", "sampled_cost", "lambda", "entropy",
            "disconnected", "found"} <= set(metrics[0])
    assert all(m["found"] and set(m["found"]) <= set(arch["gates"]) for m in metrics)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["supernet_config"]["layers"] == 3 and cfg["supernet_config"]["image_size"] == 8


def test_resume_on_a_finished_run_changes_nothing(finished_run, capsys):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    assert main(["search", "--out", str(finished_run), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert before == {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "r"
    assert main(["search", *TINY, "--out", str(out)]) == 0
    # As if killed during epoch 2, after its metrics line but before its checkpoint: the checkpoint says 1 epoch.
    (out / "architecture.json").unlink()
    doc = json.loads((out / "checkpoints" / "epoch-0002.json").read_text())
    doc["meta"]["epoch"] = 1
    (out / "checkpoints" / "epoch-0002.json").write_text(json.dumps(doc))
    assert main(["search", "--out", str(out), "--resume"]) == 0
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert (out / "architecture.json").exists()


def test_rerunning_the_resolved_config_reproduces_the_run(finished_run, tmp_path):
    out = tmp_path / "again"
    assert main(["search", "--config", str(finished_run / "config.yaml"), "--out", str(out)]) == 0
    a = json.loads((finished_run / "architecture.json").read_text())
    b = json.loads((out / "architecture.json").read_text())
    assert a["kept"] == b["kept"] and a["gates"] == b["gates"]


def test_default_run_directories_are_numbered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["search", *TINY[:5], "--epochs", "1", "--finetune-epochs", "0"]
    assert main(args) == 0 and main(args) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["search-001", "search-002"]


@pytest.mark.parametrize("args, message", [
    (["--supernet", "nope"], "unknown super network"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--budget", "nope=30%"], "unknown cost"),
    (["--budget", "0"], "positive"),
    (["--budget=-5%"], "positive"),
    (["--budget", "5 apples"], "cannot read budget"),
    (["--budget", "10"], "below the cheapest"),
    (["--data-dir", "/no/such/dir"], "does not exist"),
    (["--supernet-config", "widht=3"], "unknown cnf setting"),
    (["--epochs", "0"], "epochs"),
    (["--device", "tpu"], "device"),
    (["--supernet-config", "image_size=12"], "power-of-two"),
    (["--dataset", "image-folder", "--data-dir", "EMPTY"], "is not an image folder"),
    (["--dataset", "cifar10", "--data-dir", "EMPTY"], "cifar"),
    (["--supernet-config", "layers=three"], "layers must be an integer"),
    (["--parallel-workers", "0"], "parallel_workers must be an integer >= 1"),
    (["--val-size", "1"], "holds out none: ask for at least"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    assert main(["search", *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("bsnet: error:")
    assert not (tmp_path / "r").exists()  # nothing written for a refused run


def test_out_holding_another_run_is_refused(finished_run, capsys):
    before = (finished_run / "architecture.json").read_bytes()
    assert main(["search", *TINY, "--out", str(finished_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (finished_run / "architecture.json").read_bytes() == before


def test_overwrite_replaces_every_output_of_the_old_run(finished_run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(finished_run, out)
    assert main(["export", str(out)]) == 0 and main(["eval", str(out)]) == 0  # export, eval outputs
    rundir.claim(out, "final/", *(f"final/{f}" for f in rundir.FINAL_FILES))  # as `bsnet train` records final/
    (out / "final").mkdir()
    for f in rundir.FINAL_FILES:
        (out / "final" / f).write_text("old")
    (out / "export" / "mine.txt").write_text("the user's")  # beside bsnet's outputs: kept
    assert main(["search", *TINY[:5], "--epochs", "1", "--finetune-epochs", "0", "--out", str(out),
                 "--overwrite"]) == 0
    assert not (out / "final").exists() and not (out / "eval.json").exists()
    assert [p.name for p in (out / "export").iterdir()] == ["mine.txt"]
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [0]
    assert bsnet.load(out) is not None  # the new run's weights


def test_overwrite_leaves_a_folder_bsnet_did_not_write(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "mine.pt").write_text("user data")
    (tmp_path / "config.yaml").write_text("lr: 0.1\n")
    assert main(["search", *TINY, "--out", str(tmp_path), "--overwrite"]) == 2
    assert "not a bsnet run" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "mine.pt").read_text() == "user data"
    assert (tmp_path / "config.yaml").read_text() == "lr: 0.1\n"


def test_resume_refuses_options_that_would_change_the_run(finished_run, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(finished_run, out)
    (out / "architecture.json").unlink()  # unfinished
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**yaml.safe_load((out / "config.yaml").read_text()),
                                                     "batch_size": 8}))
    for extra, message in ((["--epochs", "5"], "epochs is 2 in its config.yaml, not 5"),
                           (["--supernet-config", "layers=4"], "supernet_config.layers is 3"),
                           (["--config", str(tmp_path / "c.yaml")], "batch_size is 64 in its config.yaml, not 8")):
        assert main(["search", "--out", str(out), "--resume", *extra]) == 2
        assert message in capsys.readouterr().err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": "somepkg.models:make"}))
    assert main(["search", "--out", str(out), "--resume"]) == 2  # imports nothing a run directory names
    assert "pass it again" in capsys.readouterr().err
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    from bsnet.cli import _resumed_config, make_parser
    for same in ([], [*TINY], ["--config", str(out / "config.yaml")], ["--device", "cuda"]):  # all accepted
        resumed = _resumed_config(make_parser().parse_args(["search", "--out", str(out), "--resume", *same]))
        assert resumed.epochs == cfg["epochs"] and resumed.device == (same[1] if same[:1] == ["--device"] else "cpu")


def test_seed_given_with_a_config_file_seeds_the_gates_too(finished_run, tmp_path):
    out = tmp_path / "r"
    assert main(["search", "--config", str(finished_run / "config.yaml"), "--seed", "7", "--epochs", "1",
                 "--finetune-epochs", "0", "--out", str(out)]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["seed"] == 7 and cfg["search_config"]["seed"] == 7


@pytest.mark.parametrize("content, message", [("epochs: [1\n", "not valid YAML"), ("epochz: 3\n", "unknown key"),
                                              ("epochs: three\n", "must be an integer")])
def test_bad_config_files(tmp_path, capsys, content, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_console_script_reports_errors_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bsnet", "search", "--supernet", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unknown super network" in r.stderr


def constant_cost(net, live):
    """A user's own cost (`--budget tests.test_cli_search:constant_cost=...`): 5 units for any architecture."""
    import torch
    return torch.full((live.shape[0],), 5.0, dtype=torch.float64)


def test_a_users_cost_from_the_command_line_and_an_unmeetable_budget(tmp_path, capsys):
    ok = tmp_path / "ok"
    assert main(["search", *TINY, "--budget", "tests.test_cli_search:constant_cost=6", "--out", str(ok)]) == 0
    arch = json.loads((ok / "architecture.json").read_text())
    assert arch["cost"]["constant_cost"] == 5.0 and arch["budget"]["constant_cost"] == 6.0
    bad = tmp_path / "bad"
    assert main(["search", *TINY, "--budget", "tests.test_cli_search:constant_cost=1", "--out", str(bad)]) == 3
    err = capsys.readouterr().err
    assert "no connected architecture meets every budget" in err
    assert not (bad / "architecture.json").exists() and list((bad / "checkpoints").glob("epoch-*.json"))


def test_image_folder_errors_name_the_file(tmp_path, capsys):
    from PIL import Image
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "d" / split / c / f"{i}.png")
    bad = tmp_path / "d" / "train" / "a" / "1.png"
    bad.write_bytes(b"not an image")
    assert main(["search", "--dataset", "image-folder", "--data-dir", str(tmp_path / "d"),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "1.png" in err and len(err.strip().splitlines()) == 1
    bad.unlink()
    for f in (tmp_path / "d" / "train" / "b").iterdir():
        f.unlink()
    assert main(["search", "--dataset", "image-folder", "--data-dir", str(tmp_path / "d"),
                 "--out", str(tmp_path / "r")]) == 2
    assert "train/b holds no images" in capsys.readouterr().err


def test_segmentation_search_on_shapes(tmp_path, capsys):
    out = tmp_path / "seg"
    assert main(["search", "--dataset", "shapes", "--supernet-config", "layers=3", "channels=4", "--epochs", "1",
                 "--finetune-epochs", "1", "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "pixel acc." in summary and "mean IoU" in summary
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["supernet_config"]["task"] == "segmentation" and arch["supernet_config"]["num_classes"] == 4
    m = arch["metrics"]
    assert 0 < m["test_miou"] <= 1 and 0 < m["full_test_miou"] <= 1 and 0 < m["test_acc"] <= 1
    assert arch["cost"]["flops"] <= arch["budget"]["flops"]
    model = bsnet.load(out)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4, 32, 32)  # a label map per pixel
    assert main(["eval", str(out)]) == 0
    assert "mean IoU" in capsys.readouterr().out
