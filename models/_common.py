"""Pieces shared by the models.

* ``Classifier``: the d2l-style base of the ``torch.nn`` models (``self.net``, ``forward``,
  ``layer_summary``, ``hparams``, lazy materialisation with d2l's ``init_cnn``).
* ``fused_model(cls)``: the fused class of a ``torch.nn`` model class, i.e. ``cls`` whose ``net``
  is rewritten by ``cnnkernels.fuse`` at construction, with the input checks and the
  channels_last conversion at the entry (``FusedClassifier``).
* ``FusedReLU`` (from ``cnnkernels.fusion``): the placeholder at a fused ReLU's index in ``net``, so
  indices and ``state_dict`` keys stay the seed's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from cnnkernels.convpool import layer_by_layer
from cnnkernels.fusion import FusedReLU, fuse

__all__ = ["Classifier", "FusedClassifier", "FusedReLU", "fused_model", "init_cnn", "summary_name", "MIN_INPUT_SIZE"]


def summary_name(layer: nn.Module) -> str:
    """The class name ``layer_summary`` prints: the ``torch.nn`` class a ``cnnkernels`` layer
    subclasses (``Conv2dReLU`` -> ``Conv2d``, ``MaxPool2d`` -> ``MaxPool2d``), ``ReLU`` for a
    ``FusedReLU``, else the layer's own class name (``Sequential``, ``Inception``, ``Linear``)."""
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
    """d2l's ``init_cnn``: Xavier-uniform weights for conv and linear layers (biases keep
    torch's default initialisation)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)) and not isinstance(module, LazyModuleMixin):
        nn.init.xavier_uniform_(module.weight)


def _lazy_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: m for name, m in model.named_modules() if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()
    }


def _materialise(lazy: dict[str, nn.Module], weight_shapes: dict[str, torch.Size]) -> None:
    """Give each lazy layer its in_channels / in_features from the shape its weight must have
    (torch's own shape inference, fed a shape-only meta dummy), and switch it to its
    ``cls_to_become``, as its first forward would. Parameters get torch's default init."""
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
    # Loading into lazy layers: torch would materialise the parameters but leave in_channels
    # at 0; materialise them properly first, then the load copies the values in.
    shapes = {k[len(prefix) :]: v.shape for k, v in state_dict.items() if k.startswith(prefix)}
    _materialise(_lazy_modules(model), shapes)


# Smallest height (and width) each architecture admits, worked out layer by layer (output size
# of a conv or pool: floor((h + 2*pad - kernel) / stride) + 1, which must stay >= 1):
#   AlexNet: three 3x3/2 max pools need 15 -> 7 -> 3 -> 1, so the 11x11/4 conv (padding 1) must
#            give floor((H - 9) / 4) + 1 >= 15, i.e. H >= 65.
#   NiN:     same pools, 11x11/4 conv without padding: floor((H - 11) / 4) + 1 >= 15, H >= 67.
#   VGG:     every block ends in a 2x2/2 max pool and its convs keep the size: H >= 2**blocks
#            (32 for VGG-11).
#   GoogLeNet: every conv and pool pads enough that a 1x1 input stays 1x1: H >= 1.
MIN_INPUT_SIZE = {"AlexNet": 65, "NiN": 67, "GoogLeNet": 1}


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
        """Infer every lazy layer's input size for inputs of shape ``X_shape`` and initialise
        the weights as d2l's ``apply_init(..., init_cnn)`` does: torch's default init, then
        Xavier-uniform conv and linear weights. The shapes come from a ``torch.nn`` twin run on
        the ``meta`` device (no data, no kernel). No-op once materialised; ``forward`` and
        ``layer_summary`` call it, so the first batch already runs with the final weights."""
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
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)

    @property
    def min_input_size(self) -> int:
        """Smallest height (and width) the architecture admits; see each class's docstring."""
        raise NotImplementedError

    def _prepare(self, X: torch.Tensor) -> torch.Tensor:
        return X

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = self._prepare(X)
        self.materialize(X.shape)
        if self.nhwc_weights and not self.__dict__.get("_weights_nhwc", False):
            self._weights_to_channels_last()
        return self.net(X)

    def _weights_to_channels_last(self) -> None:
        """Keep conv weights NHWC in memory (as cuDNN prefers): the kernels then read each
        tap's channel run contiguously instead of with a stride of R*S. Done once, in place:
        the Parameter objects (and so any optimizer holding them) and ``state_dict`` keys and
        values stay the same; only the strides change."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and not isinstance(m.weight, nn.parameter.UninitializedParameter):
                    m.weight.data = m.weight.data.to(memory_format=torch.channels_last)
        self._weights_nhwc = True

    def layer_summary(self, X_shape, *, shape_only: bool = False) -> None:
        """Run a random batch of shape ``X_shape`` through ``net`` one layer (or block) at a
        time and print each one's output shape in d2l's format
        (``print(name, 'output shape:\\t', X.shape)``). Fused layers print under the name of the
        ``torch.nn`` layer they replace (``Conv2dReLU`` as ``Conv2d``, a ``FusedReLU`` as ``ReLU``),
        so a fused model's summary equals its reference twin's, line for line.

        ``shape_only=True`` runs a fresh copy of this architecture (same constructor arguments,
        untrained) on the ``meta`` device instead: only shapes propagate, nothing is computed
        and no kernel launches, so a 224x224 summary is instant and needs no GPU. (The fused
        ops support meta tensors; run that outside Triton's interpreter.) A model whose own
        parameters live on the ``meta`` device is summarised that way too."""
        if shape_only:
            with torch.device("meta"):
                twin = type(self)(**self.hparams)
            twin.train(self.training)
            return twin.layer_summary(X_shape)
        param = next(self.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
        if device.type == "meta":
            X = torch.empty(*X_shape, device=device, dtype=dtype)
        else:
            X = torch.randn(*X_shape, device=device, dtype=dtype)
        X = self._prepare(X)
        self.materialize(X.shape)
        with layer_by_layer():  # a layer fused with the next one shows its own output here
            for layer in self.net:
                X = layer(X)
                print(summary_name(layer), "output shape:\t", X.shape)


class FusedClassifier(Classifier):
    """Base of the fused models (see ``fused_model``): checks the input before anything runs and
    converts it to channels_last (NHWC in memory), the layout every kernel of the library
    prefers."""

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
    """The fused class of the ``torch.nn`` model class ``twin``: same name, constructor
    arguments, layers and ``state_dict`` keys; its constructor runs ``twin``'s and then
    ``cnnkernels.fuse(self.net, inplace=True)`` (conv + ReLU pairs fused with a ``FusedReLU`` at
    each ReLU's index, pools on the kernels, the seed's Inception blocks zero-copy)."""

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
