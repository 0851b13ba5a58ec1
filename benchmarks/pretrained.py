"""Head to head on a trained network: a CIFAR-10 ResNet-20 fitted to 50% and 30% of its FLOPs by bsnet and by the
tools users pick instead (Torch-Pruning, NVIDIA ModelOpt), at equal compute.

The trained network is a plain CIFAR ResNet-20 written here as a user would write it (`ResNet20`: 3x3 convs,
16/32/64 channels, 3 basic blocks per stage, 1x1 conv + BatchNorm projection shortcuts where the shape changes),
trained once on the 45,000 training images of the shared CIFAR-10 copy that remain after holding out 5,000 for
validation (`load_dataset("cifar10", folder, val_size=5000, seed=0)`), and tested on the full 10,000 test images.
Recipe: batch 128, SGD (momentum 0.9, Nesterov, weight decay 5e-4), learning rate 0.1 on a cosine schedule stepped
per batch over 150 epochs, the standard augmentation (4-pixel pad, random crop, flip), seed 0, the steps under
bfloat16 autocast with channels-last tensors (`--precision bf16`, the default: the weights, the optimiser, evaluation
and export stay float32; an epoch 42 s against 93 s in float32 at 2 threads on this benchmark's CPU, whose AMX units
run oneDNN's bfloat16 convolutions; `--precision fp32` where a CPU has no bfloat16 arithmetic). The run is
resumable: after every epoch the model, optimiser and schedule are written to a checkpoint
(`benchmarks/results/pretrained/checkpoint.pt`, not committed), and the same command continues from it; every
epoch's data order and augmentation come from a generator seeded by the epoch. At the end the weights
(`resnet20.safetensors`) and the log (`resnet20-train.jsonl`: one line per epoch, then the test accuracy) are
written beside it and committed, so that every later run starts from the same network.

The methods (`METHODS`), each from those weights, each at a FLOPs budget (`FlopCounterMode`, 2 FLOPs per
multiply-add) of a share of the trained network's:

* `bsnet`: `bsnet.fit` on the trained module, `width_groups=4` plus depth, 3 search epochs, the found architecture
  grown to spend the budget (search setting `fill_budgets`: its most probable absent gates added while the budget
  holds, then kept gates exchanged for costlier ones), the found network built from the trained weights (each block
  keeping its channels of largest norm: `fit`'s way); `bsnet-width`: the same with `gate="width"` (widths only:
  every block kept, at one of its 4 width groups at least) and 1 search epoch; `depth`: the same with
  `width_groups=1` (whole blocks only: it lands where whole blocks allow, its fraction reported).
* `torch-pruning`: Torch-Pruning's group-norm method of its CIFAR benchmark without its optional sparsity-learning
  stage (`GroupNormPruner`, group magnitude importance with p=2, global pruning, 400 iterative steps without training
  between them), stopped at the first step within the budget; `torch-pruning-inner`: the same with the residual
  stream's channels fixed (every layer that writes the stream ignored: the stem, each block's second conv and its
  projection), so only the blocks' inner channels are pruned, one at a time: bsnet's search space.
* `modelopt`: ModelOpt FastNAS (`mtp.prune(mode="fastnas")`), its sensitivity map scored on 2,000 validation images
  with BatchNorm recalibrated for each choice on the 50 batches of 32 training images it queues, channels in steps
  of 4.
* `uniform`: every block's inner width scaled by one factor (the largest within the budget), keeping the channels
  of largest L1 norm.

Equal compute, counted in image passes: every method gets 10 epochs' worth of passes over the 45,000 training images,
everything counted: an image through a training step 1 per epoch, through a forward-only pass (BatchNorm calibration,
scoring) a third of that (bsnet's BatchNorm recalibration of the found network, ModelOpt's sensitivity map); what is
left goes to one fine-tune recipe for every method (SGD, lr 0.01 cosine to 0, momentum 0.9, Nesterov, weight decay 5e-4,
batch 128, augmented, at the same `--precision`). A search step costs more than a fine-tune step of the smaller network
(it runs sampled architectures around the budget): the CPU-seconds of every method are recorded beside the passes. Seed
index i gives each method's search seed and the fine-tune's data order. Each record says whether the network lands in
[0.95, 1] x the budget by FlopCounterMode (`in_band`) and whether the method spent more than the 10 epochs before its
fine-tune (`over_compute`).

Run (from the repository root):

    .venv/bin/python benchmarks/pretrained.py train --threads 2            # once: ~110 min on 2 cores; resumable
    .venv/bin/python benchmarks/pretrained.py train --device cuda          # the same recipe on a GPU
    .venv/bin/python benchmarks/pretrained.py part --share 0.5 --seed 0 --methods bsnet torch-pruning --threads 2
    .venv/bin/python benchmarks/pretrained.py table --threads 2            # latency side by side, table, plot

A part runs its methods one after another and keeps each finished one (`results/pretrained/parts/*.json` and the network
as ONNX), so a part is rerun to continue; each record names the trained weights it started from (the first 16 hex digits
of their SHA-256), and a record of other weights is rerun by `part` and left out by `table`. `table` measures every
network's ONNX Runtime latency side by side in one process (batch 1 on 1 thread, batch 64 on 2 threads, median of 100
runs, the networks interleaved, idle workers sleeping instead of spinning; run it on an idle machine), writes `table.md`
and `pareto.png`, and applies the win rule: `bsnet` (and `bsnet-width`) minus a method, per seed index, a win where
the mean of the differences exceeds twice its standard error. `--quick` runs a smoke test (2,000 training images, 1
epoch in all; a fresh initialisation where the trained weights are not there yet) into `results/pretrained-quick/`.
Peers: `pip install -e '.[bench]' torch==2.13.0` (without the pin, pip may replace the CPU build of torch by a CUDA
build of a newer one that ModelOpt accepts), then `pip uninstall torchvision` (ModelOpt pulls it in; beside torch
2.13 it breaks `transformers`' imports, and nothing here needs it)."""
from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import dataclasses
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import bsnet
from bsnet.data import DataSplits, batches, load_dataset, num_batches
from bsnet.inputs import available_device
from bsnet.search import SearchConfig
from bsnet.train import accuracy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10 import cifar_folder, machine_info, subset  # noqa: E402  (benchmarks/cifar10.py: the shared CIFAR-10 copy)

