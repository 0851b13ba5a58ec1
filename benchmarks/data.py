"""Data benchmark: does loading keep up with training?

On the shared CIFAR-10 JPEG tarball (`../shared/datasets/cifar10-jpeg.tar.gz`, 60,000 images), extracted once
into a cache folder, figures printed as `name=value` lines:

* `extract_s`: extracting the tarball (only when the folder is not there yet).
* `first_load_s`: `load_dataset("cifar10", folder)` with no cache: listing, decoding every JPEG with Pillow in
  two worker processes, writing the cached array, splitting and normalising. `cache_mb`: the cache's size.
* `cached_load_s`: the same call once the cache exists (the time every later run pays); `load_speedup`.
* `batch_ms`, `batch_images_per_s`: drawing one shuffled training batch (uint8 -> normalised float) and
  augmenting it (random crop with 4-pixel padding, horizontal flip), median over a whole epoch of batches.
* `step_ms`, `step_images_per_s`: one training step of the `resnet_fabric` default super network (full mask)
  on such a batch: forward, cross-entropy, backward, SGD step; median over `--steps` steps after 2 untimed.
* `batch_over_step`: `batch_ms / step_ms`, the share of a step that feeding it costs; goal <= 0.05.

Run: `python benchmarks/data.py` (batch 128; `--data-dir` to use a folder extracted already).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bsnet
from bsnet.data import batches, load_dataset
from bsnet.data.cache import cache_paths

TARBALL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
GOAL = 0.05


def default_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bsnet" / "datasets" / "cifar10-jpeg"


def extract(tarball: Path, dest: Path) -> float:
    """Extract `tarball` into `dest` (via a temporary sibling of this process's own, so a half extraction is never
    taken for data and two benchmarks started together do not trip over each other: the first to finish wins)."""
    t = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent))
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
    try:
        tmp.rename(dest)
    except OSError:
        if not dest.is_dir():
            raise
        shutil.rmtree(tmp)  # another process extracted it first
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="extracted CIFAR-10 image folder "
                        "(default: the shared tarball, extracted under the user cache)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (median taken)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} python={platform.python_version()} "
          f"cpus={os.cpu_count()} batch_size={args.batch_size} steps={args.steps} "
          f"loadavg_1min={os.getloadavg()[0]:.2f}", flush=True)  # other work on the machine skews every figure

    folder = args.data_dir or default_folder()
    if not folder.is_dir():
        if not TARBALL.is_file():
            print(f"error: {folder} does not exist and {TARBALL} is absent", file=sys.stderr)
            return 2
        print(f"extract_s={extract(TARBALL, folder):.2f}", flush=True)

    for p in cache_paths(folder, "image-folder"):  # a cold start: no cached array
        p.unlink(missing_ok=True)
    t = time.perf_counter()
    load_dataset("cifar10", folder)
    first = time.perf_counter() - t
    cached = [p for p in cache_paths(folder, "image-folder") if p.is_file()]
    print(f"first_load_s={first:.2f}", flush=True)
    if cached:
        print(f"cache_mb={cached[0].stat().st_size / 2**20:.0f}", flush=True)
    t = time.perf_counter()
    data = load_dataset("cifar10", folder)
    again = time.perf_counter() - t
    print(f"cached_load_s={again:.2f}\nload_speedup={first / again:.1f}", flush=True)

    # Feeding: a whole epoch of shuffled, augmented training batches.
    g = torch.Generator().manual_seed(0)
    times, inputs = [], None
    it = batches(data.train, args.batch_size, shuffle=True, generator=g, drop_last=True)
    while True:
        t = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        x, y = data.augment(x, y, g)
        times.append(time.perf_counter() - t)
        inputs = inputs or (x, y)
    batch = statistics.median(times)
    print(f"batch_ms={batch * 1e3:.2f}\nbatch_images_per_s={args.batch_size / batch:.0f}", flush=True)

    # Training: the resnet_fabric default, full mask, SGD.
    torch.manual_seed(0)
    net = bsnet.create_supernet("resnet_fabric")
    mask = net.full_mask()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = inputs
    times = []
    for i in range(args.steps + 2):
        t = time.perf_counter()
        loss = F.cross_entropy(net(x, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    print(f"step_ms={step * 1e3:.1f}\nstep_images_per_s={args.batch_size / step:.0f}", flush=True)
    print(f"batch_over_step={batch / step:.4f}\nbatch_over_step_goal={GOAL}", flush=True)
    print(f"loadavg_1min_end={os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
