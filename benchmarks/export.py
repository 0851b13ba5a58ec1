"""Export benchmark: is an exported network as fast as the same network written by hand?

The plain ResNet-20 inside the `resnet_fabric` default (`resnet_mask(net, 20)`) is exported with
`bsnet.export_module`, a `torch.fx.GraphModule` whose generated `forward` calls one submodule per live node.
A hand-written CIFAR ResNet-20 (`HandResNet20` below: an ordinary `nn.Module`) receives the SAME weights, copied
in by walking both modules' parameters and buffers in matching order, and the two are checked to give the same
outputs (max abs difference <= 1e-5) before anything is timed. Before the export, the BatchNorm affine
parameters and running statistics are randomised so that the check is a sharp one.

Times are INFERENCE: eval mode, `torch.no_grad()`, one forward call. Each model's time is the median of every
single call timed over `--rounds` rounds of `--calls` calls per model. The models are interleaved call by call
(one call of each in turn, the order rotating), so that a slow spell of a shared machine hits all of them alike.

Figures, printed as `export.<name>=<value>` lines:

* `inference_ratio_b<B>`: exported ÷ hand-written, median call time at batch B. Goal <= 1.05.
* `exported_ms_b<B>`, `hand_ms_b<B>`: the medians themselves.
* `inference_ratio_b<B>.per_round`: the same ratio within each round (a check on drift).
* `exported_faults_b<B>`, `hand_faults_b<B>`: minor page faults per call (`getrusage`), the cost of glibc malloc
  handing freed memory back to the OS and faulting it in again on the next call (see `--no-trim`).
* with `--diagnose`, also `<variant>_ms_b<B>` and `<variant>_ratio_b<B>` (÷ hand-written) for variants of the
  exported module that locate where its extra time goes (see `diagnostic_variants`).

Run: `python benchmarks/export.py` (batch sizes 1 and 64; 200 calls per round at batch 1, 20 at batch 64).
`--no-trim` first sets glibc's malloc thresholds (`mallopt`, as the `MALLOC_MMAP_THRESHOLD_` and
`MALLOC_TRIM_THRESHOLD_` environment variables would) so that freed memory stays in the process.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import bsnet
from bsnet.fabrics.resnet_fabric import resnet_mask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine import busy_jiffies, emit_load  # noqa: E402  (machine load, shared with benchmarks/engine.py)

GOAL = 1.05
TOLERANCE = 1e-5


# ---- the hand-written network ------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the identity or a 1x1 conv+BN projection where the shape changes, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class HandResNet20(nn.Module):
    """The CIFAR ResNet-20: conv3x3-BN-ReLU stem, 3 stages of 3 basic blocks, global average pool, linear."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), blocks: int = 3, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        layers: list[nn.Module] = []
        c_in = channels[0]
        for b, c in enumerate(channels):
            for n in range(blocks):
                layers.append(BasicBlock(c_in, c, 2 if b > 0 and n == 0 else 1))
                c_in = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(x.mean(dim=(2, 3)))


def copy_weights(src: nn.Module, dst: nn.Module) -> int:
    """Copy `src`'s parameters, then its buffers, into `dst`'s, walking both in registration order.

    Raises if the two modules do not hold the same number of tensors with the same shapes and kinds
    (the last part of each name: weight, bias, running_mean, ...). Returns the number of tensors copied.
    """
    count = 0
    for kind in ("named_parameters", "named_buffers"):
        a, b = list(getattr(src, kind)()), list(getattr(dst, kind)())
        if len(a) != len(b):
            raise ValueError(f"{kind}: {len(a)} tensors in the source, {len(b)} in the destination")
        for (na, ta), (nb, tb) in zip(a, b):
            if ta.shape != tb.shape or na.rsplit(".", 1)[-1] != nb.rsplit(".", 1)[-1]:
                raise ValueError(f"{kind}: {na} {tuple(ta.shape)} does not match {nb} {tuple(tb.shape)}")
            with torch.no_grad():
                tb.copy_(ta)
            count += 1
    return count


