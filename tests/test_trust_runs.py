"""Nothing of the user's is ever lost: the run marker, `--out` into a folder bsnet did not write, `--overwrite`
(only what bsnet wrote, only once the new run has its first checkpoint), the run lock, and checkpoints after a
restart from scratch. Each refusal is one line on stderr, exit code 2, and leaves the user's files byte for byte."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bsnet import rundir, runs
from bsnet.cli import main
from tests.cli_options import TINY

SHORT = [*TINY[:3], "--epochs", "1", "--finetune-epochs", "0"]  # a new run of one epoch
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def files(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes (the lock aside: it holds the pid of its last holder)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK}


def refused(capsys, argv: list[str], message: str, code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("bsnet:")]  # progress bars aside
    assert len(lines) == 1 and lines[0].startswith("bsnet: error:") and message in lines[0], err
    if code == 2:
        assert err.strip() == lines[0]
    return lines[0]


def unfinished(run: Path) -> Path:
    (run / "architecture.json").unlink()  # as if it stopped after its last checkpoint
    return run


def pre_marker(run: Path) -> Path:
    """The run as bsnet wrote it before runs had a marker."""
    (run / rundir.MARKER).unlink()
    (run / rundir.LOCK).unlink()
    return run


# ---- the marker ------------------------------------------------------------------------------------------
def test_a_search_writes_the_marker_listing_what_it_wrote(finished):
    doc = json.loads((finished / rundir.MARKER).read_text())
    assert doc["format_version"] == rundir.RUN_FORMAT == 1 and doc["bsnet_version"]
    assert set(doc["written"]) == {"config.yaml", "metrics.jsonl", "checkpoints/", "weights.safetensors",
                                   "search.png", "architecture.png", "architecture.json"}
    assert rundir.is_run(finished)


def test_runs_written_before_the_marker_are_recognised(run, tmp_path):
    pre_marker(run)
    assert rundir.is_run(run)  # config.yaml and architecture.json of a known version
    unfinished(run)
    assert rundir.is_run(run)  # config.yaml and a checkpoint of a known version
    for f in (run / "checkpoints").glob("epoch-*.json"):
        doc = json.loads(f.read_text())
        doc["meta"]["format_version"] = 7
        f.write_text(json.dumps(doc))
    assert not rundir.is_run(run)  # no file of a version bsnet knows: not a run
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.yaml").write_text("lr: 0.1\n")
    assert not rundir.is_run(tmp_path / "other")


def test_resuming_a_run_from_before_the_marker_gives_it_one(run, capsys):
    pre_marker(unfinished(run))
    before = files(run)
    assert main(["search", "--out", str(run), "--resume"]) == 0
    written = json.loads((run / rundir.MARKER).read_text())["written"]
    assert {"config.yaml", "checkpoints/", "architecture.json"} <= set(written)
    assert before["config.yaml"] == (run / "config.yaml").read_bytes()


@pytest.mark.parametrize("content, message", [
    ("{not json", "is damaged"),
    ('{"format_version": 7, "written": []}', "run format version 7; this bsnet reads version 1"),
    ('{"format_version": 1, "written": "everything"}', "not a bsnet run marker"),
    ('{"format_version": 1, "written": ["../victim.txt"]}', "not a path inside the run"),
    ('{"format_version": 1, "written": ["/etc/hostname"]}', "not a path inside the run"),
])
def test_a_damaged_or_crafted_marker_is_refused(run, tmp_path, capsys, content, message):
    (tmp_path / "victim.txt").write_text("the user's")
    (run / rundir.MARKER).write_text(content)
    before = files(tmp_path)
    for argv in (["search", *SHORT, "--out", str(run), "--overwrite"], ["search", *SHORT, "--out", str(run)]):
        refused(capsys, argv, message)
    assert files(tmp_path) == before


# ---- --out into a folder bsnet did not write (defect 2) -----------------------------------------------------
@pytest.mark.parametrize("contents", [
    {"search.png": b"my plot", "weights.safetensors": b"my weights"},
    {"notes.txt": b"mine"},
    {".hidden": b"mine"},
    {"data/train.csv": b"1,2,3"},
])
@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_out_into_a_folder_bsnet_did_not_write_is_refused(tmp_path, capsys, contents, flag):
    out = tmp_path / "mine"
    for name, data in contents.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    refused(capsys, ["search", *SHORT, "--out", str(out), *flag], "is not a bsnet run and is not empty")
    assert files(out) == contents and sorted(p.name for p in out.iterdir()) == sorted({n.split("/")[0]
                                                                                       for n in contents})


def test_out_into_an_empty_folder_or_a_new_one(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        assert main(["search", *SHORT, "--out", str(out)]) == 0
        assert rundir.is_run(out) and (out / "architecture.json").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    refused(capsys, ["search", *SHORT, "--out", str(tmp_path / "f")], "is a file, not a directory")
    assert (tmp_path / "f").read_text() == "mine"


def test_a_numbered_folder_of_the_users_is_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "search-001").mkdir(parents=True)
    (tmp_path / "runs" / "search-001" / "mine.txt").write_text("mine")
    assert main(["search", *SHORT]) == 0
    assert (tmp_path / "runs" / "search-002" / "architecture.json").exists()
    assert files(tmp_path / "runs" / "search-001") == {"mine.txt": b"mine"}


# ---- --overwrite (defect 3) -------------------------------------------------------------------------------
def test_a_bsnet_looking_config_beside_the_users_folders_is_not_a_run(finished, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "export").mkdir()
    shutil.copy(finished / "config.yaml", out / "config.yaml")
    (out / "checkpoints" / "mine.pt").write_bytes(b"my checkpoint")
    (out / "export" / "model.onnx").write_bytes(b"my export")
    before = files(out)
    refused(capsys, ["search", *SHORT, "--out", str(out), "--overwrite"], "is not a bsnet run")
    refused(capsys, ["search", "--out", str(out), "--resume"], "")
    assert files(out) == before and not (out / rundir.LOCK).exists()


@pytest.mark.parametrize("old", ["marker", "pre-marker"])
def test_overwrite_deletes_only_what_bsnet_wrote(run, old):
    if old == "pre-marker":
        pre_marker(run)
    mine = {"checkpoints/mine.pt": b"my checkpoint", "export/mine.onnx": b"my export", "notes.txt": b"my notes",
            "figures/search.png": b"my plot"}
    for name, data in mine.items():
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_bytes(data)
    old_arch = (run / "architecture.json").read_bytes()
    assert main(["search", *SHORT, "--out", str(run), "--overwrite"]) == 0
    assert {n: (run / n).read_bytes() for n in mine} == mine
    assert (run / "architecture.json").read_bytes() != old_arch
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.json", "best.safetensors", "epoch-0001.json", "epoch-0001.safetensors", "mine.pt"]
    assert not (run / rundir.STAGING).exists()
    assert "notes.txt" not in json.loads((run / rundir.MARKER).read_text())["written"]


@pytest.mark.parametrize("bad, message", [(["--supernet-config", "widht=3"], "unknown cnf setting"),
                                          (["--budget", "10"], "below the cheapest"),
                                          (["--budget", "nope=30%"], "unknown cost")])
def test_a_failed_overwrite_leaves_the_old_run_as_it_was(run, capsys, bad, message):
    before = files(run)
    refused(capsys, ["search", *SHORT, *bad, "--out", str(run), "--overwrite"], message)
    assert files(run) == before


def test_an_overwrite_that_diverges_in_its_first_epoch_keeps_the_old_run(run, capsys):
    before = files(run)
    refused(capsys, ["search", *SHORT, "--search-config", "lr=1e30", "max_nonfinite_steps=3", "--out", str(run),
                     "--overwrite"], "NaN or infinite", code=4)
    assert files(run) == before and not (run / rundir.STAGING).exists()


def test_an_overwrite_killed_in_its_first_epoch_keeps_the_old_run(run, capsys):
    before = files(run)
    r = subprocess.run([sys.executable, "-m", "bsnet", "search", *SHORT, "--out", str(run), "--overwrite"],
                       env={**ENV, runs.KILL_ENV: "step:5"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL
    assert (run / rundir.STAGING).is_dir()  # the new run, not yet replacing the old one
    assert {n: b for n, b in files(run).items() if not n.startswith(rundir.STAGING)} == before
    assert main(["search", "--out", str(run), "--resume"]) == 0  # the old run, which had finished
    assert "already finished" in capsys.readouterr().out
    assert main(["search", *SHORT, "--out", str(run), "--overwrite"]) == 0  # the leftover is cleared
    assert not (run / rundir.STAGING).exists()
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0]


def test_overwrite_never_follows_a_link_out_of_the_run(run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.onnx").write_bytes(b"the user's")
    (run / "export").symlink_to(elsewhere)
    doc = json.loads((run / rundir.MARKER).read_text())
    (run / rundir.MARKER).write_text(json.dumps({**doc, "written": doc["written"] + ["export/", "export/model.onnx"]}))
    assert main(["search", *SHORT, "--out", str(run), "--overwrite"]) == 0
    assert (elsewhere / "model.onnx").read_bytes() == b"the user's"


# ---- export, eval, train: only what bsnet wrote --------------------------------------------------------------
def test_export_never_replaces_a_file_it_did_not_write(run, capsys):
    (run / "export").mkdir()
    (run / "export" / "model.safetensors").write_bytes(b"my model")
    before = files(run)
    refused(capsys, ["export", str(run)], "was not written by bsnet")
    assert files(run) == before
    assert main(["export", str(run), "--format", "python"]) == 0  # a file of another name: written beside it
    assert main(["export", str(run), "--format", "python"]) == 0  # and replaced, since bsnet wrote it
    assert (run / "export" / "model.safetensors").read_bytes() == b"my model"
    assert (run / "export" / "found_network.py").exists()


@pytest.mark.parametrize("fmt, name", [("pt", "mine.safetensors"), ("pt", "mine.architecture.json"),
                                       ("python", "mine.py"), ("python", "mine.safetensors"), ("onnx", "mine.onnx")])
def test_export_outside_the_run_never_replaces_a_file(run, tmp_path, capsys, fmt, name):
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / name).write_bytes(b"the user's")
    stem = {"pt": ".safetensors", "python": ".py", "onnx": ".onnx"}[fmt]
    before = files(tmp_path)
    refused(capsys, ["export", str(run), "--format", fmt, "--out", str(elsewhere / ("mine" + stem))], "exists")
    assert files(tmp_path) == before


def test_a_sweep_never_replaces_the_users_table_or_plot(tmp_path, capsys):
    (tmp_path / "pareto.png").write_bytes(b"my plot")
    before = files(tmp_path)
    refused(capsys, ["sweep", "--budgets", "20%", "--out", str(tmp_path), *TINY], "was not written by bsnet")
    assert files(tmp_path) == before and not (tmp_path / "flops-20").exists()


@pytest.mark.parametrize("fmt, out", [("python", "weights.py"), ("pt", "weights.safetensors"),
                                      ("pt", "checkpoints/x.safetensors"), ("onnx", "config.yaml"),
                                      ("pt", "final/model.safetensors"), ("python", "x.safetensors")])
def test_export_never_writes_over_the_run_it_reads(run, capsys, fmt, out):
    before = files(run)
    refused(capsys, ["export", str(run), "--format", fmt, "--out", str(run / out)], "")
    assert files(run) == before


def test_eval_never_replaces_a_users_eval_json(run, capsys):
    (run / "eval.json").write_text("my evaluation")
    before = files(run)
    refused(capsys, ["eval", str(run)], "was not written by bsnet")
    assert files(run) == before


def test_train_never_replaces_a_users_final_folder(run, capsys):
    (run / "final").mkdir()
    (run / "final" / "model.safetensors").write_bytes(b"my model")
    before = files(run)
    refused(capsys, ["train", str(run), "--epochs", "1"], "was not written by bsnet")
    assert files(run) == before
    (run / "final" / "model.safetensors").unlink()
    (run / "final" / "notes.txt").write_text("mine")
    assert main(["train", str(run), "--epochs", "1"]) == 0  # into the user's folder, beside their file
    assert main(["train", str(run), "--epochs", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "final").iterdir()) == ["metrics.jsonl", "model.safetensors", "notes.txt",
                                                                 "result.json"]
    assert (run / "final" / "notes.txt").read_text() == "mine" and not (run / "final.partial").exists()


# ---- the lock (defect 5) --------------------------------------------------------------------------------------
@pytest.fixture
def holder(run):
    """Another process holding the run's lock."""
    code = ("import sys, time; from pathlib import Path; from bsnet import rundir\n"
            "with rundir.locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    yield p
    p.kill()
    p.wait()


@pytest.mark.parametrize("argv", [["search", "--out", "RUN", "--resume"], ["export", "RUN"], ["eval", "RUN"],
                                  ["train", "RUN", "--epochs", "1"], ["search", *SHORT, "--out", "RUN", "--overwrite"]])
def test_a_second_writer_is_refused_naming_the_holder(run, holder, capsys, argv):
    if argv[-1] == "--resume":
        unfinished(run)
    before = files(run)
    argv = [str(run) if a == "RUN" else a for a in argv]
    refused(capsys, argv, f"in use by another bsnet process (pid {holder.pid})")
    assert files(run) == before


def test_reading_a_locked_run_and_exporting_elsewhere_work(run, holder, tmp_path, capsys):
    assert main(["export", str(run), "--out", str(tmp_path / "m.safetensors")]) == 0
    assert main(["show", str(run)]) == 0


def test_kill_9_releases_the_lock(run, holder, capsys):
    unfinished(run)
    refused(capsys, ["search", "--out", str(run), "--resume"], "in use")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert main(["search", "--out", str(run), "--resume"]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_resume_of_a_run_still_running_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "bsnet", "search", *TINY[:3], "--epochs", "50", "--out",
                              str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert p.poll() is None, log.read_text()  # still searching
        refused(capsys, ["search", "--out", str(out), "--resume"], f"(pid {p.pid})")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(len(epochs)))  # each epoch once
    with rundir.locked(out):  # released by the kill
        pass


def test_the_lock_is_taken_again_by_its_own_process(tmp_path):
    with rundir.locked(tmp_path):
        with rundir.locked(tmp_path):
            assert (tmp_path / rundir.LOCK).read_text().strip() == str(os.getpid())
    probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from bsnet import rundir\n"
                            "with rundir.locked(Path(sys.argv[1])): print('ok')", str(tmp_path)],
                           env=ENV, capture_output=True, text=True)
    assert probe.stdout.strip() == "ok"  # released once the outer one ends


