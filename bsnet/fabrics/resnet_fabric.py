"""The ResNet Fabric: a CIFAR ResNet whose blocks, skips and cross-stage shortcut blocks are all gated.

Three stages of `blocks` basic blocks (16/32/64 channels by default). Block n of stage b is an addition node
`A-b_n` (sum then ReLU) fed by gated edges from:

* `B-b_n`: the basic block (conv3x3-BN-ReLU-conv3x3-BN), strided at the first block of stages 1 and 2;
* `S-b_n`: its skip, the identity or, where the shape changes, a 1x1 conv+BN projection;
* `X-b_n_i`: cross-stage shortcut blocks from the previous stage, their sources chosen by the `shift`
  letters: `s` the block mirrored in the previous stage, `l` one block later, `r` one block earlier (the
  stage's input where that falls before the stage).

Keeping every block and skip and no shortcut gives the plain ResNet-(6n+2); dropping a block while keeping
its skip removes it, so ResNet-8/14/20/... are all sub-graphs (`resnet_mask`).

Width: a block's inner width is `width_multiplier` times its stage's channels (the residual stream keeps
`channels`). With `width_groups` N > 1 every basic block's conv-BN-ReLU-conv is split into N channel groups
(bsnet.width), the nodes `W-b_n_j` (group j of `B-b_n`; `WX-b_n_i_j` of `X-b_n_i`), each fed by its own gated edge;
their sum meets at the block's node, which applies the last BatchNorm. The block keeps its own gate, so depth is
searched as without groups (one decision drops a block: with group gates alone, digits searches ended 1.2-3.7 x over
their budgets, BENCHMARKS.md), and dropping every group drops the block too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from bsnet.fabrics.cnf import conv_bn
from bsnet.fabrics.registry import register_supernet
from bsnet.graph import Graph
from bsnet.supernet import SuperNetwork
from bsnet.width import WidthGroup, split_layer_pair


@dataclass
class ResNetFabricConfig:
    blocks: int = 3  # basic blocks per stage: 3 gives ResNet-20 as the full plain path
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    shortcuts: bool = True  # cross-stage shortcut blocks
    shift: str = "s"  # which shortcut sources: any of s, l, r
    width_groups: int = 1  # channel groups (gated branches) of each block's inner layers; 1: no width gates
    width_multiplier: float = 1.0  # each block's inner width relative to its stage's channels

    def __post_init__(self) -> None:  # each setting on its own; the image size against the stages at build time
        for name in ("blocks", "image_size", "in_channels", "num_classes", "width_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"resnet_fabric setting {name} must be >= 1, got {getattr(self, name)}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"resnet_fabric setting channels must be one positive width per stage, got "
                             f"{self.channels}")
        if not (math.isfinite(self.width_multiplier) and self.width_multiplier > 0):
            raise ValueError(f"resnet_fabric setting width_multiplier must be a number > 0, got "
                             f"{self.width_multiplier}")
        if set(self.shift) - set("slr"):
            raise ValueError(f"resnet_fabric shift letters are s, l and r, got {self.shift!r}")


class BasicBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int, inner: int | None = None) -> None:
        inner = c_out if inner is None else inner
        super().__init__(conv_bn(c_in, inner, 3, stride=stride, relu=True), conv_bn(inner, c_out, 3))


# A block split by width: its groups and the module applied to their sum (the block's last BatchNorm).
SplitBlock = tuple[list[WidthGroup], nn.Module]


def basic_block(c_in: int, c_out: int, stride: int, inner: int, width_groups: int, name: str
                ) -> BasicBlock | SplitBlock:
    """A basic block, or with `width_groups` > 1 the same block (same initialisation) split into channel groups."""
    block = BasicBlock(c_in, c_out, stride, inner)
    if width_groups == 1:
        return block
    groups, _ = split_layer_pair([*block[0], block[1][0]], width_groups, name)  # conv1-BN-ReLU-conv2, bias-free
    return groups, block[1][1]


def add_block(g: Graph, mods: dict[str, nn.Module], src: str, name: str, block: nn.Module | SplitBlock,
              pos: tuple[float, float], width_prefix: str) -> None:
    """Node `name` fed by `src`: the block itself, or the sum of its width groups `{width_prefix}_j`, each on a
    gated edge of its own from `src`, declared as the width split `width_prefix`."""
    g.add_node(name, pos=pos)
    if isinstance(block, nn.Module):
        mods[name] = block
        g.add_edge(src, name)
        return
    groups, mods[name] = block
    names = [f"{width_prefix}_{j}" for j in range(len(groups))]
    for w, module in zip(names, groups):
        g.add_node(w, pos=(pos[0], pos[1] + 0.35))  # drawn over their block, set side by side
        mods[w] = module
        g.add_edge(src, w, gate=w)
        g.add_edge(w, name)
    g.add_width_split(width_prefix, names)


def inner_width(cfg: "ResNetFabricConfig", stage: int) -> int:
    """Stage `stage`'s block inner width: `width_multiplier` times its channels, a whole number."""
    inner = cfg.channels[stage] * cfg.width_multiplier
    if cfg.width_multiplier <= 0 or inner != round(inner):
        raise ValueError(f"resnet_fabric width_multiplier {cfg.width_multiplier} times stage {stage}'s "
                         f"{cfg.channels[stage]} channels is not a positive whole number")
    return int(round(inner))


