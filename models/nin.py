"""Network in Network on the ``cnnkernels`` kernels."""

from __future__ import annotations

from torch import nn

import cnnkernels.nn as cnn

from ._common import MIN_INPUT_SIZE, FusedClassifier, FusedReLU


def nin_block(out_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Sequential:
    """A fused conv + ReLU followed by two fused 1x1 conv + ReLU layers, each with its
    ``FusedReLU`` placeholder."""
    return nn.Sequential(
        cnn.LazyConv2dReLU(out_channels, kernel_size, strides, padding),
        FusedReLU(),
        cnn.LazyConv2dReLU(out_channels, kernel_size=1),
        FusedReLU(),
        cnn.LazyConv2dReLU(out_channels, kernel_size=1),
        FusedReLU(),
    )


class NiN(FusedClassifier):
    """Network in Network (Lin et al., 2013) for ``num_classes`` classes.

    The course's model with conv + ReLU pairs fused (``state_dict`` keys equal those of
    ``cnnkernels.models.reference.NiN``), ``cnnkernels.nn`` max pools and global average
    pooling, torch's ``Dropout`` and ``Flatten``. No linear layer, so after the first call any
    admitted image size still works. Inputs: NCHW, at least 67x67.

    The Dropout acts on channels_last activations, and torch draws dropout masks in memory
    order, so under the same RNG seed this model and its NCHW twin draw different (equally
    distributed) masks.
    """

    min_input_size = MIN_INPUT_SIZE["NiN"]

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes=num_classes)
        self.net = nn.Sequential(
            nin_block(96, kernel_size=11, strides=4, padding=0),
            cnn.MaxPool2d(3, stride=2),
            nin_block(256, kernel_size=5, strides=1, padding=2),
            cnn.MaxPool2d(3, stride=2),
            nin_block(384, kernel_size=3, strides=1, padding=1),
            cnn.MaxPool2d(3, stride=2),
            nn.Dropout(0.5),
            nin_block(num_classes, kernel_size=3, strides=1, padding=1),
            cnn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
        )
