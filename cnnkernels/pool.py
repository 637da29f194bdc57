"""Max pooling and adaptive / global average pooling as ``torch.library`` ops and autograd
functions.

Ops (namespace ``cnnkernels``), each a ``triton_op`` so ``torch.compile`` traces them:
``max_pool2d`` -> (Y, argmax, indices), ``max_pool2d_backward``, ``adaptive_avg_pool2d``,
``adaptive_avg_pool2d_backward``, ``global_avg_pool2d``, ``global_avg_pool2d_backward``.

Backward maths:
    max pool:   dX[h,w] = sum over windows (p,q) whose saved argmax is the tap landing on (h,w)
                of dY[p,q]; the forward saves only the small within-window argmax, not X.
    adaptive:   dX[h,w] = sum over windows (p,q) containing (h,w) of dY[p,q] / (kh(p) kw(q)).
    global:     dX[h,w] = dY / (H*W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cnnkernels.kernels import avgpool as _ka
from cnnkernels.kernels import pool as _k

from . import _fast
from ._utils import check_tensor, is_channels_last, memory_format, pair

# Max pooling.


@torch.library.triton_op("cnnkernels::max_pool2d", mutates_args=())
def max_pool2d_op(
    x: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
    return_indices: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    y, arg, idx = _k.max_pool2d_forward(
        x, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), ceil_mode, return_indices
    )
    if idx is None:
        idx = x.new_empty((0,), dtype=torch.int64)
    return y, arg, idx


@torch.library.triton_op("cnnkernels::max_pool2d_backward", mutates_args=())
def max_pool2d_backward_op(
    grad_out: Tensor,
    argmax: Tensor,
    input_shape: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    channels_last: bool,
) -> Tensor:
    geometry = map(tuple, (input_shape, kernel_size, stride, padding, dilation))
    return _k.max_pool2d_backward(grad_out, argmax, *geometry, memory_format(channels_last))


class MaxPool2dFunction(torch.autograd.Function):
    """(Y, indices) = max_pool2d(X) on the ``cnnkernels`` ops; 4-D X, arguments normalised by
    ``max_pool2d_args``. Saves only the small within-window argmax for the backward; indices
    (empty unless ``return_indices``) are not differentiable. With ``create_graph=True`` the
    backward is ``MaxPool2dBackwardFunction``, itself differentiable."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
        y, arg, idx = torch.ops.cnnkernels.max_pool2d(
            x, kernel_size, stride, padding, dilation, ceil_mode, return_indices
        )
        ctx.geometry = (list(x.shape), kernel_size, stride, padding, dilation, is_channels_last(x))
        ctx.save_for_backward(arg)
        ctx.mark_non_differentiable(idx)
        return y, idx

    @staticmethod
    def backward(ctx, grad_y, grad_idx):
        (arg,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            grad_x = MaxPool2dBackwardFunction.apply(grad_y, arg, *ctx.geometry)
        else:
            grad_x = torch.ops.cnnkernels.max_pool2d_backward(grad_y, arg, *ctx.geometry)
        return grad_x, None, None, None, None, None, None


class MaxPool2dBackwardFunction(torch.autograd.Function):
    """dX = the max-pool backward of dY (a scatter to each window's saved argmax). Linear in dY;
    its backward is the matching gather: d(dY)[p, q] = g[argmax position of window (p, q)], zero
    for a window that covers no input pixel."""

    @staticmethod
    def forward(ctx, grad_y, arg, input_shape, kernel_size, stride, padding, dilation, channels_last):
        ctx.geometry = (input_shape, kernel_size, stride, padding, dilation)
        ctx.save_for_backward(arg)
        return torch.ops.cnnkernels.max_pool2d_backward(
            grad_y, arg, input_shape, kernel_size, stride, padding, dilation, channels_last
        )

    @staticmethod
    def backward(ctx, g):
        (arg,) = ctx.saved_tensors
        return max_pool_gather(g, arg, *ctx.geometry), None, None, None, None, None, None, None


def max_pool_gather(g, arg, input_shape, kernel_size, stride, padding, dilation):
    """out[n, c, p, q] = g[n, c, argmax position of window (p, q)], zero for a window that covers
    no input pixel: the adjoint of the max-pool backward's scatter (torch ops, differentiable)."""
    n, c, h, w = input_shape
    s = kernel_size[1]
    p, q = arg.shape[2], arg.shape[3]
    a = arg.long()
    rows = torch.arange(p, device=arg.device).view(1, 1, p, 1) * stride[0] - padding[0]
    cols = torch.arange(q, device=arg.device).view(1, 1, 1, q) * stride[1] - padding[1]
    ih = rows + (a // s) * dilation[0]
    iw = cols + (a % s) * dilation[1]
    valid = a >= 0
    flat = torch.where(valid, ih * w + iw, 0).reshape(n, c, p * q)
    picked = g.reshape(n, c, h * w).gather(2, flat).view(n, c, p, q)
    return torch.where(valid, picked, torch.zeros_like(picked))


def _setup_max_pool(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, _, _ = inputs
    ctx.geometry = (list(x.shape), list(kernel_size), list(stride), list(padding), list(dilation), is_channels_last(x))
    ctx.save_for_backward(output[1])


def _max_pool_op_backward(ctx, grad_y, grad_arg, grad_idx):
    return MaxPool2dFunction.backward(ctx, grad_y, None)


def _setup_max_pool_bwd(ctx, inputs, output):
    _, arg, input_shape, kernel_size, stride, padding, dilation, _ = inputs
    ctx.geometry = (list(input_shape), list(kernel_size), list(stride), list(padding), list(dilation))
    ctx.save_for_backward(arg)


def _max_pool_bwd_op_backward(ctx, g):
    return MaxPool2dBackwardFunction.backward(ctx, g)


def _check_input(input, name: str = "input") -> None:
    check_tensor(input, name, (3, 4))
    spatial = input.shape[-3:]
    if 0 in spatial:
        raise ValueError(
            f"{name} must have non-zero channel, height and width sizes (only the batch may be empty), "
            f"got shape {tuple(input.shape)}"
        )


def max_pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate ``torch.nn.functional.max_pool2d`` arguments; return the 4-D input view, whether
    it was unbatched, and normalised (kernel_size, stride, padding, dilation) as lists."""
    _check_input(input)
    kernel_size = pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else stride
    stride = pair(stride, "stride")
    padding = pair(padding, "padding")
    dilation = pair(dilation, "dilation")
    if min(kernel_size) < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size}")
    if min(stride) < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be positive, got {dilation}")
    if min(padding) < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel_size}")
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    h, w = x.shape[2], x.shape[3]
    p = _k.pool_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    q = _k.pool_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    if p < 1 or q < 1:
        eff = (dilation[0] * (kernel_size[0] - 1) + 1, dilation[1] * (kernel_size[1] - 1) + 1)
        raise ValueError(
            f"kernel_size {eff} (dilated) is larger than the padded input {(h + 2 * padding[0], w + 2 * padding[1])}"
        )
    return x, unbatched, list(kernel_size), list(stride), list(padding), list(dilation)


class PlannedMaxPoolFunction(torch.autograd.Function):
    """``MaxPool2dFunction`` replayed from a ``_fast.Plan``: same kernel, saved argmax and backward."""

    @staticmethod
    def forward(ctx, x, plan):
        y, arg, *idx = plan.launches.run((x,))  # idx only with return_indices
        ctx.geometry = plan.geometry
        ctx.save_for_backward(arg)
        if idx:
            ctx.mark_non_differentiable(idx[0])
            return y, idx[0]
        return y

    @staticmethod
    def backward(ctx, grad_y, grad_idx=None):
        return MaxPool2dFunction.backward(ctx, grad_y, grad_idx)[0], None


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """``torch.nn.functional.max_pool2d``: any kernel size, stride (default kernel_size), padding
    (at most half the kernel), dilation and ceil_mode; (N, C, H, W) or unbatched (C, H, W)
    input, NCHW or channels_last (the output follows); fp16, bf16, fp32, fp64. NaN propagates
    and ties pick the first maximum, as in torch; with ``return_indices`` also returns torch's
    int64 flat indices into each input plane. The backward is deterministic (no atomics)."""
    flags = (type(ceil_mode), type(return_indices))  # 1 == True, but only a bool passes the checks
    args = ("max", kernel_size, stride, padding, dilation, ceil_mode, return_indices, flags)
    key, plan = _fast.lookup(args, input)
    if plan is not None:
        return plan(input)
    if not isinstance(return_indices, bool):
        raise TypeError(f"return_indices must be a bool, got {return_indices!r}")
    x, unbatched, kernel_size, stride, padding, dilation = max_pool2d_args(
        input, kernel_size, stride, padding, dilation, ceil_mode
    )
    geometry = (kernel_size, stride, padding, dilation)
    if key is not None and not key[-1]:
        # No autograd: the launcher alone, without the argmax no backward reads (unless indices).
        def call():
            return _k.max_pool2d_forward(x, *geometry, ceil_mode, return_indices, False)

        def plan(record, out):
            outs = (out[0], out[2]) if return_indices else out[:1]
            return _fast.Plan.of(unbatched, _fast.LaunchPlan.build(record, (x,), outs))

        y, _, idx = _fast.planned(key, call, plan)
    else:

        def plan(record, out):
            arg = _fast.written(record, out[0], _k.argmax_dtype(kernel_size))
            launches = _fast.LaunchPlan.build(record, (x,), (out[0], arg, out[1]) if return_indices else (out[0], arg))
            saved = (list(x.shape), *geometry, is_channels_last(x))
            return _fast.Plan.of(unbatched, launches, PlannedMaxPoolFunction, geometry=saved)

        y, idx = _fast.planned(key, lambda: MaxPool2dFunction.apply(x, *geometry, ceil_mode, return_indices), plan)
    if unbatched:
        y = y.squeeze(0)
        idx = idx.squeeze(0) if return_indices else idx
    return (y, idx) if return_indices else y


# Adaptive and global average pooling.


@torch.library.triton_op("cnnkernels::adaptive_avg_pool2d", mutates_args=())
def adaptive_avg_pool2d_op(x: Tensor, output_size: list[int]) -> Tensor:
    return _ka.adaptive_avg_pool2d_forward(x, tuple(output_size))


@torch.library.triton_op("cnnkernels::adaptive_avg_pool2d_backward", mutates_args=())
def adaptive_avg_pool2d_backward_op(grad_out: Tensor, input_shape: list[int], channels_last: bool) -> Tensor:
    return _ka.adaptive_avg_pool2d_backward(grad_out, tuple(input_shape), memory_format(channels_last))


@torch.library.triton_op("cnnkernels::global_avg_pool2d", mutates_args=())
def global_avg_pool2d_op(x: Tensor) -> Tensor:
    return _ka.global_avg_pool2d_forward(x)


@torch.library.triton_op("cnnkernels::global_avg_pool2d_backward", mutates_args=())
def global_avg_pool2d_backward_op(grad_out: Tensor, input_shape: list[int], channels_last: bool) -> Tensor:
    return _ka.global_avg_pool2d_backward(grad_out, tuple(input_shape), memory_format(channels_last))


class AdaptiveAvgPool2dFunction(torch.autograd.Function):
    """Y = adaptive_avg_pool2d(X, output_size) on the ``cnnkernels`` ops, 4-D X. Output size
    (1, 1) runs the global-average reduction kernels; anything else the windowed ones. With
    ``create_graph=True`` the backward is ``AdaptiveAvgPool2dBackwardFunction``."""

    @staticmethod
    def forward(ctx, x, output_size):
        is_global = list(output_size) == [1, 1]
        if is_global:
            y = torch.ops.cnnkernels.global_avg_pool2d(x)
        else:
            y = torch.ops.cnnkernels.adaptive_avg_pool2d(x, output_size)
        ctx.geometry = (list(x.shape), list(output_size), is_channels_last(x))
        return y

    @staticmethod
    def backward(ctx, grad_y):
        if torch.is_grad_enabled():  # create_graph=True
            return AdaptiveAvgPool2dBackwardFunction.apply(grad_y, *ctx.geometry), None
        return _avg_pool_backward(grad_y, *ctx.geometry), None


def _avg_pool_backward(grad_y, input_shape, output_size, channels_last):
    if output_size == [1, 1]:
        return torch.ops.cnnkernels.global_avg_pool2d_backward(grad_y, input_shape, channels_last)
    return torch.ops.cnnkernels.adaptive_avg_pool2d_backward(grad_y, input_shape, channels_last)


class AdaptiveAvgPool2dBackwardFunction(torch.autograd.Function):
    """dX = the adaptive-average spread of dY. Linear in dY, and the adjoint of the spread is
    the pooling itself: d(dY) = adaptive_avg_pool2d(g, output_size)."""

    @staticmethod
    def forward(ctx, grad_y, input_shape, output_size, channels_last):
        ctx.output_size = output_size
        return _avg_pool_backward(grad_y, input_shape, output_size, channels_last)

    @staticmethod
    def backward(ctx, g):
        return AdaptiveAvgPool2dFunction.apply(g, ctx.output_size), None, None, None


def _setup_avg(ctx, inputs, output):
    x = inputs[0]
    ctx.geometry = (list(x.shape), list(output.shape[2:]), is_channels_last(x))


def _avg_op_backward(ctx, grad_y):
    return AdaptiveAvgPool2dFunction.backward(ctx, grad_y)


def _global_op_backward(ctx, grad_y):
    return AdaptiveAvgPool2dFunction.backward(ctx, grad_y)[0]


def _setup_avg_bwd(ctx, inputs, output):
    ctx.output_size = list(inputs[0].shape[2:])


def _avg_bwd_op_backward(ctx, g):
    return AdaptiveAvgPool2dFunction.apply(g, ctx.output_size), None, None


# The ops are differentiable on their own too (to any order), for callers of torch.ops.cnnkernels.
for _name, _backward, _setup in (
    ("max_pool2d", _max_pool_op_backward, _setup_max_pool),
    ("max_pool2d_backward", _max_pool_bwd_op_backward, _setup_max_pool_bwd),
    ("adaptive_avg_pool2d", _avg_op_backward, _setup_avg),
    ("global_avg_pool2d", _global_op_backward, _setup_avg),
    ("adaptive_avg_pool2d_backward", _avg_bwd_op_backward, _setup_avg_bwd),
    ("global_avg_pool2d_backward", _avg_bwd_op_backward, _setup_avg_bwd),
):
    torch.library.register_autograd(f"cnnkernels::{_name}", _backward, setup_context=_setup)


def adaptive_output_size(output_size, input_hw: tuple[int, int]) -> list[int]:
    """``output_size`` as torch takes it (an int, or a pair whose None entries keep the input
    size), normalised to a list of two positive ints."""
    if isinstance(output_size, Sequence) and not isinstance(output_size, str):
        if len(output_size) != 2:
            raise TypeError(f"output_size must be an int or a pair, got {output_size!r}")
        output_size = tuple(d if v is None else v for v, d in zip(output_size, input_hw))
    size = pair(output_size, "output_size")
    if min(size) < 1:
        raise ValueError(f"output_size must be positive, got {size}")
    return list(size)


class PlannedAvgPoolFunction(torch.autograd.Function):
    """``AdaptiveAvgPool2dFunction`` replayed from a ``_fast.Plan``."""

    @staticmethod
    def forward(ctx, x, plan):
        ctx.geometry = plan.geometry
        return plan.launches.run((x,))

    @staticmethod
    def backward(ctx, grad_y):
        return AdaptiveAvgPool2dFunction.backward(ctx, grad_y)[0], None


def adaptive_avg_pool2d(input, output_size):
    """``torch.nn.functional.adaptive_avg_pool2d``: ``output_size`` an int or a pair whose None
    entries keep the input size. Output size 1 (global average pooling) runs its own
    per-(n, c) reduction kernel. As in torch, zero channels (like a zero batch) give an empty
    result; a zero height or width is refused. The backward is deterministic (no atomics)."""
    key, plan = _fast.lookup(("avg", output_size), input)
    if plan is not None:
        return plan(input)
    check_tensor(input, "input", (3, 4))
    if 0 in input.shape[-2:]:
        raise ValueError(f"input must have non-zero height and width, got shape {tuple(input.shape)}")
    size = adaptive_output_size(output_size, tuple(input.shape[-2:]))
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input

    def plan(record, y):
        launches = _fast.LaunchPlan.build(record, (x,), (y,))
        if not key[-1]:
            return _fast.Plan.of(unbatched, launches)
        geometry = (list(x.shape), list(size), is_channels_last(x))
        return _fast.Plan.of(unbatched, launches, PlannedAvgPoolFunction, geometry=geometry)

    y = _fast.planned(key, lambda: AdaptiveAvgPool2dFunction.apply(x, size), plan)
    return y.squeeze(0) if unbatched else y
