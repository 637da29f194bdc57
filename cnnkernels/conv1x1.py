"""1x1 convolution on the GEMM kernels of ``kernels/conv1x1.py``, as ``torch.library`` ops.

``functional.conv2d``/``conv2d_relu`` route here by themselves when the kernel is 1x1 with
stride 1, no padding and one group. Backward maths (dY' = dY * (Y > 0) under ReLU):
    dX[m, c] = sum_k dY'[m, k] W[k, c];  dW[k, c] = sum_m dY'[m, k] X[m, c];  db[k] = sum_m dY'[m, k]
"""

from __future__ import annotations

import torch
from torch import Tensor

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


_GEOMETRY = ([1, 1], [0, 0, 0, 0], [1, 1], 1)  # (stride, padding, dilation, groups) of a 1x1 conv


def _setup(ctx, inputs, output):
    """Shared by ``Conv1x1Function`` and the ``conv1x1`` op's registered autograd."""
    x, weight, bias, activation, channels_last = inputs
    ctx.activation, ctx.has_bias, ctx.channels_last = activation, bias is not None, channels_last
    ctx.save_for_backward(x, weight, output if activation == "relu" else None)


def _grads(ctx, grad_y):
    """(dX, dW, db): the GEMM kernels; with ``create_graph=True`` the differentiable convolution
    family of ``conv.py`` at 1x1 geometry."""
    x, weight, y = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.has_bias
    if torch.is_grad_enabled():  # create_graph=True
        from .conv import input_weight_grads, relu_mask

        g = relu_mask(grad_y, y)
        grad_b = g.sum((0, 2, 3)) if need_b else None
        return *input_weight_grads(g, x, weight, _GEOMETRY, ctx.channels_last, need_x, need_w), grad_b
    from .conv import prepared_grad

    grad_x = grad_w = None
    grad_y, grad_b = prepared_grad(grad_y, y, ctx.activation, need_b)
    if need_x:
        grad_x = torch.ops.cnnkernels.conv1x1_backward_input(
            grad_y, grad_y, weight, list(x.shape), "none", ctx.channels_last
        )
    if need_w:
        grad_w, _ = torch.ops.cnnkernels.conv1x1_backward_weight(x, grad_y, grad_y, weight, "none", False)
    return grad_x, grad_w, grad_b


class Conv1x1Function(torch.autograd.Function):
    """Y = act(X W^T + b) for a [K, C, 1, 1] weight, as one GEMM over the NHWC pixels; ``act``
    "none" or "relu" (fused; the backward masks dY with Y > 0 in one pass for both GEMMs). With
    ``create_graph=True`` the backward runs through the differentiable convolution family of
    ``conv.py`` (stride 1, no padding), so higher-order gradients are exact."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation):
        channels_last = is_channels_last(x) or is_channels_last(weight)  # as cuDNN decides
        args = (x, weight, bias, activation, channels_last)
        y = torch.ops.cnnkernels.conv1x1(*args)
        _setup(ctx, args, y)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return *_grads(ctx, grad_y), None


def _op_backward(ctx, grad_y):
    return *_grads(ctx, grad_y), None, None


def _setup_bwd_input(ctx, inputs, output):
    grad_out, out, weight, _, activation, _ = inputs
    ctx.save_for_backward(grad_out, out if activation == "relu" else None, weight)


def _bwd_input_op_backward(ctx, g):
    from .conv import backward_input_grads

    grad_out, out, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    d_dy, d_w = backward_input_grads(need[0], need[2], g, grad_out, out, weight, _GEOMETRY)
    return d_dy, None, d_w, None, None, None


def _setup_bwd_weight(ctx, inputs, output):
    x, grad_out, out, _, activation, need_bias = inputs
    ctx.need_bias, ctx.channels_last = need_bias, is_channels_last(x)
    ctx.save_for_backward(x, grad_out, out if activation == "relu" else None)


def _bwd_weight_op_backward(ctx, gdw, gdb):
    from .conv import backward_weight_grads

    x, grad_out, out = ctx.saved_tensors
    need = ctx.needs_input_grad
    d_x, d_dy = backward_weight_grads(
        need[0], need[1], gdw, gdb, x, grad_out, out, _GEOMETRY, ctx.channels_last, ctx.need_bias
    )
    return d_x, d_dy, None, None, None, None


# The ops are differentiable on their own too (to any order), for callers of torch.ops.cnnkernels.
torch.library.register_autograd("cnnkernels::conv1x1", _op_backward, setup_context=_setup)
torch.library.register_autograd(
    "cnnkernels::conv1x1_backward_input", _bwd_input_op_backward, setup_context=_setup_bwd_input
)
torch.library.register_autograd(
    "cnnkernels::conv1x1_backward_weight", _bwd_weight_op_backward, setup_context=_setup_bwd_weight
)


def eligible(weight: Tensor, stride, pads, groups: int) -> bool:
    """A 1x1 kernel, stride 1, no padding, one group: the GEMM path applies (dilation is moot)."""
    return weight.shape[2:] == (1, 1) and tuple(stride) == (1, 1) and not any(pads) and groups == 1
