"""Drop-in functions with ``torch.nn.functional``'s signatures and semantics, running the
``cnnkernels`` Triton kernels forward and backward."""

from __future__ import annotations

from . import cat as _cat
from . import conv as _conv
from . import pool as _pool


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


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """``torch.nn.functional.max_pool2d``: any kernel size, stride (default kernel_size), padding
    (at most half the kernel), dilation and ceil_mode; (N, C, H, W) or unbatched (C, H, W)
    input, NCHW or channels_last (the output follows); fp16, bf16, fp32, fp64. NaN propagates
    and ties pick the first maximum, as in torch; with ``return_indices`` also returns torch's
    int64 flat indices into each input plane. The backward is deterministic (no atomics)."""
    return _pool.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def adaptive_avg_pool2d(input, output_size):
    """``torch.nn.functional.adaptive_avg_pool2d``: ``output_size`` an int or a pair whose None
    entries keep the input size. Output size 1 (global average pooling) runs its own
    per-(n, c) reduction kernel. The backward is deterministic (no atomics)."""
    return _pool.adaptive_avg_pool2d(input, output_size)


def cat(tensors, dim=0):
    """``torch.cat``: any dim (negative counts from the end), any rank >= 1, NCHW and
    channels_last inputs (the output is channels_last exactly when torch's would be), sizes
    that differ along ``dim``; all inputs of one float dtype and device. The backward returns
    views (slices) of the gradient."""
    return _cat.cat(tensors, dim)


def conv2d_relu_max_pool2d(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    kernel_size=2,
    pool_stride=None,
    pool_padding=0,
    pool_dilation=1,
    ceil_mode=False,
):
    """``max_pool2d(relu(conv2d(input, weight, bias, stride, padding, dilation, groups)),
    kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode)`` as one op: the conv's
    arguments as in ``conv2d``, the pool's as in ``max_pool2d`` (``pool_stride`` None means
    ``kernel_size``). Only the pooled output and an int8 within-window argmax are saved for
    backward, never the full-resolution activation; same ties (first maximum) and NaN handling
    as the torch composition."""
    from . import convpool as _convpool

    return _convpool.conv2d_relu_max_pool2d(
        input,
        weight,
        bias,
        stride,
        padding,
        dilation,
        groups,
        kernel_size,
        pool_stride,
        pool_padding,
        pool_dilation,
        ceil_mode,
    )


def conv1x1_relu_conv2d_relu_max_pool2d(
    input,
    weight1,
    bias1,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    kernel_size=2,
    pool_stride=None,
    pool_padding=0,
    pool_dilation=1,
    ceil_mode=False,
):
    """``conv2d_relu_max_pool2d(relu(conv2d(input, weight1, bias1)), weight, bias, ...)`` for a
    1x1 ``weight1``: the 1x1 conv's output is recomputed in the backward (one 1x1 GEMM) instead of
    saved, so only the input, the weights, the pooled output and the int8 argmax are saved (NiN's
    blocks end this way). Same results as the composition."""
    from . import convpool as _convpool

    return _convpool.conv1x1_relu_conv2d_relu_max_pool2d(
        input,
        weight1,
        bias1,
        weight,
        bias,
        stride,
        padding,
        dilation,
        groups,
        kernel_size,
        pool_stride,
        pool_padding,
        pool_dilation,
        ceil_mode,
    )
