"""Convolution (+ bias + ReLU) as ``torch.library`` ops and an autograd function.

Ops (namespace ``cnnkernels``): ``conv2d``, ``conv2d_backward_input``,
``conv2d_backward_weight``; each is a ``triton_op``, so ``torch.compile`` traces them.
``Conv2dFunction`` calls them in forward and backward.

Backward maths, for Y = act(conv(X, W) + b) and dY' = dY * (Y > 0) under ReLU (else dY):
    dX = conv_transpose(dY', W)       gathered per input pixel, strides by divisibility masks
    dW[k,c,r,s] = sum_{n,p,q} dY'[n,k,p,q] X[n,c,p*sh-pt+r*dh,q*sw-pl+s*dw]
    db[k] = sum_{n,p,q} dY'[n,k,p,q]
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from cnnkernels.kernels import conv as _k

from . import conv1x1
from ._utils import autocast_dtype, check_same, check_tensor, is_channels_last, memory_format, pair


@torch.library.triton_op("cnnkernels::conv2d", mutates_args=())
def conv2d_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str,
    channels_last: bool,
) -> Tensor:
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    p = _k.conv_output_size(h, r, stride[0], padding[0] + padding[1], dilation[0])
    q = _k.conv_output_size(w, s, stride[1], padding[2] + padding[3], dilation[1])
    fmt = memory_format(channels_last)
    out = torch.empty((n, k, p, q), device=x.device, dtype=x.dtype, memory_format=fmt)
    return _k.conv2d_forward(
        x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups, activation, out=out
    )


@torch.library.triton_op("cnnkernels::conv2d_backward_input", mutates_args=())
def conv2d_backward_input_op(
    grad_out: Tensor,
    out: Tensor,
    weight: Tensor,
    input_shape: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str,
    channels_last: bool,
) -> Tensor:
    fmt = memory_format(channels_last)
    return _k.conv2d_backward_input(
        grad_out,
        out,
        weight,
        tuple(input_shape),
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        groups,
        activation,
        fmt,
    )


@torch.library.triton_op("cnnkernels::conv2d_backward_weight", mutates_args=())
def conv2d_backward_weight_op(
    x: Tensor,
    grad_out: Tensor,
    out: Tensor,
    weight: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str,
    need_bias: bool,
) -> tuple[Tensor, Tensor]:
    dw, db = _k.conv2d_backward_weight(
        x, grad_out, out, weight, tuple(stride), tuple(padding), tuple(dilation), groups, activation, need_bias
    )
    if db is None:
        db = grad_out.new_empty((0,))
    return dw, db


def _conv_forward(ctx, x, weight, bias, stride, padding, dilation, groups, activation):
    # NHWC output when the input or the weight is NHWC, as cuDNN decides.
    channels_last = is_channels_last(x) or is_channels_last(weight)
    y = torch.ops.cnnkernels.conv2d(x, weight, bias, stride, padding, dilation, groups, activation, channels_last)
    ctx.geometry = (stride, padding, dilation, groups, activation)
    ctx.has_bias = bias is not None
    ctx.channels_last = channels_last
    # Under ReLU the output itself is saved: its sign is the backward mask.
    ctx.save_for_backward(x, weight, y if activation == "relu" else None)
    return y


def _conv_backward(ctx, grad_y):
    x, weight, y = ctx.saved_tensors
    stride, padding, dilation, groups, activation = ctx.geometry
    y = grad_y if y is None else y  # the ops read ``out`` only under ReLU
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.cnnkernels.conv2d_backward_input(
            grad_y, y, weight, list(x.shape), stride, padding, dilation, groups, activation, ctx.channels_last
        )
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    if ctx.needs_input_grad[1] or need_b:
        dw, db = torch.ops.cnnkernels.conv2d_backward_weight(
            x, grad_y, y, weight, stride, padding, dilation, groups, activation, need_b
        )
        grad_w = dw if ctx.needs_input_grad[1] else None
        grad_b = db if need_b else None
    return grad_x, grad_w, grad_b, None, None, None, None


class Conv2dFunction(torch.autograd.Function):
    """Y = conv2d(X, W) + b on the ``cnnkernels`` Triton ops, forward and backward.
    Arguments are normalised by ``conv2d_args`` (padding as (top, bottom, left, right))."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        return _conv_forward(ctx, x, weight, bias, stride, padding, dilation, groups, "none")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        return _conv_backward(ctx, grad_y)


