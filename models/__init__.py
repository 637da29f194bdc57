"""AlexNet, VGG, NiN and GoogLeNet on the ``cnnkernels`` kernels, and their ``torch.nn`` twins in
``cnnkernels.models.reference``. Each architecture is written once, in ``torch.nn``
(``models/<name>.py``); the fused class is ``cnnkernels.fuse`` of it (``fused_model``).

A fused model has the same constructor arguments, layer order and ``state_dict`` keys as its
twin: each ReLU fused into its convolution leaves a ``FusedReLU`` placeholder at the ReLU's
index of ``net``. Weights therefore move either way with plain ``load_state_dict``, which is
all ``from_reference`` and ``to_reference`` do.

Every model: ``forward`` maps NCHW images to logits; ``layer_summary(shape)`` prints each
layer's output shape as the course does (``shape_only=True`` for a shape-only run on the meta
device); ``min_input_size`` is the smallest image side the architecture admits (AlexNet 65,
NiN 67, VGG 2**len(arch), GoogLeNet 1); a fused model rejects a smaller input with a
``ValueError`` before anything runs, and converts its input to channels_last. Lazy layers get
their input sizes at the first call (or from ``materialize(shape)``) from a shape-only run of the
twin on the meta device, then conv and linear weights are Xavier-uniform (d2l's ``init_cnn``),
so the first batch already computes with them. fp32, fp16, bf16 (``model.to(dtype)``).
"""

from __future__ import annotations

from torch import nn

from . import reference
from ._common import FusedReLU, fused_model, init_cnn

AlexNet = fused_model(reference.AlexNet)
VGG = fused_model(reference.VGG)
NiN = fused_model(reference.NiN)
GoogLeNet = fused_model(reference.GoogLeNet)

__all__ = ["AlexNet", "VGG", "NiN", "GoogLeNet", "FusedReLU", "from_reference", "to_reference", "init_cnn", "reference"]

_FUSED = {cls.__name__: cls for cls in (AlexNet, VGG, NiN, GoogLeNet)}
_REFERENCE = {cls.__name__: cls for cls in (reference.AlexNet, reference.VGG, reference.NiN, reference.GoogLeNet)}


def _twin(model: nn.Module, source: dict[str, type], target: dict[str, type], direction: str) -> nn.Module:
    name = type(model).__name__
    if source.get(name) is not type(model):
        where = "cnnkernels.models.reference" if source is _REFERENCE else "cnnkernels.models"
        raise TypeError(f"{direction} takes a {where} model ({', '.join(source)}), got {type(model).__module__}.{name}")
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise ValueError(
            f"{type(model).__name__} still has lazy (uninitialised) parameters: run one batch through it "
            "(or load a state_dict into it) first"
        )
    twin = target[name](**model.hparams)
    # load_state_dict materialises the twin's lazy parameters at the saved shapes; their first
    # forward then only switches their class, so no dummy batch is needed.
    twin.load_state_dict(model.state_dict())
    first = next(model.parameters(), None)
    if first is not None:
        twin.to(device=first.device, dtype=first.dtype)
    return twin.train(model.training)


def from_reference(ref: nn.Module) -> nn.Module:
    """The fused model with the weights of ``ref`` (a ``cnnkernels.models.reference`` model
    whose lazy layers are materialised): same class name and constructor arguments, then
    ``load_state_dict(ref.state_dict())``, then ``ref``'s device, dtype and train/eval mode."""
    return _twin(ref, _REFERENCE, _FUSED, "from_reference")


def to_reference(model: nn.Module) -> nn.Module:
    """The ``torch.nn`` twin of a fused model, with its weights: the inverse of
    ``from_reference``, done the same way."""
    return _twin(model, _FUSED, _REFERENCE, "to_reference")