RESULTS = Path(__file__).resolve().parent / "results" / "pretrained"
WEIGHTS = RESULTS / "resnet20.safetensors"
TRAIN_LOG = RESULTS / "resnet20-train.jsonl"
CHECKPOINT = RESULTS / "checkpoint.pt"
EPOCHS, BATCH, LR, MOMENTUM, WEIGHT_DECAY, SEED = 150, 128, 0.1, 0.9, 5e-4, 0


# ---- the network, as a user writes it ------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10, blocks: int = 3, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, c_in = [], widths[0]
        for i, c in enumerate(widths):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(c_in, c, 2 if i > 0 and b == 0 else 1))
                c_in = c
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))

    def blocks(self) -> list[BasicBlock]:
        """The 9 basic blocks, stage by stage."""
        return [b for stage in (self.layer1, self.layer2, self.layer3) for b in stage]


UNTRAINED_OK = False  # --quick: a fresh initialisation stands in where the trained weights are not there yet


def trained_id() -> str:
    """The first 16 hex digits of the trained weights' SHA-256: a part's record names the network it started from."""
    if not WEIGHTS.is_file():
        return "untrained"
    return hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()[:16]


def trained_resnet20() -> ResNet20:
    """The committed trained network (raises SystemExit with the command to run when it is not there yet)."""
    if not WEIGHTS.is_file() and UNTRAINED_OK:
        torch.manual_seed(0)
        return ResNet20().eval()
    if not WEIGHTS.is_file():
        raise SystemExit(f"error: {WEIGHTS} is absent: run `python benchmarks/pretrained.py train` first")
    model = ResNet20()
    model.load_state_dict(load_file(WEIGHTS))
    return model.eval()


def cifar_splits(data_dir: Path | None) -> DataSplits:
    """45,000 training / 5,000 validation images of the shared CIFAR-10 copy, and its 10,000 test images."""
    return load_dataset("cifar10", cifar_folder(data_dir), val_size=5000, seed=0)


# ---- training once, resumable --------------------------------------------------------------------------------
PRECISIONS = ("bf16", "fp32")  # the training steps' arithmetic (evaluation, search and export stay float32)


def low_precision(model: nn.Module, precision: str) -> nn.Module:
    """The model in the memory format `precision` trains in: channels-last for bfloat16 (oneDNN's bfloat16
    convolutions want it), contiguous otherwise."""
    fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
    return model.to(memory_format=fmt)


