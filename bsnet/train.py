"""Training and evaluating weights: the task's loss and accuracy, retraining a found network by the paper's protocol
(SGD, momentum, weight decay, step or cosine schedule, standard augmentation), fine-tuning one architecture of a super
network and recalibrating its BatchNorm statistics. No printing, no file I/O: `train_network` yields one record per
epoch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bsnet.data import DataSplits, batches, num_batches
from bsnet.inputs import to_device
from bsnet.supernet import SuperNetwork


def task_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (averaged over pixels for segmentation)."""
    loss = F.cross_entropy(out, y, reduction="none")
    return loss.flatten(1).mean(1) if loss.dim() > 1 else loss


def correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example accuracy (pixel accuracy for segmentation)."""
    hit = (out.argmax(1) == y).float()
    return hit.flatten(1).mean(1) if hit.dim() > 1 else hit


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # or "step": ×0.1 at 50% and 75% of the epochs
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', got {self.schedule!r}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"training {name} must be an integer >= {low}, got {value!r}")
        for name, ok, what in (("lr", lambda v: v > 0, "> 0"), ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
                               ("weight_decay", lambda v: v >= 0, ">= 0")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"training {name} must be a finite number {what}, got {value!r}")


def reset_parameters(module: nn.Module, seed: int) -> None:
    """Fresh initialisation of every layer (retraining from scratch)."""
    torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()


def train_network(module: nn.Module, data: DataSplits, cfg: TrainConfig, *, device: torch.device | str = "cpu",
                  on_step: Callable[[float], None] | None = None) -> Iterator[dict]:
    """Train `module` in place; yield {epoch, train_loss, train_acc, val_acc, lr} after each epoch."""
    module.to(device).train()
    opt = torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    steps = num_batches(data.train, cfg.batch_size) * cfg.epochs
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(steps * 0.5), int(steps * 0.75)], gamma=0.1)
    for epoch in range(cfg.epochs):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + 50_000 + epoch)
        total_loss = total_hit = n = 0.0
        lr = opt.param_groups[0]["lr"]
        for x, y in batches(data.train, cfg.batch_size, shuffle=True, generator=g):
            if data.augment is not None:
                x, y = data.augment(x, y, g)
            x, y = x.to(device), y.to(device)
            out = module(x)
            loss = task_loss(out, y).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(y)
            total_hit += float(correct(out.detach(), y).sum())
            n += len(y)
            if on_step:
                on_step(float(loss.detach()))
        yield {"epoch": epoch, "train_loss": total_loss / n, "train_acc": total_hit / n,
               "val_acc": accuracy(module, batches(data.val, 256), device), "lr": lr}


class _Evaluating:
    """`model` in eval mode inside the block, its previous mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


def _predictions(model: nn.Module, data: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str,
                 mask: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    with torch.no_grad(), _Evaluating(model):
        for x, y in data:
            x = to_device(x, device)
            yield (model(x) if mask is None else model(x, mask)), y.to(device)


def accuracy(model: nn.Module, data: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu",
             *, mask: torch.Tensor | None = None) -> float:
    """Accuracy (pixel accuracy for segmentation) of `model` in eval mode over `data`'s batches; a super network
    is run under `mask`."""
    hits, n = 0.0, 0
    for out, y in _predictions(model, data, device, mask):
        hits += float(correct(out, y).sum())
        n += len(y)
    return hits / max(n, 1)


def mean_iou(model: nn.Module, data: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
             device: torch.device | str = "cpu", *, mask: torch.Tensor | None = None) -> float:
    """Mean intersection over union of per-pixel predictions, over the classes present in labels or predictions."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for out, y in _predictions(model, data, device, mask):
        pred, y = out.argmax(1).cpu(), y.cpu()
        confusion += torch.bincount(y.flatten() * num_classes + pred.flatten(),
                                    minlength=num_classes ** 2).view(num_classes, num_classes)
    inter = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 0.0


# ---- one architecture of a super network: its BatchNorm statistics and a short fine-tune -----------------
@torch.no_grad()
def recalibrate_bn(net: nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
                   data: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu") -> None:
    """Recompute BatchNorm running statistics (a cumulative average) by running `run` over `data`.

    Search weights are shared by many architectures, so their running statistics belong to none of them.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = net.training
    net.train()
    for x, _ in data:
        run(to_device(x, device))
    net.train(was)
    for m, mom in zip(bns, saved):
        m.momentum = mom


def finetune(net: SuperNetwork, mask: torch.Tensor, batches_fn: Callable[[int], Iterable], epochs: int,
             steps_per_epoch: int, *, lr: float = 0.02, weight_decay: float = 5e-4,
             device: torch.device | str = "cpu", on_step: Callable[[], None] | None = None) -> None:
    """Train the weights of one fixed architecture (live nodes only) for a few epochs, cosine schedule.

    `batches_fn(epoch)` yields that epoch's (x, y) mini-batches.
    """
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps_per_epoch * epochs))
    net.train()
    for epoch in range(epochs):
        for x, y in batches_fn(epoch):
            opt.zero_grad(set_to_none=True)
            task_loss(net(to_device(x, device), mask), y.to(device)).mean().backward()
            opt.step()
            sched.step()
            if on_step:
                on_step()
