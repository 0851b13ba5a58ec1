"""Distributed benchmark: samples per second of `bsnet search` run data-parallel under torchrun, with 1 and with
2 processes on the same machine.

Each run is the command line a user types:

    python -m torch.distributed.run --standalone --nproc_per_node=N -m bsnet search --supernet resnet_fabric \
        --dataset cifar10 --data-dir SLICE --val-size 200 --epochs 4 --finetune-epochs 0 --batch-size 128/N ...

on a CIFAR-10 slice (a seeded, stratified choice of 2,200 training and 500 test images of the shared JPEG
tarball, linked into an image folder; 200 of the training images are held out for validation, so 2,000 are
trained on) or on the embedded `digits` (`--dataset digits`). Throughput is read from the run's own
`metrics.jsonl`: its `seconds` field (time since the first epoch began, written after each epoch) gives each
epoch's duration; samples per epoch are the examples the epoch trained on (`steps x per-process batch x N`,
drop_last batches as `bsnet search` draws them). The first epoch (start-up, first allocations) is left out
when there are two or more. An epoch's time includes what `bsnet search` does at its end (evaluation of the
found architecture on the validation split, checkpoint): the same work at every N.

By default the GLOBAL batch is fixed (`--batch-size 128` split over the N processes: the same optimisation,
run faster or not), and the machine's cores are split between the processes (`--threads`, default
OMP_NUM_THREADS or all cores, divided by N, at least 1 per process), so that every N uses the same cores.
`--batch-mode per-process` keeps each process's batch at `--batch-size` instead (the global batch grows).

Figures, printed as `distributed.<name>=<value>` lines: `samples_per_s_<N>` (mean over the timed epochs),
`epoch_s_<N>` (each epoch's seconds), `run_s_<N>` (the whole torchrun command, start-up and the end-of-search
work included), and `ratio_<N>_over_1` (samples_per_s_N / samples_per_s_1: > 1 is a speed-up). On a 2-core CPU
no gain is expected (the two processes share the two cores); the ratio measures the cost of the all-reduces,
the duplicated per-step work (architecture sampling, costs) and the smaller per-process batches.

`--device cuda` runs every process on its own GPU (nccl, `LOCAL_RANK` picks it); an N larger than the number of
GPUs is skipped.

Run: `python benchmarks/distributed.py` (resnet_fabric on the CIFAR slice, 4 epochs, N = 1 and 2: a few minutes).
`--quick`: a smoke run (400 training images, 2 epochs, `resnet_fabric` at 4/8/16 channels, 1 block per stage);
its figures are not results.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bsnet.data import load_dataset, num_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10 as common  # noqa: E402  (benchmarks/cifar10.py: the shared tarball, machine line)


def cifar_slice(folder: Path, dest: Path, n_train: int, n_test: int, seed: int) -> Path:
    """An image folder of `n_train` training and `n_test` test images of `folder` (as many of each class, picked
    with `seed`), as symbolic links; made once, reused."""
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        classes = sorted(p.name for p in (folder / split).iterdir() if p.is_dir())
        per_class = -(-n // len(classes))
        for c in classes:
            files = sorted(p.name for p in (folder / split / c).iterdir() if p.is_file())
            pick = torch.randperm(len(files), generator=g)[:per_class].tolist()
            out = dest / split / c
            out.mkdir(parents=True, exist_ok=True)
            for i in pick:
                link = out / files[i]
                if not link.exists():
                    link.symlink_to((folder / split / c / files[i]).resolve())
    marker.touch()
    return dest


def epoch_seconds(metrics: Path) -> list[float]:
    """Each epoch's duration, from the cumulative `seconds` field of `metrics.jsonl`."""
    seconds = [json.loads(line)["seconds"] for line in metrics.read_text().splitlines() if line.strip()]
    return [b - a for a, b in zip([0.0] + seconds[:-1], seconds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--dataset", choices=("cifar10-slice", "digits"), default="cifar10-slice")
    parser.add_argument("--train-images", type=int, default=2200, help="CIFAR slice: training images "
                        "(validation held out of them)")
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--supernet", default="resnet_fabric")
    parser.add_argument("--supernet-config", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--budget", default="30%")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batch-mode", choices=("global", "per-process"), default="global",
                        help="global: --batch-size split over the processes (default); per-process: each gets it")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads shared out between the processes (default: OMP_NUM_THREADS or all cores)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process, nccl)")
    parser.add_argument("--data-dir", type=Path, default=None, help="extracted CIFAR-10 image folder")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the runs go (default: a temporary "
                        "folder, removed at the end)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data and network (figures not results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_images, args.val_images, args.test_images, args.epochs = 480, 80, 100, 2
        args.supernet_config = ["blocks=1", "channels=[4,8,16]", *args.supernet_config]
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    cuda = args.device.startswith("cuda")
    gpus = torch.cuda.device_count() if cuda else 0
    if cuda and gpus == 0:
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    print(common.machine_line(procs=",".join(map(str, args.procs)), device=args.device, total_threads=threads,
                              dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                              batch_mode=args.batch_mode, quick=args.quick, gpus=gpus), flush=True)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bsnet-distributed-"))
    work.mkdir(parents=True, exist_ok=True)
    data_args: list[str]
    if args.dataset == "digits":
        data_args = ["--dataset", "digits"]
        data = load_dataset("digits")
    else:
        folder = common.cifar_folder(args.data_dir)
        slice_dir = cifar_slice(folder, common.default_folder().parent / f"cifar10-slice-{args.train_images}-"
                                f"{args.test_images}", args.train_images, args.test_images, 0)
        data_args = ["--dataset", "cifar10", "--data-dir", str(slice_dir), "--val-size", str(args.val_images)]
        data = load_dataset("cifar10", slice_dir, val_size=args.val_images)  # decoded and cached here, untimed
    print(f"distributed.train_examples={len(data.train)}", flush=True)

    figures: dict[str, object] = {}
    rates: dict[int, float] = {}
    try:
        for n in args.procs:
            if cuda and n > gpus:
                print(f"distributed.skipped_{n}=needs {n} GPUs, {gpus} visible", flush=True)
                continue
            per_process = args.batch_size // n if args.batch_mode == "global" else args.batch_size
            if per_process < 2:
                print(f"distributed.skipped_{n}=batch {args.batch_size} too small for {n} processes", flush=True)
                continue
            out = work / f"run-{n}"
            shutil.rmtree(out, ignore_errors=True)
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // n))}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   "-m", "bsnet", "search", "--supernet", args.supernet, *data_args, "--budget", args.budget,
                   "--epochs", str(args.epochs), "--finetune-epochs", "0", "--batch-size", str(per_process),
                   "--seed", "0", "--device", args.device, "--out", str(out)]
            if args.supernet_config:
                cmd += ["--supernet-config", *args.supernet_config]
            t = time.perf_counter()
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            run_s = time.perf_counter() - t
            (work / f"run-{n}.log").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
            if r.returncode != 0:
                print(f"error: {n} process(es): exit code {r.returncode}; the end of its output:\n"
                      f"{(r.stdout + r.stderr)[-3000:]}", file=sys.stderr)
                return 1
            epochs = epoch_seconds(out / "metrics.jsonl")
            timed = epochs[1:] if len(epochs) > 1 else epochs
            samples = num_batches(data.train, per_process, drop_last=True, world=n) * per_process * n
            rate = samples / statistics.fmean(timed)
            rates[n] = rate
            figures.update({f"samples_per_s_{n}": rate, f"epoch_s_{n}": epochs, f"run_s_{n}": run_s,
                            f"samples_per_epoch_{n}": samples, f"per_process_batch_{n}": per_process,
                            f"threads_per_process_{n}": max(1, threads // n)})
            print(f"distributed.samples_per_s_{n}={rate:.1f}", flush=True)
            print(f"distributed.epoch_s_{n}={','.join(f'{e:.2f}' for e in epochs)}", flush=True)
            print(f"distributed.samples_per_epoch_{n}={samples} (per-process batch {per_process}, "
                  f"{max(1, threads // n)} threads each)", flush=True)
            print(f"distributed.run_s_{n}={run_s:.1f}", flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if 1 in rates:
        for n, rate in rates.items():
            if n != 1:
                figures[f"ratio_{n}_over_1"] = rate / rates[1]
                print(f"distributed.ratio_{n}_over_1={rate / rates[1]:.3f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "figures": figures,
                                         "machine": common.machine_info()}, indent=1))
        print(f"written: {args.json}")
    if args.quick:
        print("NOTE: --quick is a smoke run; its figures are not results.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
