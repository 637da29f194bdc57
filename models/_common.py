"""Pieces shared by the models: the d2l-style base ``Classifier`` and ``fused_model(cls)``, the
class whose ``net`` ``cnnkernels.fuse`` rewrites at construction (``FusedClassifier``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from cnnkernels.convpool import layer_by_layer
from cnnkernels.fusion import FusedReLU, fuse

__all__ = ["Classifier", "FusedClassifier", "FusedReLU", "fused_model", "init_cnn", "summary_name"]


def summary_name(layer: nn.Module) -> str:
    """The class name ``layer_summary`` prints: a ``cnnkernels`` layer's ``torch.nn`` base."""
    name = getattr(layer, "summary_name", None)
    if name is not None:
        return name
    cls = type(layer)
    if cls.__module__.startswith("cnnkernels."):
        for base in cls.__mro__:
            if base.__module__.startswith("torch.nn.") and base is not nn.Module:
                return base.__name__
    return cls.__name__


def init_cnn(module: nn.Module) -> None:
    """d2l's ``init_cnn``: Xavier-uniform weights for conv and linear layers."""
    if isinstance(module, (nn.Linear, nn.Conv2d)) and not isinstance(module, LazyModuleMixin):
        nn.init.xavier_uniform_(module.weight)


def _lazy_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m for name, m in model.named_modules() if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()
    }


def _materialise(lazy: dict[str, nn.Module], weight_shapes: dict[str, torch.Size]) -> None:
    """Materialise each lazy layer for the weight shape it must have (torch's own inference on a
    meta dummy), as its first forward would."""
    for name, m in lazy.items():
        shape = weight_shapes.get(f"{name}.weight" if name else "weight")
        if shape is None:
            continue
        if isinstance(m, nn.LazyLinear):
            dummy = torch.empty((1, shape[1]), device="meta")
        elif isinstance(m, nn.LazyConv2d):
            dummy = torch.empty((1, shape[1] * m.groups, 1, 1), device="meta")
        else:
            continue
        m._infer_parameters(m, (dummy,))


def _load_pre_hook(model, state_dict, prefix, *args) -> None:
    # Torch would materialise lazy layers with in_channels left at 0: do it properly first.
    shapes = {k[len(prefix) :]: v.shape for k, v in state_dict.items() if k.startswith(prefix)}
    _materialise(_lazy_modules(model), shapes)


class Classifier(nn.Module):
    """Base of every model here: ``self.net`` (an ``nn.Sequential``) maps NCHW images to
    logits; ``hparams`` holds the constructor arguments (twins are built from it)."""

    net: nn.Sequential

    nhwc_weights = False  # the fused models set it: see ``_weights_to_channels_last``

    def __init__(self, **hparams):
        super().__init__()
        self.hparams = dict(hparams)
        self.register_load_state_dict_pre_hook(_load_pre_hook)

    @classmethod
    def _shape_twin(cls) -> type[Classifier]:
        """The ``torch.nn`` class used for shape inference (itself for a reference model)."""
        return cls

    def materialize(self, X_shape) -> None:
        """Materialise the lazy layers for inputs of shape ``X_shape`` (shapes from a meta-device
        run of the ``torch.nn`` twin) with d2l's ``init_cnn``; no-op once done."""
        if self.__dict__.get("_materialised", False):
            return
        lazy = _lazy_modules(self)
        if not lazy:
            self._materialised = True  # later forwards skip the module walk
            return
        with torch.device("meta"), torch.no_grad():
            twin = self._shape_twin()(**self.hparams)
            twin.net(torch.empty(tuple(X_shape)))
        _materialise(lazy, {k: v.shape for k, v in twin.state_dict().items()})
        for m in lazy.values():
            init_cnn(m)

    def _prepare(self, X: torch.Tensor) -> torch.Tensor:
        return X

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = self._prepare(X)
        self.materialize(X.shape)
        if self.nhwc_weights and not self.__dict__.get("_weights_nhwc", False):
            self._weights_to_channels_last()
        return self.net(X)

    def _weights_to_channels_last(self) -> None:
        """Restride conv weights NHWC, once and in place (same Parameters, keys and values)."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and not isinstance(m.weight, nn.parameter.UninitializedParameter):
                    m.weight.data = m.weight.data.to(memory_format=torch.channels_last)
        self._weights_nhwc = True

    def layer_summary(self, X_shape, *, shape_only: bool = False) -> None:
        """Print each layer's output shape for a random batch of shape ``X_shape``, d2l style,
        fused layers under their ``torch.nn`` names (so it matches the reference twin's).
        ``shape_only=True`` runs an untrained copy on the ``meta`` device instead."""
        if shape_only:
            with torch.device("meta"):
                twin = type(self)(**self.hparams)
            twin.train(self.training)
            return twin.layer_summary(X_shape)
        param = next(self.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
        make = torch.empty if device.type == "meta" else torch.randn
        X = self._prepare(make(*X_shape, device=device, dtype=dtype))
        self.materialize(X.shape)
        with layer_by_layer():  # a layer fused with the next one shows its own output here
            for layer in self.net:
                X = layer(X)
                print(summary_name(layer), "output shape:\t", X.shape)


class FusedClassifier(Classifier):
    """Base of the fused models: checks the input, then converts it to channels_last."""

    nhwc_weights = True
    _twin: type[Classifier]  # the torch.nn class this one fuses

    @classmethod
    def _shape_twin(cls) -> type[Classifier]:
        return cls._twin

    def _prepare(self, X: torch.Tensor) -> torch.Tensor:
        if not isinstance(X, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(X).__name__}")
        if X.dim() != 4:
            raise ValueError(f"input must be a 4-D (N, C, H, W) tensor, got shape {tuple(X.shape)}")
        h, w = X.shape[-2:]
        m = self.min_input_size
        if h < m or w < m:
            raise ValueError(
                f"{type(self).__name__}{self._arch_note()} needs inputs of at least {m}x{m} pixels, got {h}x{w}"
            )
        # ``.to`` (not ``.contiguous``) restrides even when C == 1, where both layouts coincide.
        return X.to(memory_format=torch.channels_last)

    def _arch_note(self) -> str:
        return ""


def fused_model(twin: type[Classifier]) -> type[FusedClassifier]:
    """The fused class of ``twin``: same name, arguments and ``state_dict`` keys; its constructor
    runs ``twin``'s, then ``cnnkernels.fuse(self.net, inplace=True)``."""

    def __init__(self, *args, **kwargs):
        twin.__init__(self, *args, **kwargs)
        fuse(self.net, inplace=True)

    doc = (
        f"{twin.__name__} on the ``cnnkernels`` kernels: ``cnnkernels.fuse`` of "
        f"``cnnkernels.models.reference.{twin.__name__}`` at construction, with the same constructor "
        "arguments and ``state_dict`` keys; inputs are checked against ``min_input_size`` and "
        "converted to channels_last.\n\n" + (twin.__doc__ or "")
    )
    cls = type(
        twin.__name__,
        (FusedClassifier, twin),
        {"__init__": __init__, "__doc__": doc, "__module__": "cnnkernels.models", "_twin": twin},
    )
    cls.__qualname__ = twin.__name__
    return cls
