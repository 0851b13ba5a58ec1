"""After a search: retrain a run's found network into `final/`, and measure the exported network itself.

No printing: progress goes through a callback, as in `bsnet.pipeline`.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bsnet import runs
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
    (model.safetensors, metrics.jsonl, result.json). `final/` is replaced only once the new training has finished:
    it is built in `final.partial/`. Returns result.json's content."""
    final = run_dir / "final"
    if (final / "result.json").exists() and not overwrite:
        raise runs.RunDirError(f"{final} already holds a trained network: pass --overwrite to replace it")
    staging = run_dir / "final.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
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
    replaced = run_dir / "final.replaced"  # the earlier training, moved aside until the new one is in place
    shutil.rmtree(replaced, ignore_errors=True)
    if final.exists():
        final.rename(replaced)
    staging.rename(final)
    shutil.rmtree(replaced, ignore_errors=True)
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
