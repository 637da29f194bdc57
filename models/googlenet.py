"""GoogLeNet on the ``cnnkernels`` kernels."""

from __future__ import annotations

from torch import nn

import cnnkernels.nn as cnn

from ._common import MIN_INPUT_SIZE, FusedClassifier, FusedReLU


class GoogLeNet(FusedClassifier):
    """GoogLeNet (Szegedy et al., 2015) as in the course: stem ``b1``, body ``b2``--``b5``,
    linear head.

    Conv + ReLU pairs are fused (``FusedReLU`` placeholders keep the ReLU indices), the
    Inception blocks are ``cnnkernels.nn.Inception`` (fused ReLUs, branches written straight into
    their channel slice of the output: no concatenation copy), pools are ``cnnkernels.nn``'s;
    ``state_dict`` keys equal those of ``cnnkernels.models.reference.GoogLeNet``. Global average
    pooling precedes the head, so after the first call any admitted image size still works.
    Inputs: NCHW, any size from 1x1 up (every layer pads enough to keep a 1x1 image 1x1).
    """

    min_input_size = MIN_INPUT_SIZE["GoogLeNet"]

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes=num_classes)
        self.net = nn.Sequential(self.b1(), self.b2(), self.b3(), self.b4(), self.b5(), nn.LazyLinear(num_classes))

    def b1(self):
        return nn.Sequential(
            cnn.LazyConv2dReLU(64, kernel_size=7, stride=2, padding=3),
            FusedReLU(),
            cnn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    def b2(self):
        return nn.Sequential(
            cnn.LazyConv2dReLU(64, kernel_size=1),
            FusedReLU(),
            cnn.LazyConv2dReLU(192, kernel_size=3, padding=1),
            FusedReLU(),
            cnn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    def b3(self):
        return nn.Sequential(
            cnn.Inception(64, (96, 128), (16, 32), 32),
            cnn.Inception(128, (128, 192), (32, 96), 64),
            cnn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    def b4(self):
        return nn.Sequential(
            cnn.Inception(192, (96, 208), (16, 48), 64),
            cnn.Inception(160, (112, 224), (24, 64), 64),
            cnn.Inception(128, (128, 256), (24, 64), 64),
            cnn.Inception(112, (144, 288), (32, 64), 64),
            cnn.Inception(256, (160, 320), (32, 128), 128),
            cnn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )

    def b5(self):
        return nn.Sequential(
            cnn.Inception(256, (160, 320), (32, 128), 128),
            cnn.Inception(384, (192, 384), (48, 128), 128),
            cnn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
        )