# ---- checkpoints after a restart from scratch (defect 7) ------------------------------------------------------
def test_a_fresh_checkpoint_outlives_the_damaged_ones_it_restarted_from(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for epoch in (2, 3):
        runs.save_epoch_checkpoint(ckpt, epoch, {"x": epoch}, {"epoch": epoch})
        (ckpt / f"epoch-{epoch:04d}.safetensors").write_bytes(b"damaged")
    state, _, _ = runs.load_latest_checkpoint(ckpt)
    assert state is None  # every one damaged: the run starts again
    runs.save_epoch_checkpoint(ckpt, 1, {"x": 1}, {"epoch": 1})
    state, meta, messages = runs.load_latest_checkpoint(ckpt)
    assert meta["epoch"] == 1 and messages == []
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-0001.json", "epoch-0001.safetensors"]


def test_a_run_restarted_from_scratch_and_stopped_again_resumes_from_its_fresh_epoch(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert main(["search", *SHORT[:3], "--epochs", "3", "--finetune-epochs", "0", "--out", str(run)]) == 0
    unfinished(run)
    for f in (run / "checkpoints").glob("epoch-*.safetensors"):  # epochs 2 and 3, both damaged
        f.write_bytes(b"damaged")
    save = runs.save_epoch_checkpoint

    def stop_after_the_first(directory, epochs_done, *a, **kw):
        save(directory, epochs_done, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "save_epoch_checkpoint", stop_after_the_first)
    assert main(["search", "--out", str(run), "--resume"]) == 130
    assert "no intact checkpoint" in capsys.readouterr().err
    monkeypatch.setattr(runs, "save_epoch_checkpoint", save)
    assert main(["search", "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "no intact checkpoint" not in err and "falling back" not in err and "Traceback" not in err
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
