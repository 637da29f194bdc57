"""``torch.nn`` reference twins of the fused models, written exactly like the course code:
``nn.LazyConv2d`` + separate ``nn.ReLU`` modules, ``nn.MaxPool2d``, ``nn.AdaptiveAvgPool2d``,
and an ``Inception`` block that concatenates with ``torch.cat``.

Same class names and constructor arguments as ``cnnkernels.models``, and the same
``state_dict`` keys, so weights move between a model and its twin with ``load_state_dict``
(``cnnkernels.models.from_reference`` / ``to_reference``). Two deliberate departures from the
course code: VGG's head uses ``nn.LazyLinear`` (the course's ``nn.Linear(4096)`` cannot be built),
and the Xavier initialisation happens when the lazy layers materialise, from a shape-only run
at the first call (``Classifier.materialize``), rather than through a separate dummy batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import MIN_INPUT_SIZE, Classifier, vgg_min_input_size

VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


class AlexNet(Classifier):
    """AlexNet (Krizhevsky et al., 2012) for ``num_classes`` classes; inputs of at least 65x65."""

    min_input_size = MIN_INPUT_SIZE["AlexNet"]

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes=num_classes)
        self.net = nn.Sequential(
            nn.LazyConv2d(96, kernel_size=11, stride=4, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.LazyConv2d(256, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.LazyConv2d(384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.LazyConv2d(384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.LazyConv2d(256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Flatten(),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(p=0.5),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(p=0.5),
            nn.LazyLinear(num_classes),
        )


def vgg_block(num_convs: int, out_channels: int) -> nn.Sequential:
    layers = []
    for _ in range(num_convs):
        layers.append(nn.LazyConv2d(out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(Classifier):
    """VGG (Simonyan and Zisserman, 2014) from ``arch``, a sequence of (num_convs,
    out_channels) blocks (default VGG-11); inputs of at least 2**len(arch) pixels a side."""

    def __init__(self, arch=VGG11, num_classes: int = 10):
        arch = tuple((int(n), int(c)) for n, c in arch)
        super().__init__(arch=arch, num_classes=num_classes)
        conv_blks = [vgg_block(num_convs, out_channels) for num_convs, out_channels in arch]
        self.net = nn.Sequential(
            *conv_blks,
            nn.Flatten(),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.LazyLinear(num_classes),
        )

    @property
    def min_input_size(self) -> int:
        return vgg_min_input_size(self.hparams["arch"])


def nin_block(out_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LazyConv2d(out_channels, kernel_size, strides, padding),
        nn.ReLU(),
        nn.LazyConv2d(out_channels, kernel_size=1),
        nn.ReLU(),
        nn.LazyConv2d(out_channels, kernel_size=1),
        nn.ReLU(),
    )


class NiN(Classifier):
    """Network in Network (Lin et al., 2013); inputs of at least 67x67."""

    min_input_size = MIN_INPUT_SIZE["NiN"]

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes=num_classes)
        self.net = nn.Sequential(
            nin_block(96, kernel_size=11, strides=4, padding=0),
            nn.MaxPool2d(3, stride=2),
            nin_block(256, kernel_size=5, strides=1, padding=2),
            nn.MaxPool2d(3, stride=2),
            nin_block(384, kernel_size=3, strides=1, padding=1),
            nn.MaxPool2d(3, stride=2),
            nn.Dropout(0.5),
            nin_block(num_classes, kernel_size=3, strides=1, padding=1),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
        )


class Inception(nn.Module):
    """Four branches (1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pool -> 1x1) concatenated along
    channels; c1--c4 are the output channels of each branch (c2, c3 are pairs)."""

    def __init__(self, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        self.b1_1 = nn.LazyConv2d(c1, kernel_size=1)
        self.b2_1 = nn.LazyConv2d(c2[0], kernel_size=1)
        self.b2_2 = nn.LazyConv2d(c2[1], kernel_size=3, padding=1)
        self.b3_1 = nn.LazyConv2d(c3[0], kernel_size=1)
        self.b3_2 = nn.LazyConv2d(c3[1], kernel_size=5, padding=2)
        self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = nn.LazyConv2d(c4, kernel_size=1)

    def forward(self, x):
        b1 = F.relu(self.b1_1(x))
        b2 = F.relu(self.b2_2(F.relu(self.b2_1(x))))
        b3 = F.relu(self.b3_2(F.relu(self.b3_1(x))))
        b4 = F.relu(self.b4_2(self.b4_1(x)))
        return torch.cat((b1, b2, b3, b4), dim=1)


class GoogLeNet(Classifier):
    """GoogLeNet (Szegedy et al., 2015) as in the course: stem b1, body b2--b5, linear head.
    Every layer pads enough that any input of at least 1x1 is admitted."""

    min_input_size = MIN_INPUT_SIZE["GoogLeNet"]

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes=num_classes)
        self.net = nn.Sequential(self.b1(), self.b2(), self.b3(), self.b4(), self.b5(), nn.LazyLinear(num_classes))

    def b1(self):
        return nn.Sequential(
            nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    def b2(self):
        return nn.Sequential(
            nn.LazyConv2d(64, kernel_size=1),
            nn.ReLU(),
            nn.LazyConv2d(192, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    def b3(self):
        return nn.Sequential(
            Inception(64, (96, 128), (16, 32), 32),
            Inception(128, (128, 192), (32, 96), 64),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    def b4(self):
        return nn.Sequential(
            Inception(192, (96, 208), (16, 48), 64),
            Inception(160, (112, 224), (24, 64), 64),
            Inception(128, (128, 256), (24, 64), 64),
            Inception(112, (144, 288), (32, 64), 64),
            Inception(256, (160, 320), (32, 128), 128),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    def b5(self):
        return nn.Sequential(
            Inception(256, (160, 320), (32, 128), 128),
            Inception(384, (192, 384), (48, 128), 128),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
        )