def randomise_batchnorm(net: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BatchNorm affine parameters and running statistics, so a mis-copied one shows in the outputs."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))


# ---- diagnostic variants of the exported module ------------------------------------------------------
def diagnostic_variants(exported: torch.fx.GraphModule) -> dict[str, nn.Module]:
    """Variants of the exported module, all sharing its weights, that strip its overheads one at a time.

    * `traced`: `torch.fx.symbolic_trace(exported)`: the nested `nn.Sequential`s (the node modules, the basic
      blocks' conv_bn halves) inlined, so `forward` calls the conv/BN/ReLU leaves directly.
    * `flat`: `traced` with the `nn.Identity` calls dropped and the ReLU modules turned into `torch.relu` calls.
    """
    traced = torch.fx.symbolic_trace(exported)
    flat = torch.fx.symbolic_trace(exported)
    mods = dict(flat.named_modules())
    for node in list(flat.graph.nodes):
        if node.op != "call_module":
            continue
        mod = mods[node.target]
        if isinstance(mod, nn.Identity):
            node.replace_all_uses_with(node.args[0])
            flat.graph.erase_node(node)
        elif isinstance(mod, nn.ReLU):
            with flat.graph.inserting_after(node):
                new = flat.graph.call_function(torch.relu, node.args)
            node.replace_all_uses_with(new)
            flat.graph.erase_node(node)
    flat.graph.lint()
    flat.delete_all_unused_submodules()
    flat.recompile()
    return {"traced": traced.eval(), "flat": flat.eval()}


# ---- timing ------------------------------------------------------------------------------------------
def time_calls(models: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, calls: int, rounds: int,
               warmup: int) -> tuple[list[float], list[list[float]], list[float]]:
    """Per model: the median single-call time over all rounds, each round's median, and page faults per call.

    The models are interleaved call by call (each round is `calls` turns of one call per model, the order
    rotating from turn to turn), so that a slow spell of a shared machine hits every model alike.
    """
    k = len(models)
    per_round: list[list[float]] = [[] for _ in models]
    every: list[list[float]] = [[] for _ in models]
    faults = [0] * k
    with torch.no_grad():
        for m in models:
            for _ in range(warmup):
                m(x)
        turn = 0
        for _ in range(rounds):
            ts: list[list[float]] = [[] for _ in models]
            for _ in range(calls):
                for j in range(k):
                    i = (turn + j) % k
                    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    t0 = time.perf_counter()
                    models[i](x)
                    ts[i].append(time.perf_counter() - t0)
                    faults[i] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
                turn += 1
            for i in range(k):
                per_round[i].append(statistics.median(ts[i]))
                every[i].extend(ts[i])
    return [statistics.median(t) for t in every], per_round, [f / (rounds * calls) for f in faults]


def no_trim() -> bool:
    """Keep freed memory in the process: fixed (huge) glibc mmap and trim thresholds. False where not glibc."""
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h; mallopt takes a C int
        # 32 MiB is the highest mmap threshold glibc accepts on 64-bit; fixing either threshold also stops glibc
        # from adjusting them as memory is freed.
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError, TypeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--calls", type=int, nargs="+", default=None,
                        help="timed calls per round, one per batch size (default: 200 at batch <= 8, else 20)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per model before timing")
    parser.add_argument("--diagnose", action="store_true",
                        help="also time variants of the exported module (fx-traced flat versions)")
    parser.add_argument("--no-trim", action="store_true",
                        help="set glibc malloc's mmap and trim thresholds first, so freed memory is not returned to "
                             "the OS between calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    calls = args.calls or [200 if b <= 8 else 20 for b in args.batch_sizes]
    if len(calls) != len(args.batch_sizes):
        parser.error("--calls needs one count per batch size")
    if args.threads:
        torch.set_num_threads(args.threads)
    trimmed = no_trim() if args.no_trim else None
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} python={platform.python_version()} "
          f"batch_sizes={','.join(map(str, args.batch_sizes))} calls={','.join(map(str, calls))} "
          f"rounds={args.rounds} warmup={args.warmup} seed={args.seed} diagnose={args.diagnose} "
          f"no_trim={trimmed if args.no_trim else False}", flush=True)
    t_start, c_start, b_start = time.perf_counter(), time.process_time(), busy_jiffies()

    def emit(key: str, value: object) -> None:
        print(f"export.{key}={value}", flush=True)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    net = bsnet.create_supernet("resnet_fabric")
    randomise_batchnorm(net, gen)
    net.eval()
    mask = resnet_mask(net, 20)
    exported = bsnet.export_module(net, mask).eval()
    cfg = net.config
    hand = HandResNet20(tuple(cfg.get("channels")), cfg.get("blocks"), cfg.get("in_channels"),
                        cfg.get("num_classes")).eval()
    emit("tensors_copied", copy_weights(exported, hand))
    variants = diagnostic_variants(exported) if args.diagnose else {}

    # The hand-written network is the same network: same outputs, at every batch size timed.
    with torch.no_grad():
        worst = 0.0
        for b in args.batch_sizes:
            x = torch.randn(b, *net.input_shape, generator=gen)
            ref = exported(x)
            for name, m in [("hand", hand), ("supernet", lambda v: net(v, mask)), *variants.items()]:
                diff = float((m(x) - ref).abs().max())
                if diff > TOLERANCE:
                    raise AssertionError(f"{name} differs from the exported network by {diff:.2e} at batch {b}")
                worst = max(worst, diff) if name == "hand" else worst
        emit("max_abs_diff", f"{worst:.2e}")
        emit("output_abs_mean", f"{float(ref.abs().mean()):.3f}")

    names = ["exported", "hand", *variants]
    models = [exported, hand, *variants.values()]
    ratios = {}
    for b, n_calls in zip(args.batch_sizes, calls):
        x = torch.randn(b, *net.input_shape, generator=gen)
        medians, per_round, faults = time_calls(models, x, n_calls, args.rounds, args.warmup)
        t = dict(zip(names, medians))
        ratios[b] = t["exported"] / t["hand"]
        for name in names:
            emit(f"{name}_ms_b{b}", f"{t[name] * 1e3:.3f}")
        emit(f"exported_faults_b{b}", f"{faults[0]:.0f}")
        emit(f"hand_faults_b{b}", f"{faults[1]:.0f}")
        emit(f"inference_ratio_b{b}", f"{ratios[b]:.3f}")
        emit(f"inference_ratio_b{b}.per_round",
             ",".join(f"{e / h:.3f}" for e, h in zip(per_round[0], per_round[1])))
        for name in variants:
            emit(f"{name}_ratio_b{b}", f"{t[name] / t['hand']:.3f}")
    for b, r in ratios.items():
        print(f"export.inference_ratio_b{b}.goal=<={GOAL:.2f} met={'yes' if r <= GOAL else 'no'}", flush=True)

    emit_load(emit, t_start, c_start, b_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
