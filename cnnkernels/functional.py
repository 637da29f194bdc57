"""Drop-in functions with ``torch.nn.functional``'s signatures and semantics, running the
``cnnkernels`` Triton kernels forward and backward (the pooling, cat and fused conv + pool
functions are those of ``cnnkernels.pool``, ``.cat`` and ``.convpool``)."""

from __future__ import annotations

from . import conv as _conv
from .cat import cat
from .convpool import conv1x1_relu_conv2d_relu_max_pool2d, conv2d_relu_max_pool2d
from .pool import adaptive_avg_pool2d, max_pool2d

__all__ = [
    "conv2d",
    "conv2d_relu",
    "max_pool2d",
    "adaptive_avg_pool2d",
    "cat",
    "conv2d_relu_max_pool2d",
    "conv1x1_relu_conv2d_relu_max_pool2d",
]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``torch.nn.functional.conv2d``: any kernel size, stride, padding (int, pair, 'same',
    'valid'), dilation and groups; (N, C, H, W) or unbatched (C, H, W) input, NCHW or
    channels_last; fp16, bf16, fp32 (TF32 exactly when ``torch.backends.cudnn.allow_tf32``), fp64.
    Under ``torch.autocast`` the inputs are cast like ``nn.Conv2d``'s."""
    return _conv.conv2d(input, weight, bias, stride, padding, dilation, groups, activation="none")


def conv2d_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``relu(conv2d(...))`` in one kernel: bias and ReLU fused on the accumulator; the
    backward takes its mask from the saved output. Same arguments as ``conv2d``."""
    return _conv.conv2d(input, weight, bias, stride, padding, dilation, groups, activation="relu")
