"""The ``torch.nn`` models, as the course writes them: ``nn.LazyConv2d`` + separate ``nn.ReLU``
modules, ``nn.MaxPool2d``, ``nn.AdaptiveAvgPool2d``, and an ``Inception`` block that
concatenates with ``torch.cat``. Each architecture is written once, in ``models/<name>.py``; this
module gathers them. ``cnnkernels.models`` holds ``cnnkernels.fuse`` of each, under the same
class name and constructor arguments and with the same ``state_dict`` keys, so weights move
between a model and its twin with ``load_state_dict`` (``from_reference`` / ``to_reference``).

Two deliberate departures from the course code: VGG's head uses ``nn.LazyLinear`` (the course's
``nn.Linear(4096)`` cannot be built), and the Xavier initialisation happens when the lazy layers
materialise, from a shape-only run at the first call (``Classifier.materialize``), rather than
through a separate dummy batch.
"""

from __future__ import annotations

from .alexnet import AlexNet
from .googlenet import GoogLeNet, Inception
from .nin import NiN, nin_block
from .vgg import VGG, VGG11, vgg_block

__all__ = ["AlexNet", "VGG", "NiN", "GoogLeNet", "Inception", "VGG11", "vgg_block", "nin_block"]
