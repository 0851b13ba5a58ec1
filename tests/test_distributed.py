"""Data-parallel search with torchrun on CPU (gloo over loopback): ranks stay bitwise identical. The collective
helpers with one rank."""
import json
import os
import subprocess
import sys

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from bsnet import distributed
from tests.cli_options import TINY

ARGS = ["search", *TINY]


def torchrun(out, state_dir, *extra, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BSNET_TEST_RANK_STATE_DIR": str(state_dir), **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "bsnet", *ARGS, "--out", str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=600)


def test_two_processes_stay_identical_and_write_once(tmp_path):
    out = tmp_path / "run"
    r = torchrun(out, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # gates, weights, BN statistics, λ
    assert r.stdout.count("run directory:") == 1  # one summary: rank 0 alone reports and writes
    epochs = [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["cost"]["flops"] <= arch["budget"]["flops"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.safetensors", "rank1.safetensors", "run"]

    # --resume works the same way: a finished run is left as it is
    r = torchrun(out, tmp_path, "--resume")
    assert r.returncode == 0 and "already finished" in r.stdout


def test_killed_distributed_run_resumes_to_the_same_state(tmp_path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir()
    cut_dir.mkdir()
    assert torchrun(tmp_path / "ref-run", ref_dir).returncode == 0
    # every rank reaches step 15 (epoch 2) at the same time and kills itself there (test-only hook)
    killed = torchrun(tmp_path / "cut-run", cut_dir, env={"BSNET_TEST_KILL_AT": "step:15"})
    assert killed.returncode != 0 and not (tmp_path / "cut-run" / "architecture.json").exists()
    r = torchrun(tmp_path / "cut-run", cut_dir, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(ref_dir / "rank1.safetensors")), load_file(str(cut_dir / "rank1.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ref-run" / "architecture.json").read_bytes() == \
        (tmp_path / "cut-run" / "architecture.json").read_bytes()


def one_rank_collectives(backend: str, tmp_path) -> None:
    """bsnet's collective helpers in a one-process group of `backend` (nccl carries CUDA tensors only)."""
    dist.init_process_group(backend, store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        assert distributed.sum_over_ranks([1.0, 2.5]) == [1.0, 2.5]
        assert distributed.broadcast({"limits": [3.0]}) == {"limits": [3.0]}
        distributed.barrier()
    finally:
        dist.destroy_process_group()


def test_collectives_with_one_gloo_rank_and_without_a_group(tmp_path):
    assert distributed.sum_over_ranks([1.0, 2.5]) == [1.0, 2.5] and distributed.broadcast(3) == 3
    distributed.barrier()  # no group: nothing to wait for
    one_rank_collectives("gloo", tmp_path)
