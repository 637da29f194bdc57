"""AlexNet, written once in ``torch.nn`` as the course writes it; ``cnnkernels.models.AlexNet``
is ``cnnkernels.fuse`` of it."""

from __future__ import annotations

from torch import nn

from ._common import Classifier


class AlexNet(Classifier):
    """AlexNet (Krizhevsky et al., 2012) for ``num_classes`` classes: five ``nn.LazyConv2d`` each
    followed by its ``nn.ReLU``, three 3x3/2 max pools, a ``LazyLinear`` head with dropout. Input
    channels are inferred at the first call; the first ``LazyLinear`` then also fixes the image
    size the model accepts. Inputs: NCHW, at least 65x65 (224x224 in the course)."""

    min_input_size = 65  # three 3x3/2 pools need 15 after the 11x11/4 conv: (H - 9) // 4 + 1 >= 15

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
