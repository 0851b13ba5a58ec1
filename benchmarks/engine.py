"""Engine benchmark: what running a super network under a mask costs, against the alternatives.

Measured side by side in one run, on the `cnf` and `resnet_fabric` defaults (32x32 input, 10 classes),
with TRAINING steps (forward, cross-entropy, backward, SGD step) at one batch size. Every figure is the
median over `--masks` random architectures whose live FLOPs are 22-28% of the full super network's, and
each architecture's time is the median over `--repeats` timed steps after `--warmup` untimed ones.

Figures, printed as `<supernet>.<name>=<value>` lines:

* `overhead_ratio`: a step of the super network under the mask ÷ a step of the same architecture built as
  a plain static network (the same module objects, a precomputed list of operations, no mask). Goal <= 1.10.
* `flops_scaling_ratio`: a step under the mask ÷ a step under the full mask. Goal <= 0.30.
* `memory_ratio`: bytes of activations saved for backward under the mask ÷ under the full mask (counted with
  `torch.autograd.graph.saved_tensors_hooks`, each distinct storage once, parameters excluded). Goal <= 0.40.
* `reference_ratio`: a step of the reference mode (per-example masks `[B, G]`, every node computed) ÷ a step
  under the mask, same architecture. Reported only.
* `grouped_ratio`: one grouped step with K=4 architectures (`grouped=True`, quarter batches) ÷ the sum of the
  4 single-architecture steps on the same quarter batches; one group per mask, each of 4 consecutive
  masks (rotating). Goal <= 1.05.
* `width_overhead_ratio` (`resnet_fabric-width`: `resnet_fabric width_groups=4`, masks that keep every block and
  skip and thin each block to a random subset of its channel groups): a step under the mask ÷ a step of the same
  narrow network exported static (`bsnet.export_module`: each block's live groups one plain narrower layer pair).
  Goal <= 1.15. `width_flops_scaling_ratio`: a step under the mask ÷ under the full mask. Goal <= 0.40.
* `cuda_peak_ratio` (`--device cuda` only): peak GPU memory allocated during one training step under the mask ÷
  under the full mask (`torch.cuda.max_memory_allocated`, the weights, gradients and optimiser state included).

Run: `python benchmarks/engine.py` (both fabrics, batch 64, 5 masks, 5 repeats); `--device cuda` on a GPU (the
steps are then timed between `torch.cuda.synchronize()` calls; the goals were set for the CPU, where time follows
FLOPs: small networks at small batches are bound by kernel launches on a GPU).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from functools import reduce
from operator import add
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import bsnet
from bsnet.inputs import available_device

GOALS = {"overhead_ratio": 1.10, "flops_scaling_ratio": 0.30, "memory_ratio": 0.40, "grouped_ratio": 1.05}
WIDTH = "resnet_fabric-width"  # resnet_fabric width_groups=4: every block kept, thinned
WIDTH_GOALS = {"width_overhead_ratio": 1.15, "width_flops_scaling_ratio": 0.40}
LOW, HIGH = 0.22, 0.28  # live FLOPs fraction of the masks


# ---- masks -------------------------------------------------------------------------------------------
def steered_masks(net: bsnet.SuperNetwork, count: int, draw: Callable[[float], torch.Tensor | None],
                  max_tries: int = 20000) -> tuple[list[torch.Tensor], list[float]]:
    """`count` distinct masks from `draw(p)` (None: a disconnected draw) with live FLOPs in [LOW, HIGH] of the full
    network's. p, the probability `draw` keeps a gate with, is searched on the fly (raised when a draw is
    disconnected or cheaper than the range's middle, lowered otherwise) so draws settle in the range."""
    cost = bsnet.FlopsCost()
    full = float(cost(net, net.full_mask()))
    p, step = 0.5, 0.02
    masks, fracs, seen = [], [], set()
    for _ in range(max_tries):
        m = draw(p)
        if m is None:
            p = min(p + step, 0.99)
            continue
        frac = float(cost(net, m)) / full
        # Steer toward the middle of the range so accepted draws do not pile up at one edge.
        p = min(p + step, 0.99) if frac < (LOW + HIGH) / 2 else max(p - step, 0.01)
        key = tuple(m.tolist())
        if LOW <= frac <= HIGH and key not in seen:
            seen.add(key)
            masks.append(m)
            fracs.append(frac)
            if len(masks) == count:
                return masks, fracs
    raise RuntimeError(f"found only {len(masks)} of {count} masks in {max_tries} draws")


