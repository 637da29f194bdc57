"""1x1 convolution on the GEMM kernels of ``kernels/conv1x1.py``, as ``torch.library`` ops.

``functional.conv2d``/``conv2d_relu`` route here by themselves when the kernel is 1x1 with
stride 1, no padding and one group. Backward maths (dY' = dY * (Y > 0) under ReLU):
    dX[m, c] = sum_k dY'[m, k] W[k, c];  dW[k, c] = sum_m dY'[m, k] X[m, c];  db[k] = sum_m dY'[m, k]
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from cnnkernels.kernels import conv1x1 as _k

from ._utils import is_channels_last, memory_format


@torch.library.triton_op("cnnkernels::conv1x1", mutates_args=())
def conv1x1_op(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str, channels_last: bool) -> Tensor:
    n, _, h, w = x.shape
    y = torch.empty(
        (n, weight.shape[0], h, w), device=x.device, dtype=x.dtype, memory_format=memory_format(channels_last)
    )
    _k.conv1x1_forward(x, weight, bias, activation, y)
    return y


@torch.library.triton_op("cnnkernels::conv1x1_backward_input", mutates_args=())
def conv1x1_backward_input_op(
    grad_out: Tensor, out: Tensor, weight: Tensor, input_shape: list[int], activation: str, channels_last: bool
) -> Tensor:
    dx = torch.empty(
        input_shape, device=grad_out.device, dtype=grad_out.dtype, memory_format=memory_format(channels_last)
    )
    return _k.conv1x1_backward_input(grad_out, out, weight, dx, activation)


@torch.library.triton_op("cnnkernels::conv1x1_backward_weight", mutates_args=())
def conv1x1_backward_weight_op(
    x: Tensor, grad_out: Tensor, out: Tensor, weight: Tensor, activation: str, need_bias: bool
) -> tuple[Tensor, Tensor]:
    dw, db = _k.conv1x1_backward_weight(x, grad_out, out, weight, activation, need_bias)
    return dw, (db if db is not None else grad_out.new_empty((0,)))


def _forward(ctx, x, weight, bias, activation):
    channels_last = is_channels_last(x) or is_channels_last(weight)  # as cuDNN decides
    y = torch.ops.cnnkernels.conv1x1(x, weight, bias, activation, channels_last)
    ctx.activation, ctx.has_bias, ctx.channels_last = activation, bias is not None, channels_last
    ctx.save_for_backward(x, weight, y if activation == "relu" else None)
    return y


def _backward(ctx, grad_y):
    x, weight, y = ctx.saved_tensors
    y = grad_y if y is None else y
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.cnnkernels.conv1x1_backward_input(
            grad_y, y, weight, list(x.shape), ctx.activation, ctx.channels_last
        )
    need_b = ctx.has_bias and ctx.needs_input_grad[2]
    if ctx.needs_input_grad[1] or need_b:
        dw, db = torch.ops.cnnkernels.conv1x1_backward_weight(x, grad_y, y, weight, ctx.activation, need_b)
        grad_w = dw if ctx.needs_input_grad[1] else None
        grad_b = db if need_b else None
    return grad_x, grad_w, grad_b


class Conv1x1Function(torch.autograd.Function):
    """Y = X W^T + b for a [K, C, 1, 1] weight, as one GEMM over the NHWC pixels."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        return _forward(ctx, x, weight, bias, "none")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        return _backward(ctx, grad_y)


class Conv1x1ReLUFunction(torch.autograd.Function):
    """Y = relu(X W^T + b), the ReLU fused; backward masks dY with Y > 0 while loading it."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        return _forward(ctx, x, weight, bias, "relu")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        return _backward(ctx, grad_y)


FUNCTIONS = {"none": Conv1x1Function, "relu": Conv1x1ReLUFunction}


def eligible(weight: Tensor, stride, pads, groups: int) -> bool:
    """A 1x1 kernel, stride 1, no padding, one group: the GEMM path applies (dilation is moot)."""
    return weight.shape[2:] == (1, 1) and tuple(stride) == (1, 1) and not any(pads) and groups == 1
