"""Modules subclassing their ``torch.nn`` counterparts (same init, ``reset_parameters`` and
``state_dict``), with ``forward`` on the ``cnnkernels`` kernels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import functional as F
from .inception import InceptionFunction


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` on the fused kernel (padding_mode 'zeros' only)."""

    _activation = F.conv2d

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"padding_mode={self.padding_mode!r} is not supported; only 'zeros'")

    def forward(self, input):
        return type(self)._activation(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class Conv2dReLU(Conv2d):
    """``nn.Conv2d`` followed by ReLU, fused into one kernel."""

    _activation = F.conv2d_relu


class LazyConv2d(nn.LazyConv2d):
    """``nn.LazyConv2d`` on the fused kernel: in_channels inferred at the first call, after
    which the module becomes a ``cnnkernels.nn.Conv2d``."""

    cls_to_become = Conv2d
    _activation = F.conv2d
    forward = Conv2d.forward

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"padding_mode={self.padding_mode!r} is not supported; only 'zeros'")


class LazyConv2dReLU(LazyConv2d):
    """``LazyConv2d`` with the ReLU fused; becomes a ``Conv2dReLU``."""

    cls_to_become = Conv2dReLU
    _activation = F.conv2d_relu


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` on the ``cnnkernels`` max-pool kernels (same arguments and semantics)."""

    def forward(self, input):
        return F.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` on the ``cnnkernels`` kernels; output size 1 is the global
    average-pooling reduction."""

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)


class Inception(nn.Module):
    """The seed's Inception block (c1, (c2a, c2b), (c3a, c3b), c4) on fused, zero-copy kernels.

    Submodules and ``state_dict`` keys are the seed's (b1_1, b2_1, b2_2, b3_1, b3_2, b4_1, b4_2);
    input channels are inferred at the first call like ``nn.LazyConv2d``. Output is NHWC."""

    def __init__(self, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        self.b1_1 = LazyConv2dReLU(c1, kernel_size=1)
        self.b2_1 = LazyConv2dReLU(c2[0], kernel_size=1)
        self.b2_2 = LazyConv2dReLU(c2[1], kernel_size=3, padding=1)
        self.b3_1 = LazyConv2dReLU(c3[0], kernel_size=1)
        self.b3_2 = LazyConv2dReLU(c3[1], kernel_size=5, padding=2)
        self.b4_1 = MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = LazyConv2dReLU(c4, kernel_size=1)

    def _materialize(self, x: Tensor) -> None:
        """Infer every lazy conv's in_channels from shapes alone (no computation)."""
        c = x.shape[-3]
        for conv, c_in in (
            (self.b1_1, c),
            (self.b2_1, c),
            (self.b3_1, c),
            (self.b4_2, c),
            (self.b2_2, self.b2_1.out_channels),
            (self.b3_2, self.b3_1.out_channels),
        ):
            if isinstance(conv, nn.modules.lazy.LazyModuleMixin) and conv.has_uninitialized_params():
                conv._infer_parameters(conv, (x.new_empty((1, c_in, 1, 1)),))

    # (kernel, padding) of each fused conv+ReLU branch layer, as the block computes them.
    _GEOMETRY = {"b1_1": (1, 0), "b2_1": (1, 0), "b2_2": (3, 1), "b3_1": (1, 0), "b3_2": (5, 2), "b4_2": (1, 0)}

    def _check_branches(self) -> None:
        """The block runs its branches as one fused computation from their parameters, not by
        calling them: refuse anything it would silently ignore (a swapped or re-shaped branch,
        a missing bias, hooks such as pruning or weight norm)."""
        for name, (k, pad) in self._GEOMETRY.items():
            conv = getattr(self, name)
            if not isinstance(conv, Conv2dReLU):
                raise ValueError(f"Inception.{name} must stay a cnnkernels Conv2dReLU, got {type(conv).__name__}")
            geometry = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
            if geometry != ((k, k), (1, 1), (pad, pad), (1, 1), 1) or conv.padding_mode != "zeros":
                raise ValueError(f"Inception.{name} must be a {k}x{k} conv with padding {pad}, stride 1, one group")
            if conv.bias is None:
                raise ValueError(f"Inception.{name} needs a bias")
            want = (conv.out_channels, conv.in_channels, k, k)
            if tuple(conv.weight.shape) != want or tuple(conv.bias.shape) != (conv.out_channels,):
                raise ValueError(
                    f"Inception.{name} has a weight of shape {tuple(conv.weight.shape)} and a bias of shape "
                    f"{tuple(conv.bias.shape)}; the block needs {want} and ({conv.out_channels},)"
                )
            if conv._forward_pre_hooks or conv._forward_hooks:
                raise ValueError(f"Inception.{name} has forward hooks, which the fused block would not run")
        for name, reduce in (("b2_2", self.b2_1), ("b3_2", self.b3_1)):
            conv = getattr(self, name)
            if conv.in_channels != reduce.out_channels:
                raise ValueError(
                    f"Inception.{name} takes {conv.in_channels} channels but its reduce conv gives "
                    f"{reduce.out_channels}"
                )
        pool = self.b4_1
        if not isinstance(pool, nn.MaxPool2d) or type(pool).forward not in (
            nn.MaxPool2d.forward,
            MaxPool2d.forward,
        ):
            raise ValueError(f"Inception.b4_1 must stay a 3x3 max pool, got {type(pool).__name__}")
        if (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, pool.return_indices) not in (
            (3, 1, 1, 1, False, False),
            ((3, 3), (1, 1), (1, 1), (1, 1), False, False),
        ):
            raise ValueError("Inception.b4_1 must be a 3x3 max pool with stride 1 and padding 1")
        if pool._forward_pre_hooks or pool._forward_hooks:
            raise ValueError("Inception.b4_1 has forward hooks, which the fused block would not run")

    def forward(self, x: Tensor) -> Tensor:
        from ._utils import autocast_dtype, check_tensor

        check_tensor(x, "input", (3, 4))
        self._materialize(x)
        self._check_branches()
        unbatched = x.dim() == 3
        x4 = x.unsqueeze(0) if unbatched else x
        if self.b1_1.in_channels != x4.shape[1]:
            raise ValueError(f"input has {x4.shape[1]} channels, the block was built for {self.b1_1.in_channels}")
        params = []
        for conv in (self.b1_1, self.b2_1, self.b2_2, self.b3_1, self.b3_2, self.b4_2):
            params += [conv.weight, conv.bias]
        cast = autocast_dtype(x4.device.type)
        if cast is not None and x4.dtype != torch.float64:  # like nn.Conv2d under autocast
            x4 = x4.to(cast)
            params = [p.to(cast) for p in params]
        elif any(p.dtype != x4.dtype for p in params):
            raise TypeError(f"input dtype {x4.dtype} differs from the block's parameter dtype {params[0].dtype}")
        pooled = F.max_pool2d(x4, 3, 1, 1)
        out = InceptionFunction.apply(x4, pooled, *params)
        return out.squeeze(0) if unbatched else out