def step_inputs(x: torch.Tensor, precision: str) -> tuple[torch.Tensor, contextlib.AbstractContextManager]:
    """A training step's input in the format `precision` trains in, and the autocast to run its forward under."""
    low = precision == "bf16"
    if low:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low)


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(data: DataSplits, epochs: int, device: str = "cpu", precision: str = "bf16") -> dict:
    """Train `ResNet20` with the recipe on `device`, continuing from the checkpoint when there is one; returns the
    result."""
    torch.manual_seed(SEED)
    model = low_precision(ResNet20().to(device), precision)  # initialised on the CPU's generator whatever the device
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True)
    steps = num_batches(data.train, BATCH) * epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    log: list[dict] = []
    if CHECKPOINT.is_file():
        # our own file, read as data: tensors and plain containers only
        state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
        if (state.get("epochs"), state.get("precision", "fp32")) != (epochs, precision):
            raise SystemExit(f"error: {CHECKPOINT} was written for {state.get('epochs')} epochs at "
                             f"{state.get('precision', 'fp32')}, not {epochs} at {precision}: delete it to start again")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        log = state["log"]
        print(f"resumed after epoch {len(log)}/{epochs}", file=sys.stderr, flush=True)
    for epoch in range(len(log), epochs):
        t, c = time.perf_counter(), time.process_time()
        g = torch.Generator().manual_seed(SEED * 100_003 + epoch)
        model.train()
        loss_sum = hits = n = 0.0
        for x, y in batches(data.train, BATCH, shuffle=True, generator=g):
            x, y = data.augment(x, y, g)  # on the CPU, from the epoch's generator
            x, autocast = step_inputs(x.to(device, non_blocking=True), precision)
            y = y.to(device, non_blocking=True)
            with autocast:
                out = model(x)
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
            hits += float((out.argmax(1) == y).sum())
            n += len(y)
        train_s = time.perf_counter() - t
        val = accuracy(model, batches(data.val, 500), device)
        log.append({"epoch": epoch + 1, "train_loss": loss_sum / n, "train_acc": hits / n, "val_acc": val,
                    "lr_end": opt.param_groups[0]["lr"], "train_s": train_s,
                    "cpu_s": time.process_time() - c, "threads": torch.get_num_threads(), "precision": precision})
        _atomic_save({"epochs": epochs, "precision": precision, "model": model.state_dict(),
                      "optimizer": opt.state_dict(), "schedule": sched.state_dict(), "log": log}, CHECKPOINT)
        print(json.dumps(log[-1]), file=sys.stderr, flush=True)
    test = accuracy(model, batches(data.test, 500), device)
    tmp = WEIGHTS.with_name(WEIGHTS.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, WEIGHTS)
    result = {"test_acc": test, "val_acc": log[-1]["val_acc"], "epochs": epochs, "precision": precision,
              "train_s": sum(r["train_s"] for r in log), "machine": machine_info(device)}
    TRAIN_LOG.write_text("".join(json.dumps(r) + "\n" for r in log + [result]))
    print(f"pretrained.resnet20.test_acc={test:.4f}\nwritten: {WEIGHTS}, {TRAIN_LOG}", flush=True)
    return result


# ---- the methods -----------------------------------------------------------------------------------------------
# Equal compute: every method gets TOTAL_EPOCHS training epochs' worth of passes over the 45,000 training images.
# A training pass counts 1 per image-epoch; a pass that only runs forward (BatchNorm calibration, scoring on
# validation) counts FORWARD_SHARE of one (a forward is about a third of a training step); the rest of the budget
# goes to the common fine-tune, counted in steps.
TOTAL_EPOCHS, FORWARD_SHARE, FT_LR = 10, 1 / 3, 0.01
SEARCH_EPOCHS = 3  # bsnet's search epochs (fit's default), inside the 10
# bsnet-width's: with every block kept the search only sets widths, and one epoch of it left the trained weights less
# worn before their rebuild (50%: 87.28% mean over 3 seeds at 1 epoch, 87.00% at 3; BENCHMARKS.md)
WIDTH_SEARCH_EPOCHS = 1
OURS = ("bsnet", "bsnet-width")  # each compared with every other method by the win rule
METHODS = ("bsnet", "bsnet-width", "torch-pruning", "torch-pruning-inner", "modelopt", "uniform", "depth")
# ModelOpt recalibrates BatchNorm for each choice it scores on the batches it queued from the data loader, and only
# once its queue holds 50 (with fewer it scores every choice on the full network's statistics, warning "modelopt data
# queue not filled"): 50 batches of 32 images, 1,600 per choice.
CALIBRATION_BATCHES, CALIBRATION_BATCH = 50, 32


