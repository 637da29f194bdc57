"""VGG, written once in ``torch.nn`` as the course writes it; ``cnnkernels.models.VGG`` is
``cnnkernels.fuse`` of it."""

from __future__ import annotations

from torch import nn

from ._common import Classifier

VGG11 = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg_block(num_convs: int, out_channels: int) -> nn.Sequential:
    """``num_convs`` 3x3 ``nn.LazyConv2d`` + ``nn.ReLU`` layers and a 2x2/2 max pool."""
    layers = []
    for _ in range(num_convs):
        layers.append(nn.LazyConv2d(out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(Classifier):
    """VGG (Simonyan and Zisserman, 2014) from ``arch``, a sequence of (num_convs, out_channels)
    blocks; the default is VGG-11. The head uses ``nn.LazyLinear`` (the course's
    ``nn.Linear(4096)`` is a typo for it); the first ``LazyLinear`` fixes the image size the model
    accepts after the first call. Inputs: NCHW, at least 2**len(arch) pixels a side (32 for
    VGG-11)."""

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
        return 2 ** len(self.hparams["arch"])

    def _arch_note(self) -> str:
        return f" with {len(self.hparams['arch'])} blocks"
