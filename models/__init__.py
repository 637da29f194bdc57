"""AlexNet, VGG, NiN and GoogLeNet on the ``cnnkernels`` kernels: ``cnnkernels.fuse`` of their
``torch.nn`` twins in ``cnnkernels.models.reference``, with the same constructor arguments, layer
order and ``state_dict`` keys, so weights move either way with ``load_state_dict``.

Every model maps NCHW images to logits, has ``layer_summary(shape)`` and ``min_input_size``
(AlexNet 65, NiN 67, VGG 2**len(arch), GoogLeNet 1); a fused model rejects a smaller input with
a ``ValueError`` and converts its input to channels_last.
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
    # load_state_dict materialises the twin's lazy parameters at the saved shapes.
    twin.load_state_dict(model.state_dict())
    first = next(model.parameters(), None)
    if first is not None:
        twin.to(device=first.device, dtype=first.dtype)
    return twin.train(model.training)


def from_reference(ref: nn.Module) -> nn.Module:
    """The fused model with the weights, device, dtype and mode of the materialised reference
    model ``ref``."""
    return _twin(ref, _REFERENCE, _FUSED, "from_reference")


def to_reference(model: nn.Module) -> nn.Module:
    """The ``torch.nn`` twin of a fused model, with its weights: the inverse of ``from_reference``."""
    return _twin(model, _FUSED, _REFERENCE, "to_reference")
