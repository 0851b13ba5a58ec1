"""Faults for real, in subprocesses: SIGKILL at deterministic points and on a timer, corrupted and crafted
checkpoints, diverging losses. A resumed run must end bitwise equal to an uninterrupted one.

The kill points use the test-only hook `BSNET_TEST_KILL_AT` (see bsnet/runs.py): `step:N`,
`checkpoint:tensors:epoch-NNNN`, `checkpoint:json:epoch-NNNN`.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from bsnet.export import read_weights
from bsnet.runs import KILL_ENV, load_latest_checkpoint

ARGS = ["search", "--supernet-config", "layers=3", "channels=8", "--epochs", "3", "--finetune-epochs", "1",
        "--seed", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same arithmetic in every process


def bsnet(out, *extra, kill=None, timeout=300):
    env = {**ENV, **({KILL_ENV: kill} if kill else {})}
    return subprocess.run([sys.executable, "-m", "bsnet", *ARGS, "--out", str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=timeout)


def final_state(out):
    state, meta, _ = load_latest_checkpoint(out / "checkpoints")
    return state["search"], meta


def assert_same_run(a, b):
    assert (a / "architecture.json").read_bytes() == (b / "architecture.json").read_bytes()
    # safetensors writes its metadata map in no fixed order: compare what the file holds
    wa, arch_a = read_weights(a / "weights.safetensors")
    wb, arch_b = read_weights(b / "weights.safetensors")
    assert arch_a == arch_b and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, ma = final_state(a)
    sb, mb = final_state(b)
    assert ma["epoch"] == mb["epoch"] == 3
    assert torch.equal(sa["gates"]["logits"], sb["gates"]["logits"])
    assert sa["net"].keys() == sb["net"].keys()
    assert all(torch.equal(sa["net"][k], sb["net"][k]) for k in sa["net"])
    epochs = [json.loads(l)["epoch"] for l in (b / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = bsnet(out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("kill", ["step:30", "checkpoint:tensors:epoch-0002", "checkpoint:json:epoch-0002",
                                  "checkpoint:tensors:best"])
def test_killed_run_resumes_bitwise_equal(reference, tmp_path, kill):
    out = tmp_path / "run"
    r = bsnet(out, kill=kill)
    assert r.returncode == -signal.SIGKILL
    assert not (out / "architecture.json").exists()
    r = bsnet(out, "--resume")
    assert r.returncode == 0, r.stderr
    assert_same_run(reference, out)


def test_killed_on_a_timer_resumes_bitwise_equal(reference, tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "bsnet", *ARGS, "--out", str(out)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:  # wait until training is under way
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = bsnet(out, "--resume")
    assert r.returncode == 0, r.stderr
    assert_same_run(reference, out)


def test_corrupted_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    out = tmp_path / "run"
    assert bsnet(out, kill="step:50").returncode == -signal.SIGKILL  # in epoch 3: epochs 1 and 2 checkpointed
    blob = out / "checkpoints" / "epoch-0002.safetensors"
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])  # truncated
    r = bsnet(out, "--resume")
    assert r.returncode == 0, r.stderr
    assert "epoch-0002" in r.stderr and "falling back" in r.stderr
    assert_same_run(reference, out)


def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path):
    out = tmp_path / "run"
    assert bsnet(out, kill="step:25").returncode == -signal.SIGKILL
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = out / "checkpoints"
    evil = pickle.dumps(Evil())
    (ckpt / "epoch-0009.safetensors").write_bytes(evil)
    import hashlib
    doc = json.loads((ckpt / "epoch-0001.json").read_text())
    doc["sha256"] = hashlib.sha256(evil).hexdigest()  # the checksum even matches: the format still refuses it
    (ckpt / "epoch-0009.json").write_text(json.dumps(doc))
    r = bsnet(out, "--resume")
    assert r.returncode == 0, r.stderr
    assert "not a valid safetensors file" in r.stderr
    assert not marker.exists()


def test_diverging_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    r = bsnet(out, "--search-config", "lr=1e30", "max_nonfinite_steps=3")
    assert r.returncode == 4, r.stderr
    assert "NaN or infinite for 3 steps in a row" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "architecture.json").exists()


def test_nonfinite_steps_are_skipped_and_counted():
    import bsnet as b
    from bsnet.budgets import parse_budget
    from bsnet.search import BudgetedSearch, NonFiniteLossError, SearchConfig
    net = b.create_supernet("cnf", layers=2, channels=4, image_size=8, in_channels=1)
    search = BudgetedSearch(net, [parse_budget("50%")], SearchConfig(max_nonfinite_steps=3))
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert search.step(x * float("nan"), y).skipped
    assert search.step(x * float("nan"), y).skipped
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing updated
    assert not search.step(x, y).skipped and search.nonfinite_in_a_row == 0 and search.nonfinite_steps == 2
    for _ in range(2):
        search.step(x * float("inf"), y)
    with pytest.raises(NonFiniteLossError):
        search.step(x * float("nan"), y)


def test_incompatible_checkpoint_version_is_refused(tmp_path):
    out = tmp_path / "run"
    assert bsnet(out, kill="step:25").returncode == -signal.SIGKILL
    doc_path = out / "checkpoints" / "epoch-0001.json"
    doc = json.loads(doc_path.read_text())
    doc["meta"]["format_version"] = 7
    doc_path.write_text(json.dumps(doc))
    r = bsnet(out, "--resume")
    assert r.returncode == 2 and "format version 7" in r.stderr and "version 1" in r.stderr
