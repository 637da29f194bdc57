"""Modules subclassing their ``torch.nn`` counterparts (same init, ``reset_parameters`` and
``state_dict``), with ``forward`` on the ``cnnkernels`` kernels."""

from __future__ import annotations

from torch import nn

from . import functional as F


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


from .inception import Inception  # noqa: E402, F401  (the zero-copy block; see inception.py)