def flops(module: nn.Module) -> int:
    """FLOPs of one 32x32 image by `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module.eval()(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


class Meter:
    """Counts the images a method passes through networks, as training-epoch equivalents."""

    def __init__(self, n_train: int) -> None:
        self.n_train, self.trained, self.forward = n_train, 0, 0
        self.search_history: list[dict] | None = None  # bsnet's epoch records
        self.filled: list[str] = []  # the gates bsnet's fill_budgets added to its found architecture
        self.exchanged: list[str] = []  # and those it took out for costlier ones

    @property
    def epochs(self) -> float:
        return (self.trained + FORWARD_SHARE * self.forward) / self.n_train

    def batches(self, data: DataSplits, seed: int, epoch: int, *, train: bool = True) -> "Pass":
        """Epoch `epoch`'s shuffled, augmented training batches (seeded by (seed, epoch)), counted as they go."""
        return Pass(self, data, seed, epoch, train)

    def scored(self, loader: Iterable) -> Iterator:
        for x, y in loader:
            self.forward += len(y)
            yield x, y


class Pass:
    """One pass over the training batches (sized, like a DataLoader), its images counted by the meter."""

    def __init__(self, meter: Meter, data: DataSplits, seed: int, epoch: int, train: bool) -> None:
        self.meter, self.data, self.seed, self.epoch, self.train = meter, data, seed, epoch, train

    def __len__(self) -> int:
        return len(self.data.train) // BATCH

    def __iter__(self) -> Iterator:
        g = torch.Generator().manual_seed(self.seed * 100_003 + 7_919 + self.epoch)
        for x, y in batches(self.data.train, BATCH, shuffle=True, generator=g, drop_last=True):
            x, y = self.data.augment(x, y, g)
            if self.train:
                self.meter.trained += len(y)
            else:
                self.meter.forward += len(y)
            yield x, y


