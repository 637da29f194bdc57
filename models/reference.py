"""The ``torch.nn`` models as the course writes them (one per ``models/<name>.py``), gathered;
``cnnkernels.models`` holds ``cnnkernels.fuse`` of each. Departures from the course: VGG's head
is ``nn.LazyLinear``, and Xavier init runs when lazy layers materialise (``Classifier.materialize``).
"""

from __future__ import annotations

from .alexnet import AlexNet
from .googlenet import GoogLeNet, Inception
from .nin import NiN, nin_block
from .vgg import VGG, VGG11, vgg_block

__all__ = ["AlexNet", "VGG", "NiN", "GoogLeNet", "Inception", "VGG11", "vgg_block", "nin_block"]
