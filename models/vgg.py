"""VGG on the ``cnnkernels`` kernels."""

from __future__ import annotations

from torch import nn

import cnnkernels.nn as cnn

from ._common import FusedClassifier, FusedReLU, vgg_min_input_size

VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg_block(num_convs: int, out_channels: int) -> nn.Sequential:
    """``num_convs`` fused 3x3 conv + ReLU layers (each followed by its ``FusedReLU``
    placeholder) and a 2x2/2 max pool."""
    layers = []
    for _ in range(num_convs):
        layers.append(cnn.LazyConv2dReLU(out_channels, kernel_size=3, padding=1))
        layers.append(FusedReLU())
    layers.append(cnn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(FusedClassifier):
    """VGG (Simonyan and Zisserman, 2014) from ``arch``, a sequence of (num_convs,
    out_channels) blocks; the default is VGG-11.

    The course's model with its conv + ReLU pairs fused (``state_dict`` keys equal those of
    ``cnnkernels.models.reference.VGG``) and ``nn.LazyLinear`` in the head (the course's
    ``nn.Linear(4096)`` is a typo for it). The first ``LazyLinear`` fixes the image size the model
    accepts after the first call. Inputs: NCHW, at least 2**len(arch) pixels a side (32 for
    VGG-11).
    """

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

    def _arch_note(self) -> str:
        return f" with {len(self.hparams['arch'])} blocks"
