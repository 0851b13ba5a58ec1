"""Convolutional Neural Fabric (Saxena & Verbeek, 2016) as a budgeted super network.

A grid of L layers × S scales (S = log2(image size) + 1, down to 1x1) of aggregation nodes `A-l_s`, each
summing its inputs then applying a ReLU. Transformations are conv+BN nodes `C-l_s-l'_s'` whose output edge is
gated (the gate has the transformation's name):

* layer 0 fills every scale by a chain of strided convs from the input node `A-0_0` (conv+BN+ReLU on the image);
* node (l, s) takes (l-1, s-1) by a strided 3x3 conv, (l-1, s) by a 3x3 conv, (l-1, s+1) by upsampling + conv;
* the last layer chains the scales toward the output: down to 1x1 for classification, up to full size
  for segmentation;
* the head: a 1x1 conv to the classes at the coarsest scale (classification) or per pixel at the finest
  scale (segmentation).

The paper's CIFAR run is 8 layers × 128 channels (`channels=128`); the default is sized for a 2-core CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from bsnet.fabrics.registry import register_supernet
from bsnet.graph import Graph
from bsnet.supernet import SuperNetwork


@dataclass
class CNFConfig:
    layers: int = 8
    channels: int = 32
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    task: str = "classification"  # or "segmentation"
    kernel_size: int = 3

    def __post_init__(self) -> None:
        for name, low in (("layers", 2), ("channels", 1), ("image_size", 1), ("in_channels", 1), ("num_classes", 1),
                          ("kernel_size", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"cnf setting {name} must be >= {low}, got {getattr(self, name)}")
        if self.image_size & (self.image_size - 1):
            raise ValueError(f"cnf needs a power-of-two image size (its scales halve down to 1x1), got "
                             f"{self.image_size}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"cnf setting kernel_size must be odd (its convolutions keep the size), got "
                             f"{self.kernel_size}")
        if self.task not in ("classification", "segmentation"):
            raise ValueError(f"cnf task must be 'classification' or 'segmentation', got {self.task!r}")


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
                               nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def up_conv_bn(c: int, k: int) -> nn.Sequential:
    # Upsample first (nearest, as the reference), then convolve at the finer scale.
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *conv_bn(c, c, k))


class ClassifierHead(nn.Module):
    """1x1 conv to the classes on the 1x1 map, flattened to logits `(B, classes)`."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        return self.conv(x).flatten(1)  # (B, classes, 1, 1) -> (B, classes)


def agg(layer: int, scale: int) -> str:
    return f"A-{layer}_{scale}"


@register_supernet("cnf", CNFConfig)
def build_cnf(cfg: CNFConfig) -> SuperNetwork:
    scales = int(math.log2(cfg.image_size)) + 1
    c, k, last = cfg.channels, cfg.kernel_size, cfg.layers - 1
    g = Graph(input=agg(0, 0), output="out")
    mods: dict[str, nn.Module] = {}

    def transform(src: tuple[int, int], dst: tuple[int, int], module: nn.Module) -> None:
        name = f"C-{src[0]}_{src[1]}-{dst[0]}_{dst[1]}"
        g.add_node(name, pos=((src[0] + dst[0]) / 2, (src[1] + dst[1]) / 2))
        mods[name] = module
        g.add_edge(agg(*src), name)
        g.add_edge(name, agg(*dst), gate=name)

    for layer in range(cfg.layers):
        for s in range(scales):
            g.add_node(agg(layer, s), pos=(layer, s))
            mods[agg(layer, s)] = nn.ReLU()
    mods[agg(0, 0)] = conv_bn(cfg.in_channels, c, k, relu=True)

    for s in range(1, scales):  # layer 0: a chain of strided convs fills the coarser scales
        transform((0, s - 1), (0, s), conv_bn(c, c, k, stride=2))
    for layer in range(1, cfg.layers):
        for s in range(scales):
            if s > 0:
                transform((layer - 1, s - 1), (layer, s), conv_bn(c, c, k, stride=2))
            transform((layer - 1, s), (layer, s), conv_bn(c, c, k))
            if s < scales - 1:
                transform((layer - 1, s + 1), (layer, s), up_conv_bn(c, k))
    # The last layer chains the scales toward the output.
    for s in range(scales - 1):
        if cfg.task == "classification":
            transform((last, s), (last, s + 1), conv_bn(c, c, k, stride=2))
        else:
            transform((last, s + 1), (last, s), up_conv_bn(c, k))

    out_scale = scales - 1 if cfg.task == "classification" else 0
    g.add_node("out", pos=(last + 1, out_scale))
    g.add_edge(agg(last, out_scale), "out")
    mods["out"] = (ClassifierHead(c, cfg.num_classes) if cfg.task == "classification"
                   else nn.Conv2d(c, cfg.num_classes, 1))
    return SuperNetwork(g, mods, (cfg.in_channels, cfg.image_size, cfg.image_size))