class Conv2dReLUFunction(torch.autograd.Function):
    """Y = relu(conv2d(X, W) + b), the ReLU fused into the epilogue; backward masks dY with
    Y > 0 while loading it."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        return _conv_forward(ctx, x, weight, bias, stride, padding, dilation, groups, "relu")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        return _conv_backward(ctx, grad_y)


_FUNCTIONS = {"none": Conv2dFunction, "relu": Conv2dReLUFunction}


def conv2d_args(input, weight, bias, stride, padding, dilation, groups):
    """Validate ``torch.nn.functional.conv2d`` arguments; return the 4-D input view, whether
    the input was unbatched, and normalised (stride, padding(top, bottom, left, right), dilation)."""
    check_tensor(input, "input", (3, 4))
    check_tensor(weight, "weight", (4,))
    check_same(input, weight, "input", "weight")
    if bias is not None:
        check_tensor(bias, "bias", (1,))
        check_same(input, bias, "input", "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} elements but weight has {weight.shape[0]} output channels")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    c_in = x.shape[1]
    k_out, cg, r, s = weight.shape
    if c_in == 0 or k_out == 0:
        raise ValueError(f"input channels and output channels must be positive, got {c_in} and {k_out}")
    if k_out % groups != 0:
        raise ValueError(f"groups={groups} does not divide the weight's {k_out} output channels")
    if c_in % groups != 0:
        raise ValueError(f"groups={groups} does not divide the input's {c_in} channels")
    if cg * groups != c_in:
        raise ValueError(
            f"input has {c_in} channels but weight of shape {tuple(weight.shape)} with groups={groups} expects {cg * groups}"
        )
    stride = pair(stride, "stride")
    dilation = pair(dilation, "dilation")
    if min(stride) < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be positive, got {dilation}")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            th, tw = dilation[0] * (r - 1), dilation[1] * (s - 1)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        ph, pw = pair(padding, "padding")
        if ph < 0 or pw < 0:
            raise ValueError(f"padding must be non-negative, got {(ph, pw)}")
        pads = (ph, ph, pw, pw)
    h, w = x.shape[2], x.shape[3]
    eff_r, eff_s = dilation[0] * (r - 1) + 1, dilation[1] * (s - 1) + 1
    if h + pads[0] + pads[1] < eff_r or w + pads[2] + pads[3] < eff_s:
        raise ValueError(
            f"kernel size {(eff_r, eff_s)} (dilated) is larger than the padded input "
            f"{(h + pads[0] + pads[1], w + pads[2] + pads[3])}"
        )
    return x, unbatched, list(stride), list(pads), list(dilation)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation: str = "none"):
    """Shared body of ``functional.conv2d`` and ``functional.conv2d_relu``."""
    if isinstance(input, Tensor) and isinstance(weight, Tensor):
        # Under autocast, cast first (as nn.Conv2d does), so fp32 weights meet a bf16 input.
        cast = autocast_dtype(input.device.type)
        floats = (torch.float16, torch.bfloat16, torch.float32)
        if cast is not None and input.dtype in floats and weight.dtype in floats:
            input, weight = input.to(cast), weight.to(cast)
            if isinstance(bias, Tensor) and bias.dtype in floats:
                bias = bias.to(cast)
    x, unbatched, stride, pads, dilation = conv2d_args(input, weight, bias, stride, padding, dilation, groups)
    if conv1x1.eligible(weight, stride, pads, groups):
        y = conv1x1.FUNCTIONS[activation].apply(x, weight, bias)
    else:
        y = _FUNCTIONS[activation].apply(x, weight, bias, stride, pads, dilation, groups)
    return y.squeeze(0) if unbatched else y
