"""After a search: retrain a run's found network into `final/`, and measure the exported network itself.

No printing: progress goes through a callback, as in `bsnet.pipeline`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bsnet import rundir, runs
from bsnet.architecture import Architecture
from bsnet.costs import LatencyCost, ParallelCost, all_costs
from bsnet.data import DataSplits, batches, num_batches
from bsnet.supernet import SuperNetwork
from bsnet.train import TrainConfig, accuracy, mean_iou, train_network


def retrain(run_dir: Path, module: nn.Module, arch: Architecture, net: SuperNetwork, data: DataSplits,
            cfg: TrainConfig, *, finetune: bool, device: torch.device | str = "cpu",
            parallel_workers: int | None = None, overwrite: bool = False,
            progress: Callable[[str, int], Callable[[str], None]] | None = None) -> dict[str, Any]:
    """Train `module` (the run's exported network: fresh or search weights) with `cfg` and write `final/`
    (model.safetensors, metrics.jsonl, result.json), under the run's lock. `final/` is replaced only once the new
    training has finished (it is built in `final.partial/`), and only its files bsnet wrote. Returns result.json's
    content."""
    final, staging = run_dir / "final", run_dir / "final.partial"
    with rundir.locked(run_dir):
        rundir.claim(run_dir, "final.partial/", "final/", *(f"{d}/{f}" for d in ("final", "final.partial")
                                                            for f in rundir.FINAL_FILES))
        if (final / "result.json").exists() and not overwrite:
            raise runs.RunDirError(f"{final} already holds a trained network: pass --overwrite to replace it")
        rundir.remove_written(run_dir, "final.partial/")  # a training that stopped before its end
        staging.mkdir(exist_ok=True)
        metrics_path = staging / "metrics.jsonl"
        runs.atomic_write_text(metrics_path, "")
        advance = progress("train", num_batches(data.train, cfg.batch_size) * cfg.epochs) if progress else None
        for record in train_network(module, data, cfg, device=device,
                                    on_step=(lambda loss: advance(f"loss {loss:.3f}")) if advance else None):
            runs.append_metrics(metrics_path, record)
        module.cpu().eval()
        result = {"test_acc": accuracy(module, batches(data.test, 256)),
                  "val_acc": accuracy(module, batches(data.val, 256)),
                  "cost": all_costs(net, arch.mask(net.gate_names), parallel_workers=parallel_workers),
                  "epochs": cfg.epochs, "start": "search weights (fine-tune)" if finetune else "from scratch",
                  "train_config": dataclasses.asdict(cfg)}
        from bsnet.export import save_weights
        save_weights(module, arch, staging / "model.safetensors")
        runs.atomic_write_text(staging / "result.json", json.dumps(result, indent=1))
        final.mkdir(exist_ok=True)
        (final / "result.json").unlink(missing_ok=True)  # first: a final/ without result.json is an unfinished one
        for name in rundir.FINAL_FILES:  # result.json last
            os.replace(staging / name, final / name)
        rundir.remove_written(run_dir, "final.partial/")
    return result


def measure(module: nn.Module, net: SuperNetwork, mask: torch.Tensor, data: DataSplits, *, batch_size: int = 1,
            parallel_workers: int | None = None) -> dict[str, Any]:
    """What the exported network itself measures: test accuracy (and mean IoU), FLOPs by PyTorch's
    FlopCounterMode, parameters, end-to-end latency at `batch_size`, beside the per-node latency estimate and the
    parallel steps of its architecture in the super network."""
    from torch.utils import benchmark
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, *net.input_shape))
    xb = torch.randn(batch_size, *net.input_shape)
    with torch.no_grad():
        module(xb)
        latency = benchmark.Timer("m(x)", globals={"m": module, "x": xb}).blocked_autorange(min_run_time=0.3).median
    report = {"test_acc": accuracy(module, batches(data.test, 256))}
    if data.task == "segmentation":
        report["test_miou"] = mean_iou(module, batches(data.test, 256), data.num_classes)
    return {**report, "flops": int(counter.get_total_flops()), "params": sum(p.numel() for p in module.parameters()),
            "latency": latency, "latency_per_node_estimate": float(LatencyCost(batch_size=batch_size)(net, mask)),
            "latency_batch_size": batch_size, "parallel": float(ParallelCost(parallel_workers)(net, mask))}