class ClassifierHead(nn.Module):
    """Global average pooling then a linear layer: `(B, C, H, W) -> (B, classes)`."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


def shortcut_sources(stage: int, depth: int, blocks: int, shift: str) -> list[int]:
    """Positions in the previous stage feeding shortcuts into block `depth` (-1: that stage's input)."""
    sources = []
    if "s" in shift:
        sources.append(max(blocks - depth - 2, -1))
    if "l" in shift and depth != 0:
        sources.append(blocks - 1 - depth)
    if "r" in shift and depth != blocks - 1:
        sources.append(max(blocks - depth - 3, -1))
    return sources


@register_supernet("resnet_fabric", ResNetFabricConfig)
def build_resnet_fabric(cfg: ResNetFabricConfig) -> SuperNetwork:
    if cfg.blocks < 1:
        raise ValueError(f"resnet_fabric needs at least one block per stage, got {cfg.blocks}")
    if set(cfg.shift) - set("slr"):
        raise ValueError(f"resnet_fabric shift letters are s, l and r, got {cfg.shift!r}")
    if cfg.width_groups < 1:
        raise ValueError(f"resnet_fabric width_groups must be >= 1, got {cfg.width_groups}")
    stages = len(cfg.channels)
    if cfg.image_size % (2 ** (stages - 1)):
        raise ValueError(f"resnet_fabric halves the image {stages - 1} times: {cfg.image_size} does not divide")
    g = Graph(input="input", output="out")
    mods: dict[str, nn.Module] = {"input": conv_bn(cfg.in_channels, cfg.channels[0], 3, relu=True)}
    g.add_node("input", pos=(0, 0))
    # (node name, channels, spatial size) of every stage's input, and of each block's output.
    stage_in: list[tuple[str, int, int]] = []
    stage_adds: list[list[str]] = []  # the addition nodes of every stage, sources of the next one's shortcuts
    last, c_last, size_last = "input", cfg.channels[0], cfg.image_size
    for b, c in enumerate(cfg.channels):
        if b > 0:  # a named identity marks the stage's input, a source for the next stage's shortcuts
            g.add_node(f"I-{b}", pos=(b * (cfg.blocks + 1), 0))
            mods[f"I-{b}"] = nn.Identity()
            g.add_edge(last, f"I-{b}")
            last = f"I-{b}"
        stage_in.append((last, c_last, size_last))
        size = cfg.image_size // 2 ** b
        inner = inner_width(cfg, b)
        adds = []
        for n in range(cfg.blocks):
            x0 = b * (cfg.blocks + 1) + n + 1
            stride = size_last // size
            add = f"A-{b}_{n}"
            g.add_node(add, pos=(x0 + 0.5, 0))
            mods[add] = nn.ReLU()
            for name, module, y in ((f"B-{b}_{n}", basic_block(c_last, c, stride, inner, cfg.width_groups,
                                                                f"B-{b}_{n}"), 1),
                                    (f"S-{b}_{n}", nn.Identity() if (c_last, stride) == (c, 1)
                                     else conv_bn(c_last, c, 1, stride=stride), -1)):
                add_block(g, mods, last, name, module, (x0, y), f"W-{b}_{n}")
                g.add_edge(name, add, gate=name)
            if cfg.shortcuts and b > 0:
                for i, src in enumerate(shortcut_sources(b, n, cfg.blocks, cfg.shift)):
                    if src < 0:
                        src_name, src_c, src_size = stage_in[b - 1]
                    else:
                        src_name, src_c, src_size = stage_adds[b - 1][src], cfg.channels[b - 1], size * 2
                    name = f"X-{b}_{n}_{i}"
                    block = basic_block(src_c, c, src_size // size, inner, cfg.width_groups, name)
                    add_block(g, mods, src_name, name, block, (x0, 2 + i), f"WX-{b}_{n}_{i}")
                    g.add_edge(name, add, gate=name)
            adds.append(add)
            last, c_last, size_last = add, c, size
        stage_adds.append(adds)
    g.add_node("out", pos=(stages * (cfg.blocks + 1), 0))
    g.add_edge(last, "out")
    mods["out"] = ClassifierHead(c_last, cfg.num_classes)
    return SuperNetwork(g, mods, (cfg.in_channels, cfg.image_size, cfg.image_size))


def resnet_mask(net: SuperNetwork, depth: int) -> torch.Tensor:
    """The mask of the plain ResNet-`depth` (6k+2 layers, k blocks per stage) inside a resnet_fabric: with width
    groups, each kept block keeps its first groups giving it its stage's channels."""
    blocks = net.config.get("blocks")
    k, rest = divmod(depth - 2, 6)
    if net.name != "resnet_fabric" or rest or not 1 <= k <= blocks:
        raise ValueError(f"ResNet-{depth} is not a sub-graph of this fabric (blocks per stage: {blocks})")
    groups, multiplier = net.config.get("width_groups", 1), net.config.get("width_multiplier", 1.0)
    keep = groups / multiplier  # groups of width multiplier * channels / groups that make up `channels`
    if keep != round(keep) or not 1 <= keep <= groups:
        raise ValueError(f"ResNet-{depth} is not a sub-graph of this fabric: {groups} width groups of "
                         f"{multiplier}x wide blocks do not give the stages' channels")
    mask = torch.zeros(net.num_gates)
    for i, gname in enumerate(net.gate_names):
        kind, pos = gname.split("-", 1)
        n = int(pos.split("_")[1])
        if kind == "S" or (kind == "B" and n < k) or (kind == "W" and n < k and int(pos.split("_")[2]) < keep):
            mask[i] = 1.0
    return mask