def fine_tune(module: nn.Module, data: DataSplits, seed: int, meter: Meter, precision: str = "bf16") -> nn.Module:
    """The common recipe: SGD (momentum 0.9, Nesterov, weight decay 5e-4), lr FT_LR on a cosine schedule to 0, batch
    128, augmented, for the steps left of the method's TOTAL_EPOCHS, its steps at `precision`."""
    per_epoch = len(data.train) // BATCH
    steps = max(0, round((TOTAL_EPOCHS - meter.epochs) * per_epoch))
    torch.manual_seed(seed)
    opt = torch.optim.SGD(module.parameters(), lr=FT_LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    module = low_precision(module, precision).train()
    done, epoch = 0, 1_000
    while done < steps:
        for x, y in meter.batches(data, seed, epoch):
            x, autocast = step_inputs(x, precision)
            with autocast:
                loss = F.cross_entropy(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
        epoch += 1
    return low_precision(module, "fp32").eval()


def _keep(conv: nn.Conv2d, bn: nn.BatchNorm2d, nxt: nn.Conv2d, idx: torch.Tensor) -> tuple[nn.Module, ...]:
    """conv's output channels `idx` (with bn's), and nxt's matching input channels."""
    a = nn.Conv2d(conv.in_channels, len(idx), conv.kernel_size, conv.stride, conv.padding, bias=False)
    a.weight.data = conv.weight.data[idx].clone()
    b = nn.BatchNorm2d(len(idx))
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(b, name).data = getattr(bn, name).data[idx].clone()
    c = nn.Conv2d(len(idx), nxt.out_channels, nxt.kernel_size, nxt.stride, nxt.padding, bias=False)
    c.weight.data = nxt.weight.data[:, idx].clone()
    return a, b, c


def uniform_width(model: ResNet20, budget: float) -> nn.Module:
    """Every block's inner width scaled by one factor (the largest whose FLOPs fit the budget), keeping the
    channels whose conv1 filters have the largest L1 norm."""
    def scaled(factor: float) -> nn.Module:
        out = copy.deepcopy(model)
        for block in out.blocks():
            k = max(1, round(factor * block.conv1.out_channels))
            idx = block.conv1.weight.abs().sum((1, 2, 3)).topk(k).indices.sort().values
            block.conv1, block.bn1, block.conv2 = _keep(block.conv1, block.bn1, block.conv2, idx)
        return out
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if flops(scaled(mid)) <= budget else (low, mid)
    return scaled(low)


def torch_pruning(model: ResNet20, budget: float, stream: bool = True) -> nn.Module:
    """Torch-Pruning's group-norm method of its CIFAR benchmark: global channel pruning by group magnitude (L2),
    400 iterative steps with no training between them, stopped at the first step within the budget. Without
    `stream` the layers that write the residual stream are ignored (their output channels kept): inner widths only."""
    import torch_pruning as tp
    out = copy.deepcopy(model).eval()
    example = torch.zeros(1, 3, 32, 32)
    ignored: list[nn.Module] = [out.fc]
    if not stream:
        ignored += [out.conv1] + [b.conv2 for b in out.blocks()] + [b.shortcut[0] for b in out.blocks() if b.shortcut]
    pruner = tp.pruner.GroupNormPruner(out, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       global_pruning=True, pruning_ratio=1.0, iterative_steps=400,
                                       ignored_layers=ignored)
    while flops(out) > budget and pruner.current_step < pruner.iterative_steps:
        pruner.step()
    return out


def modelopt_fastnas(model: ResNet20, budget_share: float, data: DataSplits, seed: int, meter: Meter,
                     where: Path) -> nn.Module:
    """ModelOpt FastNAS at the budget: its sensitivity map (each choice's BatchNorm recalibrated on the 1,600 queued
    training images, then scored on 2,000 validation images), channels in steps of 4 (its default of 32 leaves a CIFAR
    ResNet-20 almost nothing to choose), then its binary search. Every train-mode forward of the network (the queue's
    recalibrations) and every scored image count as forward passes."""
    import modelopt.torch.prune as mtp
    val = [(x, y) for x, y in batches(data.val, 500)][:4]
    def score(m: nn.Module) -> float:
        return accuracy(m, meter.scored(val))
    rules = {"nn.Conv2d": {"*": {"channel_divisor": 4}}, "nn.BatchNorm2d": {"*": {"feature_divisor": 4}},
             "nn.Linear": {"*": {"feature_divisor": 4}}}
    where.unlink(missing_ok=True)  # its own checkpoint: a rerun starts afresh
    loader = _Calibration(data, seed)
    net = copy.deepcopy(model)
    counting = net.register_forward_pre_hook(lambda m, args: _count_calibration(m, args, meter))
    out = mtp.prune(net, mode=[("fastnas", rules)], constraints={"flops": f"{budget_share:.0%}"},
                    dummy_input=torch.zeros(1, 3, 32, 32),
                    config={"data_loader": loader, "score_func": score, "checkpoint": str(where),
                            "max_iter_data_loader": CALIBRATION_BATCHES, "verbose": False})
    counting.remove()  # the fine-tune's steps are counted as training
    where.unlink(missing_ok=True)
    return out[0] if isinstance(out, tuple) else out


def _count_calibration(module: nn.Module, args: tuple, meter: Meter) -> None:
    if module.training:  # ModelOpt recalibrates BatchNorm in train mode; scoring runs in eval mode (counted apart)
        meter.forward += len(args[0])


class _Calibration:
    """ModelOpt's data loader: CALIBRATION_BATCHES shuffled training batches of CALIBRATION_BATCH images (counted
    by the network's hook as they pass)."""

    def __init__(self, data: DataSplits, seed: int) -> None:
        self.data, self.seed, self.passes = data, seed, 0

    def __iter__(self) -> Iterator:
        self.passes += 1
        g = torch.Generator().manual_seed(self.seed * 100_003 + 2_000 + self.passes)
        return itertools.islice(batches(self.data.train, CALIBRATION_BATCH, shuffle=True, generator=g),
                                CALIBRATION_BATCHES)

    def __len__(self) -> int:
        return CALIBRATION_BATCHES


def bsnet_fit(model: ResNet20, share: float, data: DataSplits, seed: int, meter: Meter, *,
              width_groups: int, gate: str = "residual", epochs: int = SEARCH_EPOCHS) -> nn.Module:
    """`bsnet.fit` on the trained module (`epochs` search epochs, the weights at lr FT_LR), its own fine-tune
    left out: the common one follows."""
    x = torch.zeros(2, 3, 32, 32)
    # Every pass is counted as forward-only, then the search epochs' images are moved to the trained count. No
    # validation batches: with no selection among candidates they would only monitor, and cost compute.
    variant, report = bsnet.fit(model, x, budgets=[f"{share:.0%}"],
                                train=lambda epoch: meter.batches(data, seed, epoch, train=False),
                                epochs=epochs, finetune_epochs=0, lr=FT_LR,
                                config=SearchConfig(seed=seed, fill_budgets=True),
                                width_groups=width_groups, gate=gate)
    searched = epochs * (len(data.train) // BATCH) * BATCH
    meter.forward, meter.trained = meter.forward - searched, meter.trained + searched
    meter.search_history, meter.filled = report.history, report.architecture.added
    meter.exchanged = report.architecture.exchanged
    return variant


def run_method(method: str, share: float, seed: int, data: DataSplits, where: Path,
               precision: str = "bf16") -> tuple[nn.Module, dict]:
    """One method at one budget share and seed: its network (fine-tuned at `precision`) and its record."""
    model = trained_resnet20()
    budget = share * flops(model)
    meter = Meter(len(data.train))
    torch.manual_seed(seed)
    t, c = time.perf_counter(), time.process_time()
    if method in ("bsnet", "depth"):
        net = bsnet_fit(model, share, data, seed, meter, width_groups=1 if method == "depth" else 4)
    elif method == "bsnet-width":
        net = bsnet_fit(model, share, data, seed, meter, width_groups=4, gate="width",
                        epochs=min(WIDTH_SEARCH_EPOCHS, SEARCH_EPOCHS))
    elif method in ("torch-pruning", "torch-pruning-inner"):
        net = torch_pruning(model, budget, stream=method == "torch-pruning")
    elif method == "modelopt":
        net = modelopt_fastnas(model, share, data, seed, meter, where.with_suffix(".modelopt.pth"))
    elif method == "uniform":
        net = uniform_width(model, budget)
    else:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    search = {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c, "epochs": meter.epochs}
    before_ft = accuracy(net, batches(data.val, 500))
    t, c = time.perf_counter(), time.process_time()
    net = fine_tune(net, data, seed, meter, precision)
    ft = {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
    record = {"method": method, "share": share, "seed": seed, "trained": trained_id(), "precision": precision,
              "flops": flops(net), "budget": budget,
              "fraction": flops(net) / flops(model), "params": sum(p.numel() for p in net.parameters()),
              "val_acc_before_finetune": before_ft, "val_acc": accuracy(net, batches(data.val, 500)),
              "test_acc": accuracy(net, batches(data.test, 500)), "epochs": meter.epochs, "search": search,
              "finetune": ft, "cpu_s": search["cpu_s"] + ft["cpu_s"], "threads": torch.get_num_threads(),
              "history": meter.search_history, "filled": meter.filled,
              "exchanged": meter.exchanged, "machine": machine_info(),
              # the budget band of the protocol, by FlopCounterMode whatever counter the method steered by
              "in_band": 0.95 * share <= flops(net) / flops(model) <= share,
              "over_compute": meter.epochs > TOTAL_EPOCHS + 1e-9}
    return net, record


# ---- parts and the table -------------------------------------------------------------------------------------
PARTS = RESULTS / "parts"
SHARES = (0.5, 0.3)


def current(path: Path) -> bool:
    """Whether a part's record started from the trained weights there now (a record of other weights is stale)."""
    return json.loads(path.read_text()).get("trained") == trained_id()


def part(shares: list[float], seeds: list[int], methods: list[str], data: DataSplits, out: Path,
         precision: str = "bf16") -> None:
    """Each method at each budget share and seed index, one after another; a finished one is kept (its record and
    its network as ONNX) and skipped when the part is run again, unless it started from other trained weights."""
    from bsnet.export import export_onnx
    out.mkdir(parents=True, exist_ok=True)
    for share in shares:
        for seed in seeds:
            for method in methods:
                stem = out / f"flops{round(share * 100)}-seed{seed}-{method}"
                if stem.with_suffix(".json").is_file() and current(stem.with_suffix(".json")):
                    print(f"kept: {stem.name}", flush=True)
                    continue
                print(f"running: {stem.name}", file=sys.stderr, flush=True)
                net, record = run_method(method, share, seed, data, stem, precision)
                export_onnx(net, (3, 32, 32), stem.with_suffix(".onnx"))
                tmp = stem.with_name(stem.name + ".json.tmp")
                tmp.write_text(json.dumps(record, indent=1))
                os.replace(tmp, stem.with_suffix(".json"))
                print(f"pretrained.{stem.name}: test_acc={record['test_acc']:.4f} fraction={record['fraction']:.3f} "
                      f"epochs={record['epochs']:.2f} cpu_s={record['cpu_s']:.0f}", flush=True)


def latencies(paths: list[Path], runs: int = 100) -> dict[Path, dict[str, float]]:
    """Median ONNX Runtime latency of each file at batch 1 (1 thread) and batch 64 (2 threads), the files
    interleaved run by run so that the machine's drift falls on all of them alike."""
    import onnxruntime as ort
    out: dict[Path, dict[str, float]] = {p: {} for p in paths}
    for batch, threads in ((1, 1), (64, 2)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        # Idle workers must sleep: spinning ones of the networks just run take the cores from the one timed
        # (measured: 2 threads at batch 64, the trained network 53 ms interleaved with spinning, 27 ms without).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        runners = {p: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in paths}
        x = torch.randn(batch, 3, 32, 32).numpy()
        times: dict[Path, list[float]] = {p: [] for p in paths}
        for r in range(runs + 3):
            for p, runner in runners.items():
                t = time.perf_counter()
                runner.run(None, {"input": x})
                if r >= 3:  # warm-up runs left out
                    times[p].append(time.perf_counter() - t)
        for p in paths:
            out[p][f"batch{batch}_ms"] = 1e3 * statistics.median(times[p])
    return out


def table(out: Path) -> int:
    """Every finished method record in `out`, the latency of every network measured side by side, the table
    (markdown, printed and written to table.md) and the Pareto plots (pareto.png)."""
    from bsnet.export import export_onnx
    found = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    ours = trained_id()
    records = [r for r in found if r.get("trained") == ours]
    if len(records) < len(found):
        print(f"left out: {len(found) - len(records)} records of other trained weights than {WEIGHTS.name}'s "
              f"(rerun their parts)", file=sys.stderr)
    if not records:
        print(f"error: no finished method of the trained weights there now in {out}", file=sys.stderr)
        return 2
    trained = out / "trained.onnx"
    model = trained_resnet20()
    export_onnx(model, (3, 32, 32), trained)  # anew: the weights there now
    base = json.loads(TRAIN_LOG.read_text().splitlines()[-1]) if TRAIN_LOG.is_file() else {"test_acc": math.nan}
    names = {(r["share"], r["seed"], r["method"]): out / f"flops{round(r['share'] * 100)}-seed{r['seed']}-"
             f"{r['method']}.onnx" for r in records}
    lat = latencies([trained, *names.values()])
    for r in records:
        r.update(lat[names[(r["share"], r["seed"], r["method"])]])
    full = {"flops": flops(model), **lat[trained]}
    lines = [f"Trained ResNet-20: test {base['test_acc']:.2%}, {full['flops'] / 1e6:.1f} MFLOPs, batch-1 "
             f"{full['batch1_ms']:.3f} ms, batch-64 {full['batch64_ms']:.2f} ms.", "",
             "| budget | method | seeds | FLOPs (M) | MACs (M) | params (K) | test acc | drop | "
             + " | ".join(f"vs {m} (mean diff ± SE)" for m in OURS) + " | batch-1 ms | batch-64 ms | b64 ratio | "
             "epochs | CPU-s |", "|---" * (13 + len(OURS)) + "|"]
    for share in sorted({r["share"] for r in records}, reverse=True):
        ours = {m: {r["seed"]: r for r in records if r["share"] == share and r["method"] == m} for m in OURS}
        for method in METHODS:
            rows = [r for r in records if r["share"] == share and r["method"] == method]
            if not rows:
                continue
            mean = {k: statistics.fmean(r[k] for r in rows) for k in ("flops", "params", "batch1_ms", "batch64_ms",
                                                                       "fraction", "epochs", "cpu_s")}.__getitem__
            acc = [r["test_acc"] for r in rows]
            se = statistics.stdev(acc) / math.sqrt(len(acc)) if len(acc) > 1 else float("nan")
            versus = " | ".join("" if m == method else _versus(m, ours[m], rows) for m in OURS)
            lines.append(f"| {share:.0%} | {method} | {len(rows)} | {mean('flops') / 1e6:.1f} | "
                         f"{mean('flops') / 2e6:.1f} | {mean('params') / 1e3:.1f} | {statistics.fmean(acc):.2%} ± "
                         f"{se:.2%} | {base['test_acc'] - statistics.fmean(acc):+.2%} | {versus} | "
                         f"{mean('batch1_ms'):.3f} | {mean('batch64_ms'):.2f} | "
                         f"{mean('batch64_ms') / full['batch64_ms']:.2f} (FLOPs {mean('fraction'):.2f}, in band "
                         f"{sum(bool(r.get('in_band')) for r in rows)}/{len(rows)}) | "
                         f"{mean('epochs'):.2f} | {mean('cpu_s'):.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "table.md").write_text(text)
    _pareto(records, base["test_acc"], full, out / "pareto.png")
    return 0


def _versus(name: str, mine: dict[int, dict], rows: list[dict]) -> str:
    """`name` (one of OURS) minus the method, per seed index: the mean, its standard error, the verdict of the win
    rule (the mean beyond twice its standard error), and the goal's second way to win, as accurate and at least 10%
    faster at batch 1: `name`'s batch-1 latency over the method's."""
    diffs = [mine[r["seed"]]["test_acc"] - r["test_acc"] for r in rows if r["seed"] in mine]
    if not diffs:
        return ""
    m = statistics.fmean(diffs)
    ratio = statistics.fmean(mine[r["seed"]]["batch1_ms"] / r["batch1_ms"] for r in rows if r["seed"] in mine)
    if len(diffs) < 2:
        return f"{m:+.2%} (1 seed: no verdict); batch-1 latency {ratio:.2f} x"
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    verdict = f"{name} wins" if m > 2 * se else f"{name} loses" if m < -2 * se else "tie"
    return f"{m:+.2%} ± {se:.2%}: {verdict}; batch-1 latency {ratio:.2f} x"


def _pareto(records: list[dict], base_acc: float, full: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), sharey=True)
    shares = sorted({r["share"] for r in records}, reverse=True)  # the largest filled, the others hollow
    panels = (("batch1_ms", 1.0, "ONNX Runtime latency, batch 1, 1 thread (ms)"),
              ("batch64_ms", 1.0, "ONNX Runtime latency, batch 64, 2 threads (ms)"),
              ("flops", 1e-6, "MFLOPs (FlopCounterMode)"))
    for ax, (key, scale, label) in zip(axes, panels):
        for i, method in enumerate(METHODS):
            for share in shares:
                fill = share == shares[0]
                rows = [r for r in records if r["method"] == method and r["share"] == share]
                if rows:
                    color = f"C{i}"
                    ax.scatter([r[key] * scale for r in rows], [100 * r["test_acc"] for r in rows], s=30,
                               marker="osD^vP"[i % 6], facecolors=color if fill else "none", edgecolors=color,
                               label=f"{method} ({share:.0%})")
        ax.scatter([full[key] * scale], [100 * base_acc], label="trained ResNet-20", c="k", marker="x")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Trained CIFAR-10 ResNet-20 fitted to {' and '.join(f'{s:.0%}' for s in shares)} of its FLOPs "
                 f"({shares[0]:.0%} filled): up and to the left is better (each point one seed index)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the ResNet-20 once (resumable)")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: the same recipe")
    q = sub.add_parser("part", help="run methods at budget shares and seed indices (finished ones are kept)")
    q.add_argument("--share", type=float, nargs="+", default=list(SHARES), help="FLOPs budgets, shares of the model's")
    q.add_argument("--seed", type=int, nargs="+", default=[0, 1, 2], help="seed indices")
    q.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    q.add_argument("--quick", action="store_true", help="a smoke run: 2,000 training images, 1 epoch in all")
    for a in (p, q):
        a.add_argument("--precision", choices=PRECISIONS, default="bf16", help="the training steps' arithmetic: "
                       "bf16 (default; bfloat16 autocast, channels-last, float32 weights) or fp32")
    t = sub.add_parser("table", help="measure every finished network's latency; write the table and the plot")
    t.add_argument("--quick", action="store_true", help="the smoke runs' table")
    for a in (p, q, t):
        a.add_argument("--data-dir", type=Path, default=None, help="extracted CIFAR-10 image folder "
                       "(default: the shared tarball, extracted under the user cache)")
        a.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS.with_name("pretrained-quick") if getattr(args, "quick", False) else PARTS
    global UNTRAINED_OK
    UNTRAINED_OK = getattr(args, "quick", False)
    if args.command == "train":
        if args.epochs < 1:
            parser.error("--epochs must be >= 1")
        try:
            available_device(args.device)
        except ValueError as e:
            parser.error(str(e))
        train(cifar_splits(args.data_dir), args.epochs, args.device, args.precision)
    elif args.command == "part":
        data = cifar_splits(args.data_dir)
        if args.quick:
            global TOTAL_EPOCHS, SEARCH_EPOCHS
            TOTAL_EPOCHS, SEARCH_EPOCHS = 1, 1
            data = dataclasses.replace(data, train=subset(data.train, 2000, 0), val=subset(data.val, 1000, 0),
                                       test=subset(data.test, 1000, 0))
        part(args.share, args.seed, args.methods, data, out, args.precision)
    else:
        return table(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
