"""AlexNet on the ``cnnkernels`` kernels."""

from __future__ import annotations

from torch import nn

import cnnkernels.nn as cnn

from ._common import MIN_INPUT_SIZE, FusedClassifier, FusedReLU


class AlexNet(FusedClassifier):
    """AlexNet (Krizhevsky et al., 2012) for ``num_classes`` classes.

    Layer for layer the course's model: every conv + ReLU pair is one fused ``LazyConv2dReLU``
    (a ``FusedReLU`` placeholder keeps the ReLU's index, so ``state_dict`` keys equal those of
    ``cnnkernels.models.reference.AlexNet``), ``cnnkernels.nn.MaxPool2d`` pools, torch's
    ``Flatten``, ``LazyLinear``, ``ReLU`` and ``Dropout`` in the head. Input channels are
    inferred at the first call; the first ``LazyLinear`` then also fixes the image size the
    model accepts. Inputs: NCHW, at least 65x65 (224x224 in the course).
    """

    min_input_size = MIN_INPUT_SIZE["AlexNet"]

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes=num_classes)
        self.net = nn.Sequential(
            cnn.LazyConv2dReLU(96, kernel_size=11, stride=4, padding=1),
            FusedReLU(),
            cnn.MaxPool2d(kernel_size=3, stride=2),
            cnn.LazyConv2dReLU(256, kernel_size=5, padding=2),
            FusedReLU(),
            cnn.MaxPool2d(kernel_size=3, stride=2),
            cnn.LazyConv2dReLU(384, kernel_size=3, padding=1),
            FusedReLU(),
            cnn.LazyConv2dReLU(384, kernel_size=3, padding=1),
            FusedReLU(),
            cnn.LazyConv2dReLU(256, kernel_size=3, padding=1),
            FusedReLU(),
            cnn.MaxPool2d(kernel_size=3, stride=2),
            nn.Flatten(),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(p=0.5),
            nn.LazyLinear(4096),
            nn.ReLU(),
            nn.Dropout(p=0.5),
            nn.LazyLinear(num_classes),
        )