def draw_masks(net: bsnet.SuperNetwork, count: int, gen: torch.Generator) -> tuple[list[torch.Tensor], list[float]]:
    """Pruned, connected masks keeping every gate independently with probability p (`steered_masks`)."""
    def draw(p: float) -> torch.Tensor | None:
        m = net.graph.prune((torch.rand(net.num_gates, generator=gen) < p).float())
        return m if bool(net.graph.connected(m)) else None
    return steered_masks(net, count, draw)


def draw_thin_masks(net: bsnet.SuperNetwork, count: int, gen: torch.Generator
                    ) -> tuple[list[torch.Tensor], list[float]]:
    """Masks keeping every gate but the width groups': each width split keeps a random non-empty subset of its groups,
    each kept with probability p (`steered_masks`)."""
    index = {g: i for i, g in enumerate(net.gate_names)}
    splits = [[index[m] for m in s.groups] for s in net.graph.width_splits]

    def draw(p: float) -> torch.Tensor:
        m = net.full_mask()
        for gates in splits:
            keep = torch.rand(len(gates), generator=gen) < p
            if not keep.any():
                keep[int(torch.randint(len(gates), (1,), generator=gen))] = True
            m[gates] = keep.float()
        return m
    return steered_masks(net, count, draw)


def bench_width(args: argparse.Namespace, emit: Callable[[str, object], None]) -> dict[str, float]:
    """The width figures: live groups fused under the mask against the exported narrow network, and the full one."""
    torch.manual_seed(args.seed)
    net = bsnet.create_supernet("resnet_fabric", width_groups=4).train()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, *net.input_shape)
    y = torch.randint(0, 10, (args.batch_size,))
    masks, fracs = draw_thin_masks(net, args.masks, gen)
    emit("mask_flops_fractions", ",".join(f"{f:.3f}" for f in fracs))
    net, x, y = net.to(args.device), x.to(args.device), y.to(args.device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    full = net.full_mask()
    overhead, scaling, static_scaling = [], [], []
    for m in masks:
        static = bsnet.export_module(net, m).train()  # its own copies of the weights, the live groups fused
        opt_static = torch.optim.SGD(static.parameters(), lr=1e-3, momentum=0.9)
        t_live, t_static, t_full = time_steps(
            [lambda m=m: train_step(lambda v: net(v, m), opt, x, y),
             lambda s=static, o=opt_static: train_step(s, o, x, y),
             lambda: train_step(lambda v: net(v, full), opt, x, y)], args.warmup, args.repeats)
        overhead.append(t_live / t_static)
        scaling.append(t_live / t_full)
        static_scaling.append(t_static / t_full)
    med = statistics.median
    results = {"width_overhead_ratio": med(overhead), "width_flops_scaling_ratio": med(scaling)}
    # what the narrow network itself takes, exported static, against the full one: the floor of the scaling ratio
    for key, values in (("width_overhead_ratio", overhead), ("width_flops_scaling_ratio", scaling),
                        ("width_static_scaling_ratio", static_scaling)):
        emit(key, f"{med(values):.3f}")
        emit(key + ".per_mask", ",".join(f"{v:.3f}" for v in values))
    for key, goal in WIDTH_GOALS.items():
        print(f"{WIDTH}.{key}.goal=<={goal:.2f} met={'yes' if results[key] <= goal else 'no'}", flush=True)
    return results


# ---- the static network --------------------------------------------------------------------------------
class StaticNet(nn.Module):
    """One architecture as a plain network: only the live nodes' modules (the same objects) and a forward
    that runs a fixed list of (node, inputs) operations computed once here."""

    def __init__(self, net: bsnet.SuperNetwork, mask: torch.Tensor) -> None:
        super().__init__()
        g = net.graph
        live = dict(zip(g.order, g.live(mask).tolist()))
        gates = (mask > 0.5).tolist()
        if not live[g.output]:
            raise ValueError("a disconnected architecture has no static network")
        self.input = g.input
        self.output = g.output
        self.mods = nn.ModuleDict({n: net.blocks[n] for n in g.order if live[n]})
        # (node, [source name, or a per-example zero shape for a dropped concat input], concat?)
        self.ops: list[tuple[str, list, bool]] = []
        for n in g.order:
            if not live[n] or n == g.input:
                continue
            concat = g.node(n).combine == "concat"
            srcs: list = []
            for e in g.in_edges(n):
                if live[e.src] and (e.gate is None or gates[e.gate]):
                    srcs.append(e.src)
                elif concat:
                    srcs.append(net.profile[e.src].out_shape)
            self.ops.append((n, srcs, concat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = {self.input: self.mods[self.input](x)}
        for n, srcs, concat in self.ops:
            if concat:
                ins = [outs[s] if isinstance(s, str) else x.new_zeros(x.shape[0], *s) for s in srcs]
                h = torch.cat(ins, dim=1)
            else:
                ins = [outs[s] for s in srcs]
                h = ins[0] if len(ins) == 1 else reduce(add, ins)
            outs[n] = self.mods[n](h)
        return outs[self.output]


# ---- timing ------------------------------------------------------------------------------------------
def train_step(fn: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # CUDA runs asynchronously: time whole steps
    sync()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(fn(x), y)
    loss.backward()
    opt.step()
    sync()
    return time.perf_counter() - t0


def cuda_peak_bytes(step: Callable[[], float]) -> int:
    """Peak GPU memory allocated during one call of `step` (weights, gradients and optimiser state included)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    return torch.cuda.max_memory_allocated()


def time_steps(steps: list[Callable[[], float]], warmup: int, repeats: int) -> list[float]:
    """Median time of each step function, the functions interleaved round by round so drift hits all alike."""
    times: list[list[float]] = [[] for _ in steps]
    for r in range(warmup + repeats):
        for i, s in enumerate(steps):
            t = s()
            if r >= warmup:
                times[i].append(t)
    return [statistics.median(t) for t in times]


def saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                exclude: set[int]) -> int:
    """Bytes of distinct storages autograd saves for backward in one forward (storages in `exclude` not counted)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(fn(x), y)
    loss.backward()
    return sum(storages.values())


# ---- one super network ---------------------------------------------------------------------------------
def bench(name: str, args: argparse.Namespace, emit: Callable[[str, object], None]) -> dict[str, float]:
    torch.manual_seed(args.seed)
    net = bsnet.create_supernet(name)
    net.train()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, *net.input_shape)
    y = torch.randint(0, net.config.get("num_classes", 10), (args.batch_size,))
    masks, fracs = draw_masks(net, args.masks, gen)
    emit("mask_flops_fractions", ",".join(f"{f:.3f}" for f in fracs))
    emit("mask_live_nodes", ",".join(str(int(net.graph.live(m).sum())) for m in masks))
    full = net.full_mask()
    cost = bsnet.FlopsCost()
    emit("full_mflops", f"{float(cost(net, full)) / 1e6:.1f}")
    net, x, y = net.to(args.device), x.to(args.device), y.to(args.device)  # masks stay on the CPU, as in a search
    if args.masks_on_device:  # what reading a GPU mask back costs (a wait for the GPU at every forward)
        masks, full = [m.to(args.device) for m in masks], full.to(args.device)
    cuda = x.is_cuda
    emit("nodes", net.graph.num_nodes)

    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in net.buffers()}

    def live_step(m, xb=x, yb=y):
        return lambda: train_step(lambda v: net(v, m), opt, xb, yb)

    mem_full = saved_bytes(lambda v: net(v, full), x, y, params)
    emit("full_saved_mib", f"{mem_full / 2**20:.1f}")

    # Per mask, the four steps compared run interleaved round by round (live, static, full, reference), so a
    # slow spell of the machine hits all of them rather than skewing one side of a ratio.
    overhead, scaling, memory, reference, peak = [], [], [], [], []
    peak_full = cuda_peak_bytes(live_step(full)) if cuda else 0
    t_lives, t_statics, t_fulls, t_refs = [], [], [], []
    for m in masks:
        static = StaticNet(net, m)
        opt_static = torch.optim.SGD(static.parameters(), lr=1e-3, momentum=0.9)
        ref_masks = m.expand(args.batch_size, -1).contiguous()
        t_live, t_static, t_full, t_ref = time_steps(
            [live_step(m), lambda s=static, o=opt_static: train_step(s, o, x, y), live_step(full),
             live_step(ref_masks)],
            args.warmup, args.repeats)
        mem = saved_bytes(lambda v, m=m: net(v, m), x, y, params)
        if cuda:
            peak.append(cuda_peak_bytes(live_step(m)) / peak_full)
        t_lives.append(t_live)
        t_statics.append(t_static)
        t_fulls.append(t_full)
        t_refs.append(t_ref)
        overhead.append(t_live / t_static)
        scaling.append(t_live / t_full)
        memory.append(mem / mem_full)
        reference.append(t_ref / t_live)

    # Grouped: K=4 architectures per step; one group per mask, of 4 consecutive masks (rotating).
    k = 4
    n = len(masks)
    groups = [[masks[(i + j) % n] for j in range(k)] for i in range(n if n > k else 1)]
    x_parts, y_parts = torch.tensor_split(x, k), torch.tensor_split(y, k)
    grouped = []
    for g in groups:
        gm = torch.stack(g)
        singles = [live_step(m, xb, yb) for m, xb, yb in zip(g, x_parts, y_parts)]
        times = time_steps([lambda gm=gm: train_step(lambda v: net(v, gm, grouped=True), opt, x, y)] + singles,
                           args.warmup, args.repeats)
        grouped.append(times[0] / sum(times[1:]))

    med = statistics.median
    emit("full_step_s", f"{med(t_fulls):.4f}")
    emit("live_step_s", f"{med(t_lives):.4f}")
    emit("static_step_s", f"{med(t_statics):.4f}")
    emit("reference_step_s", f"{med(t_refs):.4f}")
    results = {"overhead_ratio": med(overhead), "flops_scaling_ratio": med(scaling), "memory_ratio": med(memory),
               "reference_ratio": med(reference), "grouped_ratio": med(grouped)}
    per_mask = {"overhead_ratio": overhead, "flops_scaling_ratio": scaling, "memory_ratio": memory,
                "reference_ratio": reference, "grouped_ratio": grouped}
    if cuda:
        emit("cuda_full_peak_mib", f"{peak_full / 2**20:.1f}")
        results["cuda_peak_ratio"], per_mask["cuda_peak_ratio"] = med(peak), peak
    for key, value in results.items():
        emit(key, f"{value:.3f}")
        emit(key + ".per_mask", ",".join(f"{v:.3f}" for v in per_mask[key]))
    for key, goal in GOALS.items():
        print(f"{name}.{key}.goal=<={goal:.2f} met={'yes' if results[key] <= goal else 'no'}", flush=True)
    return results


def emit_load(emit: Callable[[str, object], None], t0: float, c0: float, b0: int | None) -> None:
    """Emit `bench_s`, `cpu_per_wall` and `other_load_cores` since the wall, process and busy times t0, c0, b0."""
    wall = time.perf_counter() - t0
    emit("bench_s", f"{wall:.1f}")
    # Process CPU seconds per wall second: near the thread count on an otherwise idle machine; much lower
    # means the cores were busy elsewhere (other processes, a noisy VM host) and the times are suspect.
    own = time.process_time() - c0
    emit("cpu_per_wall", f"{own / wall:.2f}")
    b1 = busy_jiffies()
    if b0 is not None and b1 is not None:  # cores kept busy by everything else on the machine, on average
        others = (b1 - b0) / os.sysconf("SC_CLK_TCK") - own
        emit("other_load_cores", f"{max(others, 0.0) / wall:.2f}")


def busy_jiffies() -> int | None:
    """CPU time (clock ticks) the whole machine spent busy so far, from /proc/stat (None where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernets", nargs="+", default=["cnf", "resnet_fabric", WIDTH])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--masks", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median taken)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda")
    parser.add_argument("--masks-on-device", action="store_true",
                        help="pass the masks on --device rather than on the CPU (the search's way)")
    args = parser.parse_args(argv)
    if args.masks < 4:
        parser.error("--masks must be at least 4 (grouped_ratio groups 4 architectures)")
    try:
        available_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = f" gpu={torch.cuda.get_device_name(args.device)!r}" if args.device.startswith("cuda") else ""
    print(f"device={args.device}{gpu} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"python={platform.python_version()} "
          f"batch_size={args.batch_size} masks={args.masks} repeats={args.repeats} "
          f"warmup={args.warmup} seed={args.seed}", flush=True)
    t0 = time.perf_counter()
    for name in args.supernets:
        t1, c1, b1 = time.perf_counter(), time.process_time(), busy_jiffies()

        def emit(key: str, value: object, _name: str = name) -> None:
            print(f"{_name}.{key}={value}", flush=True)

        bench_width(args, emit) if name == WIDTH else bench(name, args, emit)
        emit_load(emit, t1, c1, b1)
    print(f"total_s={time.perf_counter() - t0:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
