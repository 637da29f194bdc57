"""Network in Network, written once in ``torch.nn`` as the course writes it;
``cnnkernels.models.NiN`` is ``cnnkernels.fuse`` of it."""

from __future__ import annotations

from torch import nn

from ._common import Classifier


def nin_block(out_channels: int, kernel_size: int, strides: int, padding: int) -> nn.Sequential:
    """A conv + ReLU followed by two 1x1 conv + ReLU layers."""
    return nn.Sequential(
        nn.LazyConv2d(out_channels, kernel_size, strides, padding),
        nn.ReLU(),
        nn.LazyConv2d(out_channels, kernel_size=1),
        nn.ReLU(),
        nn.LazyConv2d(out_channels, kernel_size=1),
        nn.ReLU(),
    )


class NiN(Classifier):
    """Network in Network (Lin et al., 2013) for ``num_classes`` classes: four NiN blocks, max
    pools, dropout, global average pooling; no linear layer, so after the first call any
    admitted image size still works. Inputs: NCHW, at least 67x67.

    The fused model's Dropout acts on channels_last activations, and torch draws dropout masks
    in memory order, so under the same RNG seed it and this NCHW model draw different (equally
    distributed) masks."""

    min_input_size = 67  # as AlexNet, but the first conv is unpadded: (H - 11) // 4 + 1 >= 15

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
