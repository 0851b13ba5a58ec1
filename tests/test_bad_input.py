"""Every bad input gets one line: exit code 2, exactly one line on stderr ("bsnet: error: ..."), no traceback, and the
user's files byte for byte as they were. One row per case, for every command; then the code a file names that no
command may run, and the values that are legal but almost certainly a mistake (a warning, exit code 0)."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch import nn

from bsnet.cli import main
from tests.cli_options import TINY

SHORT = [*TINY[:3], "--epochs", "1", "--finetune-epochs", "0"]  # a search of one epoch, nothing fine-tuned


# ---- the user's code, as --model names it --------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.stem(x).mean(dim=(2, 3)))


def conv_model() -> nn.Module:
    return ConvNet()


def raising_factory() -> nn.Module:
    raise RuntimeError("the weights server is down")


def not_a_model() -> int:
    return 3


# ---- the files a careless or hostile user hands bsnet -------------------------------------------------------
def files(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `root`, the lock aside (it holds its last holder's pid)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if p.name != ".bsnet-lock"}


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def edit_yaml(path: Path, **changes) -> None:
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        group, _, sub = key.partition(".")
        if sub:
            doc[group][sub] = value
        else:
            doc[key] = value
    path.write_text(yaml.safe_dump(doc))


def edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def latency_table(tmp: Path, seconds) -> Path:
    """A latency table of the tiny cnf whose first node takes `seconds`."""
    from bsnet import create_supernet
    from bsnet.costs.latency import TABLE_VERSION, fingerprint
    net = create_supernet("cnf", layers=3, channels=8, image_size=8, in_channels=1)
    nodes = {n: 1e-4 for n in net.graph.order}
    nodes[net.graph.order[0]] = seconds
    doc = {"format_version": TABLE_VERSION, "fingerprint": fingerprint(net), "nodes": nodes}
    return write(tmp / "table.json", json.dumps(doc).replace("Infinity", "1e999"))


def unfinished(run: Path) -> None:
    (run / "architecture.json").unlink()


def config_file(case: str, content: str, message: str) -> tuple:
    """A row of CASES: `bsnet search --config` of a file holding `content`."""
    return (case, ["search", "--config", "TMP/c.yaml", "--out", "TMP/new"], message,
            lambda run, tmp: write(tmp / "c.yaml", content))


# Each row: an id, the command (RUN: a copy of a finished run, TMP: the test's folder, FILE: a file of the user's),
# what its one line says, and what to set up first (run(RUN, TMP)).
R, T, F = "RUN", "TMP", "FILE"
OUT = ["--out", "TMP/new"]  # where a refused search would have written
CASES = [
    # -- the cases: tracebacks
    ("fabric-channels-0", ["search", "--supernet-config", "channels=0", *OUT], "channels must be", None),
    ("input-shape-1,8", ["search", "--model", "tests.test_bad_input:conv_model", "--input-shape", "1,8", *OUT],
     "cannot run on inputs shaped (1, 8)", None),
    ("export-factory-raises", ["export", R, "--model", "tests.test_bad_input:raising_factory"],
     "the weights server is down", None),
    ("resume-another-tools-config", ["search", "--resume", "--out", "TMP/theirs"], "TMP/theirs",
     lambda run, tmp: write(tmp / "theirs" / "config.yaml", "lr: 0.1\noptimizer: adam\n")),
    ("resume-broken-config", ["search", "--resume", "--out", R], "config.yaml",
     lambda run, tmp: (unfinished(run), write(run / "config.yaml", "epochs: [1\n"))),
    ("show-damaged-config", ["show", R], "not valid YAML", lambda run, tmp: write(run / "config.yaml", "a: [\n")),
    ("show-hand-edited-config", ["show", R], "channels must be",
     lambda run, tmp: edit_yaml(run / "config.yaml", **{"supernet_config.channels": 0})),
    ("show-damaged-architecture", ["show", R], "architecture.json",
     lambda run, tmp: write(run / "architecture.json", '{"format_version": 1, "kept": [')),
    ("show-hand-edited-architecture", ["show", R], "kept",
     lambda run, tmp: edit_json(run / "architecture.json", kept=5)),
    ("eval-damaged-config", ["eval", R], "config.yaml", lambda run, tmp: write(run / "config.yaml", b"\xff\xfe\x00")),
    ("eval-hand-edited-architecture", ["eval", R], "gates",
     lambda run, tmp: edit_json(run / "architecture.json", gates={"C-0_0-1_0": "x"})),
    ("eval-batch-size--1", ["eval", R, "--batch-size", "-1"], "--batch-size", None),
    ("eval-dataset-of-another-task", ["eval", R, "--dataset", "shapes"], "shapes", None),
    ("profile-dtype-int8", ["profile", "--supernet", "cnf", "--dtype", "int8", "--out", "TMP/t.json"], "int8", None),
    # -- the cases: nonsense accepted
    ("latency-table-negative", ["search", *SHORT, "--budget", "latency=1ms", "--latency-table", "TMP/table.json", *OUT],
     "not a finite number >= 0", lambda run, tmp: latency_table(tmp, -1.0)),
    ("latency-table-nan", ["search", *SHORT, "--budget", "latency=1ms", "--latency-table", "TMP/table.json", *OUT],
     "not a finite number >= 0", lambda run, tmp: latency_table(tmp, math.nan)),
    ("lambda-lr-negative", ["search", "--search-config", "lambda_lr=-1", *OUT], "lambda_lr", None),
    ("groups-above-the-batch", ["search", "--search-config", "groups=100", "--batch-size", "8", *OUT], "groups",
     None),
    ("eval-batch-size-0", ["eval", R, "--batch-size", "0"], "--batch-size", None),
    ("profile-batch-size-0", ["profile", "--supernet", "cnf", "--batch-size", "0", "--out", "TMP/t.json"],
     "--batch-size", None),
    ("train-batch-size-0", ["train", R, "--batch-size", "0"], "--batch-size", None),
    ("resume-without-out", ["search", "--resume"], "--resume needs --out", None),
    ("data-dir-a-file", ["search", "--data-dir", F, *OUT], "is a file, not a folder", None),
    ("sweep-unknown-flag", ["sweep", "--budgets", "20%", "--out", "TMP/sweep", "--bogus", "3"], "--bogus", None),
    # -- more of the same, as a careless or hostile user would try
    ("epochs-not-a-number", ["search", "--epochs", "many", *OUT], "--epochs", None),
    ("val-size-nan", ["search", "--val-size", "nan", *OUT], "val_size", None),
    ("val-size-inf", ["search", "--val-size", "inf", *OUT], "val_size", None),
    ("val-size-negative", ["search", "--val-size=-0.1", *OUT], "val_size", None),
    ("val-size-almost-all", ["search", "--val-size", "0.999", *OUT], "leaves none of class", None),
    ("val-size-above-the-data", ["search", "--val-size", "100000", *OUT], "cannot hold out", None),
    ("val-size-fractional-count", ["search", "--val-size", "2.5", *OUT], "val_size", None),
    ("select-temperature-inf", ["search", "--select-temperature", "inf", *OUT], "select_temperature", None),
    ("seed-negative", ["search", "--seed=-1", *OUT], "seed", None),
    ("batch-size-0", ["search", "--batch-size", "0", *OUT], "batch_size", None),
    ("budget-infinite", ["search", "--budget", "1e999", *OUT], "budget", None),
    ("budget-nan-latency", ["search", "--budget", "latency=nan", *OUT], "budget", None),
    ("budget-empty", ["search", "--budget", "", *OUT], "budget", None),
    ("budget-no-value", ["search", "--budget", "params=", *OUT], "budget", None),
    ("budget-no-cost", ["search", "--budget", "=30%", *OUT], "budget", None),
    ("budget-unknown-cost", ["search", "--budget", "energy=3", *OUT], "unknown cost", None),
    ("budget-twice", ["search", "--budget", "30%", "--budget", "flops=20%", *OUT], "one budget per cost", None),
    ("search-config-nan", ["search", "--search-config", "gate_lr=nan", *OUT], "gate_lr", None),
    ("search-config-inf", ["search", "--search-config", "lr=inf", *OUT], "lr", None),
    ("search-config-momentum", ["search", "--search-config", "momentum=1.5", *OUT], "momentum", None),
    ("search-config-nonfinite-steps", ["search", "--search-config", "max_nonfinite_steps=0", *OUT],
     "max_nonfinite_steps", None),
    ("search-config-groups-0", ["search", "--search-config", "groups=0", *OUT], "groups", None),
    ("search-config-fixed-lambda", ["search", "--search-config", "fixed_lambda=-1", *OUT], "fixed_lambda", None),
    ("search-config-unknown", ["search", "--search-config", "gate_lrr=0.1", *OUT], "unknown search setting", None),
    ("search-config-not-yaml", ["search", "--search-config", "lr=[1", *OUT], "lr=[1", None),
    ("supernet-config-huge", ["search", "--supernet-config", "layers=1e400", *OUT], "layers", None),
    ("supernet-config-classes-0", ["search", "--supernet-config", "num_classes=0", *OUT], "num_classes", None),
    ("supernet-config-even-kernel", ["search", "--supernet-config", "kernel_size=4", *OUT], "kernel_size", None),
    ("supernet-config-task", ["search", "--supernet-config", "task=detection", *OUT], "task", None),
    ("fabric-of-other-inputs", ["search", "--supernet-config", "in_channels=3", *OUT], "takes (3, 8, 8)", None),
    ("fabric-of-other-classes", ["search", "--supernet-config", "num_classes=3", *OUT], "over 10 classes", None),
    ("fabric-of-another-task", ["search", "--supernet-config", "task=segmentation", *OUT], "gives (10, 8, 8)", None),
    ("fabric-huge-image", ["search", "--supernet-config", "image_size=1073741824", *OUT], "out of memory", None),
    ("model-on-another-data-set", ["search", "--model", "tests.test_bad_input:conv_model", "--dataset", "shapes",
                                   *OUT], "cannot run on inputs shaped (3, 32, 32)", None),
    ("resnet-no-stages", ["search", "--supernet", "resnet_fabric", "--supernet-config", "channels=[]", *OUT],
     "channels", None),
    ("resnet-channels-0", ["search", "--supernet", "resnet_fabric", "--supernet-config", "channels=[4,0,8]", *OUT],
     "channels", None),
    ("supernet-empty", ["search", "--supernet", "", *OUT], "supernet", None),
    ("dataset-empty", ["search", "--dataset", "", *OUT], "dataset", None),
    ("device-cuda-name", ["search", "--device", "cuda:first", *OUT], "device", None),
    ("parallel-workers-negative", ["search", "--parallel-workers=-1", *OUT], "parallel_workers", None),
    ("input-shape-0", ["search", "--model", "tests.test_bad_input:conv_model", "--input-shape", "0,8,8", *OUT],
     "input_shape", None),
    ("model-not-importable", ["search", "--model", "no_such_package.models:make", *OUT], "no_such_package", None),
    ("model-import-raises", ["search", "--model", "broken_user_module:make", *OUT], "ZeroDivisionError",
     lambda run, tmp: write(tmp / "code" / "broken_user_module.py", "x = 1 / 0\n")),
    ("model-not-a-module", ["search", "--model", "tests.test_bad_input:not_a_model", *OUT], "not a torch.nn.Module",
     None),
    ("config-a-folder", ["search", "--config", "TMP", *OUT], "config", None),
    ("config-missing", ["search", "--config", "TMP/nowhere.yaml", *OUT], "nowhere.yaml", None),
    ("config-binary", ["search", "--config", F, *OUT], "config",
     lambda run, tmp: write(tmp / "afile", b"\xff\x00\x81")),
    config_file("config-a-list", "- epochs\n- 3\n", "mapping"),
    config_file("config-nan-epochs", "epochs: .nan\n", "epochs"),
    config_file("config-nan-val-size", "val_size: .inf\n", "val_size"),
    config_file("config-number-keys", "1: 2\nepochz: 3\n", "unknown key"),
    config_file("config-deeply-nested", "epochs: " + "[" * 5000 + "]" * 5000 + "\n", "config"),
    config_file("config-supernet-config-a-list", "supernet_config: [1, 2]\n", "supernet_config"),
    config_file("config-budget-null", "budget: [null]\n", "budget"),
    config_file("config-empty-string", "data_dir: ''\n", "data_dir"),
    ("latency-table-a-folder", ["search", "--budget", "latency=1ms", "--latency-table", "TMP", *OUT], "is a folder",
     None),
    ("latency-table-missing", ["search", "--budget", "latency=1ms", "--latency-table", "TMP/no.json", *OUT],
     "does not exist", None),
    ("latency-table-version", ["search", *SHORT, "--budget", "latency=1ms", "--latency-table", "TMP/t.json", *OUT],
     "format version", lambda run, tmp: write(tmp / "t.json", '{"format_version": 99, "nodes": {"a": 1}}')),
    ("latency-table-nodes-a-list", ["search", *SHORT, "--budget", "latency=1ms", "--latency-table", "TMP/t.json",
                                    *OUT], "nodes", lambda run, tmp: write(tmp / "t.json", '{"nodes": [1, 2]}')),
    ("train-epochs-0", ["train", R, "--epochs", "0"], "--epochs", None),
    ("train-lr-nan", ["train", R, "--lr", "nan"], "--lr", None),
    ("train-lr-negative", ["train", R, "--lr=-0.1"], "--lr", None),
    ("train-seed-negative", ["train", R, "--seed=-3"], "--seed", None),
    ("train-data-dir-a-file", ["train", R, "--data-dir", F], "is a file, not a folder", None),
    ("train-device-unknown", ["train", R, "--device", "tpu"], "--device", None),
    ("profile-device-unknown", ["profile", "--supernet", "cnf", "--device", "gpu0", "--out", "TMP/t.json"], "--device",
     None),
    ("train-unknown-dataset", ["train", R, "--dataset", "imagenet"], "unknown dataset", None),
    ("train-dataset-of-another-task", ["train", R, "--dataset", "shapes"], "shapes", None),
    ("eval-cifar-without-data", ["eval", R, "--dataset", "cifar10"], "needs a data directory", None),
    ("eval-data-dir-a-file", ["eval", R, "--data-dir", F], "is a file, not a folder", None),
    ("show-draw-a-folder", ["show", R, "--draw", "TMP"], "--draw", None),
    ("show-draw-no-image-suffix", ["show", R, "--draw", "TMP/arch.txt"], "--draw", None),
    ("show-missing-run", ["show", "TMP/nowhere"], "nowhere", None),
    ("show-draw-over-a-users-file", ["show", R, "--draw", "TMP/arch.png"], "exists",
     lambda run, tmp: write(tmp / "arch.png", b"my picture")),
    ("profile-out-over-a-users-file", ["profile", "--supernet", "cnf", "--out", "TMP/t.json"], "exists",
     lambda run, tmp: write(tmp / "t.json", '{"nodes": {"a": 1.0}, "mine": true}')),
    ("show-a-file", ["show", F], "afile", None),
    ("profile-min-run-time-nan", ["profile", "--supernet", "cnf", "--min-run-time", "nan", "--out", "TMP/t.json"],
     "--min-run-time", None),
    ("profile-min-run-time-negative", ["profile", "--supernet", "cnf", "--min-run-time=-1", "--out", "TMP/t.json"],
     "--min-run-time", None),
    ("profile-channels-0", ["profile", "--supernet", "cnf", "--supernet-config", "channels=0", "--out", "TMP/t.json"],
     "channels must be", None),
    ("profile-out-in-a-missing-folder", ["profile", "--supernet", "cnf", "--out", "TMP/no/t.json"], "TMP/no", None),
    ("profile-unknown-supernet", ["profile", "--supernet", "nope", "--out", "TMP/t.json"], "unknown super network",
     None),
    ("sweep-no-budgets", ["sweep", "--budgets", ",", "--out", "TMP/sweep"], "--budgets", None),
    ("sweep-unreadable-budget", ["sweep", "--budgets", "10%,lots", "--out", "TMP/sweep"], "lots", None),
    ("sweep-budget-twice", ["sweep", "--budgets", "10%,10%", "--out", "TMP/sweep"], "twice", None),
    ("sweep-workers-0", ["sweep", "--budgets", "10%", "--workers", "0", "--out", "TMP/sweep"], "--workers", None),
    ("sweep-train-epochs-negative", ["sweep", "--budgets", "10%", "--train-epochs=-1", "--out", "TMP/sweep"],
     "--train-epochs", None),
    ("sweep-unknown-cost", ["sweep", "--budgets", "10%", "--sweep-cost", "energy", "--out", "TMP/sweep"],
     "unknown cost", None),
    ("sweep-bad-search-value", ["sweep", "--budgets", "10%", "--out", "TMP/sweep", "--epochs", "0"], "epochs", None),
    ("sweep-resume-in-search-options", ["sweep", "--budgets", "10%", "--out", "TMP/sweep", "--resume"], "--resume",
     None),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["search", *SHORT, "--out", str(out)]) == 0
    return out


def refused(capsys, argv: list[str], message: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsnet: error:") and message in lines[0], err
    return lines[0]


@pytest.mark.parametrize("argv, message, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, message, setup, finished, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    write(tmp_path / "afile", "the user's notes\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    if setup is not None:
        setup(run, tmp_path)
    capsys.readouterr()
    argv = [str(run) if a == R else str(tmp_path / "afile") if a == F else a.replace(T, str(tmp_path)) for a in argv]
    before = files(tmp_path)
    refused(capsys, argv, message.replace(T, str(tmp_path)))
    assert files(tmp_path) == before  # nothing written, nothing changed
    sys.modules.pop("broken_user_module", None)


@pytest.mark.parametrize("argv", [["profile", "--supernet", "cnf", "--dtype", "int8", "--out", "t.json"],
                                  ["search", "--supernet-config", "channels=0"],
                                  ["sweep", "--budgets", "20%", "--out", "sweep", "--bogus", "3"]])
def test_the_console_command_reports_bad_input_in_one_line(argv, tmp_path):
    r = subprocess.run([sys.executable, "-m", "bsnet", *argv], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("bsnet: error:"), r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_table_holds_every_case_once():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 2 * 22


# ---- a file never makes bsnet run code --------------------------------------------------------------------------
PAYLOAD = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n\ndef make():\n    return None\n"


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """A module of code that would create the file `pwned` when imported."""
    marker = tmp_path / "pwned"
    write(tmp_path / "code" / "payload_module.py", PAYLOAD.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield marker
    sys.modules.pop("payload_module", None)


@pytest.mark.parametrize("content, message", [
    ({"model": "payload_module:make"}, "--model payload_module:make"),
    ({"budget": ["payload_module:make=3"]}, "--budget payload_module:make=3"),
    ({"budget": ["30%", "payload_module:make=3"], "model": "payload_module:make"}, "payload_module"),
])
def test_a_config_file_never_imports_the_code_it_names(content, message, payload, tmp_path, capsys):
    config = write(tmp_path / "theirs.yaml", yaml.safe_dump({**content, "epochs": 1}))
    before = files(tmp_path)
    refused(capsys, ["search", "--config", str(config), "--out", str(tmp_path / "new")], message)
    assert not payload.exists() and files(tmp_path) == before


def test_code_a_config_names_runs_when_the_command_line_names_it_too(tmp_path, capsys):
    config = write(tmp_path / "mine.yaml", yaml.safe_dump({"model": "tests.test_cli_model:small_resnet"}))
    other = ["--config", str(config), "--model", "tests.test_bad_input:raising_factory", "--out", str(tmp_path / "a")]
    refused(capsys, ["search", *other], "the weights server is down")  # the command line's code, not the file's
    argv = ["search", "--config", str(config), "--model", "tests.test_cli_model:small_resnet", "--epochs", "1",
            "--finetune-epochs", "0", "--out", str(tmp_path / "b")]
    assert main(argv) == 0 and (tmp_path / "b" / "architecture.json").exists()


def test_a_sweep_with_a_bad_search_option_starts_no_run(tmp_path, capsys):
    refused(capsys, ["sweep", "--budgets", "20%,40%", "--out", str(tmp_path / "sweep"), "--epoch", "0"], "epochs")
    assert not (tmp_path / "sweep").exists()


# ---- legal, but almost certainly a mistake: one warning, exit 0, a sane table -------------------------------------
@pytest.mark.parametrize("budget, warning", [("150%", "150%"), ("params=1e99", "above the full network")])
def test_a_budget_the_full_network_meets_is_a_warning(budget, warning, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["search", *SHORT, "--budget", budget, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("bsnet:")]  # progress bars aside
    assert len(lines) == 1 and lines[0].startswith("bsnet: warning:") and warning in lines[0], captured.err
    assert "e+" not in captured.out and "> full" in captured.out
    arch = json.loads((out / "architecture.json").read_text())
    cost = budget.partition("=")[0] if "=" in budget else "flops"
    assert arch["cost"][cost] <= arch["full_cost"][cost]
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "e+" not in shown and "> full" in shown


def test_a_budget_below_the_full_network_warns_nothing(finished, capsys):
    assert main(["show", str(finished)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "<= " in captured.out


def test_profile_replaces_a_latency_table_it_wrote(tmp_path):
    out = tmp_path / "t.json"
    argv = ["profile", "--supernet", "cnf", "--supernet-config", "layers=2", "channels=4", "image_size=8",
            "--min-run-time", "0.0001", "--out", str(out)]
    assert main(argv) == 0
    first = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() != first  # measured again, in place of its own table
