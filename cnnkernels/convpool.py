"""Convolution + bias + ReLU + max pooling as one op: ``max_pool2d(relu(conv2d(X, W, b)))`` that
saves for backward only X, W, the pooled output Y and the int8 within-window argmax A; the
full-resolution activation Z = relu(conv2d(X, W, b)) is never saved.

Ops (namespace ``cnnkernels``): ``conv2d_relu_max_pool2d`` -> (Y, A), a ``triton_op``. Its forward
is one kernel (``kernels/convpool.py``) where that wins on the roofline (always for
non-overlapping windows such as VGG's 2x2/2; for overlapping 3x3/2 windows when recomputing the
shared conv pixels costs less than writing and reading Z once), otherwise the conv + ReLU kernel
writes Z as a temporary that the max-pool kernel reads and that is freed at once (not saved, so
the saved bytes are the same either way).

Backward maths, with Y > 0 exactly where the conv output at the argmax is (Y is that value):
    dY'  = dY where Y > 0 else 0   (torch's threshold_backward: a NaN in Y passes dY); db = sum dY'
    dZ'  = the max-pool backward of dY' (scattered to each window's argmax; gather form)
    dX   = conv_transpose(dZ', W),   dW = corr(X, dZ')      (the conv's dX and dW kernels)
With ``create_graph=True`` the same composition runs through differentiable functions
(``MaxPool2dBackwardFunction``, ``Conv2dBackwardInputFunction``, ``Conv2dBackwardWeightFunction``),
the mask and the argmax being constants, so second- and higher-order gradients are exact.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import Tensor

from cnnkernels.kernels import conv as _kc
from cnnkernels.kernels import convpool as _k
from cnnkernels.kernels import pool as _kp

from . import _fast
from . import conv as _conv
from ._utils import autocast_inputs, is_channels_last, memory_format
from .conv import conv2d_args, input_weight_grads, relu_mask
from .conv1x1 import _GEOMETRY as _GEOMETRY_1X1
from .inception import recompute_grads
from .pool import MaxPool2dBackwardFunction, max_pool2d_args

__all__ = [
    "Conv2dReLUMaxPool2dFunction",
    "Conv1x1ReLUConv2dReLUMaxPool2dFunction",
    "conv2d_relu_max_pool2d",
    "conv1x1_relu_conv2d_relu_max_pool2d",
    "layer_by_layer",
    "fused_layers",
]


@torch.library.triton_op("cnnkernels::conv2d_relu_max_pool2d", mutates_args=())
def conv2d_relu_max_pool2d_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    pool_kernel: list[int],
    pool_stride: list[int],
    pool_padding: list[int],
    pool_dilation: list[int],
    ceil_mode: bool,
    channels_last: bool,
    one_kernel: bool,
) -> tuple[Tensor, Tensor]:
    """(Y, A). ``one_kernel`` picks the fused kernel; False runs conv + ReLU into a temporary
    that the max-pool kernel reads (freed on return)."""
    geometry = (tuple(stride), tuple(padding), tuple(dilation))
    pool = (tuple(pool_kernel), tuple(pool_stride), tuple(pool_padding), tuple(pool_dilation))
    fmt = memory_format(channels_last)
    if one_kernel:
        return _k.conv2d_relu_max_pool2d_forward(x, weight, bias, *geometry, groups, *pool, ceil_mode, fmt)
    n, _, h, w = x.shape
    p, q, _, _ = _k.output_sizes(h, w, weight, *geometry, *pool, ceil_mode)
    z = torch.empty((n, weight.shape[0], p, q), device=x.device, dtype=x.dtype, memory_format=fmt)
    _kc.conv2d_forward(x, weight, bias, *geometry, groups, "relu", out=z)
    y, arg, _ = _kp.max_pool2d_forward(z, *pool, ceil_mode, False)
    return y, arg


def _setup(ctx, inputs, output):
    """Shared by ``Conv2dReLUMaxPool2dFunction`` and the op's registered autograd."""
    _remember(ctx, inputs, output)
    ctx.save_for_backward(inputs[0], inputs[1], *output)


def _remember(ctx, inputs, output):
    """The geometry the backward needs, on ``ctx`` (nothing saved)."""
    x, weight, bias, stride, padding, dilation, groups, pk, ps, pp, pd, ceil_mode, channels_last, _ = inputs
    ctx.geometry = (list(stride), list(padding), list(dilation), groups)
    ctx.pool = (list(pk), list(ps), list(pp), list(pd))
    p, q, _, _ = _k.output_sizes(x.shape[2], x.shape[3], weight, stride, padding, dilation, pk, ps, pp, pd, ceil_mode)
    ctx.conv_shape = [x.shape[0], weight.shape[0], p, q]
    ctx.has_bias = bias is not None
    ctx.channels_last = channels_last
    ctx.ceil_mode = ceil_mode


def _grads(ctx, grad_y):
    """(dX, dW, db) of the op's inputs, from what ``_setup`` saved."""
    x, weight, y, arg = ctx.saved_tensors
    return stage_grads(ctx, grad_y, x, weight, y, arg, ctx.needs_input_grad[:3])


def stage_grads(ctx, grad_y, x, weight, y, arg, needs):
    """(dX, dW, db) of conv + ReLU + max pool for the input ``x`` (saved, or recomputed by the
    caller), the geometry in ``ctx`` (``_setup``), those of (dX, dW, db) flagged in ``needs``."""
    need_x, need_w, need_b = needs
    need_b = need_b and ctx.has_bias
    pool = (arg, ctx.conv_shape, *ctx.pool, ctx.channels_last)
    dz = None
    if torch.is_grad_enabled():  # create_graph=True: differentiable all the way down
        g = relu_mask(grad_y, y)
        grad_b = g.sum((0, 2, 3)) if need_b else None
        if need_x or need_w:
            dz = MaxPool2dBackwardFunction.apply(g, *pool)
    else:
        if not (need_x or need_w or need_b):
            return None, None, None
        # The ReLU mask and db at the pooled resolution, in one pass; then the scatter to the argmax.
        g, grad_b = torch.ops.cnnkernels.conv2d_backward_prep(grad_y, y, "relu", need_b)
        grad_b = grad_b if need_b else None
        if need_x or need_w:
            dz = torch.ops.cnnkernels.max_pool2d_backward(g, *pool)
    return *input_weight_grads(dz, x, weight, ctx.geometry, ctx.channels_last, need_x, need_w), grad_b


def _forward(x, weight, bias, stride, padding, dilation, groups, pk, ps, pp, pd, ceil_mode):
    """(the op's arguments, Y, A): the op with the forward scheme ``one_kernel_wins`` picks."""
    channels_last = is_channels_last(x) or is_channels_last(weight)
    n, _, h, w = x.shape
    p, q, pp_, qq = _k.output_sizes(h, w, weight, stride, padding, dilation, pk, ps, pp, pd, ceil_mode)
    one = _k.one_kernel_wins(n * p * q, n * pp_ * qq, weight.shape[1], *weight.shape[2:], tuple(pk), x.element_size())
    args = (x, weight, bias, stride, padding, dilation, groups, pk, ps, pp, pd, ceil_mode, channels_last, one)
    y, arg = torch.ops.cnnkernels.conv2d_relu_max_pool2d(*args)
    return args, y, arg


class Conv2dReLUMaxPool2dFunction(torch.autograd.Function):
    """Y = max_pool2d(relu(conv2d(X, W) + b)) on the ``cnnkernels`` ops; arguments normalised by
    ``conv2d_relu_max_pool2d_args``. Saves X, W, Y and the int8 argmax, nothing at the conv's
    resolution. Gradients of any order (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, pk, ps, pp, pd, ceil_mode):
        args, y, arg = _forward(x, weight, bias, stride, padding, dilation, groups, pk, ps, pp, pd, ceil_mode)
        _setup(ctx, args, (y, arg))
        ctx.mark_non_differentiable(arg)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return *_grads(ctx, grad_y), *([None] * 9)


def _op_backward(ctx, grad_y, grad_arg):
    return *_grads(ctx, grad_y), *([None] * 11)


# The op is differentiable on its own too (to any order), for callers of torch.ops.cnnkernels.
torch.library.register_autograd("cnnkernels::conv2d_relu_max_pool2d", _op_backward, setup_context=_setup)


def conv2d_relu_max_pool2d_args(input, weight, bias, stride, padding, dilation, groups, *pool):
    """Validate both layers' arguments as ``torch.nn.functional.conv2d`` and ``max_pool2d`` would
    (the pool's against the conv's output shape; ``pool``: kernel_size, stride, padding,
    dilation, ceil_mode); return the 4-D input, whether it was unbatched, and the normalised conv
    and pool geometry."""
    x, unbatched, stride, pads, dilation, groups = conv2d_args(input, weight, bias, stride, padding, dilation, groups)
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    p = _kc.conv_output_size(h, r, stride[0], pads[0] + pads[1], dilation[0])
    q = _kc.conv_output_size(w, s, stride[1], pads[2] + pads[3], dilation[1])
    conv_out = torch.empty((max(n, 1), k, p, q), device="meta")  # shapes only: the pool's checks
    _, _, pk, ps, pp, pd = max_pool2d_args(conv_out, *pool)
    return x, unbatched, stride, pads, dilation, groups, pk, ps, pp, pd


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
    geometry = (stride, padding, dilation, groups, kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode)
    key, plan = _fast.lookup(("conv_pool", *geometry, type(ceil_mode)), input, weight, bias)
    if plan is not None:
        return plan(input, weight, bias)
    input, weight, bias = autocast_inputs(input, weight, bias)
    x, unbatched, stride, pads, dilation, groups, pk, ps, pp, pd = conv2d_relu_max_pool2d_args(
        input, weight, bias, *geometry
    )

    def plan(record, y):
        arg = _fast.written(record, y, _kp.argmax_dtype(tuple(pk)))
        if not key[-1]:
            return _fast.Plan.of(unbatched, _fast.LaunchPlan.build(record, (x, weight, bias), (y,)))
        launches = _fast.LaunchPlan.build(record, (x, weight, bias), (y, arg))
        channels_last = is_channels_last(x) or is_channels_last(weight)
        op_args = (stride, pads, dilation, groups, pk, ps, pp, pd, ceil_mode, channels_last, len(record) == 1)
        return _fast.Plan.of(unbatched, launches, PlannedConvPoolFunction, op_args=op_args)

    y = _fast.planned(
        key,
        lambda: Conv2dReLUMaxPool2dFunction.apply(
            x, weight, bias, stride, pads, dilation, groups, pk, ps, pp, pd, ceil_mode
        ),
        plan,
    )
    return y.squeeze(0) if unbatched else y


class PlannedConvPoolFunction(torch.autograd.Function):
    """``Conv2dReLUMaxPool2dFunction`` replayed from a ``_fast.Plan``."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan):
        y, arg = plan.launches.run((x, weight, bias))
        _setup(ctx, (x, weight, bias, *plan.op_args), (y, arg))
        ctx.mark_non_differentiable(arg)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return *_grads(ctx, grad_y), None


class PlannedChainFunction(torch.autograd.Function):
    """``Conv1x1ReLUConv2dReLUMaxPool2dFunction`` replayed from a ``_fast.Plan``."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, plan):
        y, arg, z1 = plan.launches.run((x, w1, b1, w2, b2))
        channels_last1, *op_args = plan.op_args
        ctx.channels_last1 = channels_last1
        _remember(ctx, (z1, w2, b2, *op_args), (y, arg))
        ctx.has_bias1 = b1 is not None
        ctx.save_for_backward(x, w1, b1, w2, b2, y, arg)
        ctx.mark_non_differentiable(arg)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return *Conv1x1ReLUConv2dReLUMaxPool2dFunction.backward(ctx, grad_y)[:5], None


class Conv1x1ReLUConv2dReLUMaxPool2dFunction(torch.autograd.Function):
    """Z1 = relu(conv1x1(X, W1) + b1), then Y = max_pool2d(relu(conv2d(Z1, W2) + b2)) as above.
    Z1 is not saved: the backward recomputes it with one 1x1 GEMM (2*C1*K1 FLOPs a pixel, K1 =
    Z1's channels), so the saved tensors are X, the weights, Y and the argmax. NiN's blocks end
    with two 1x1 conv + ReLU layers before a 3x3/2 pool; without this their middle activation
    would be saved in full. Backward: dZ1 from the second stage (``stage_grads``), masked by
    Z1 > 0 with db1 summed in one pass, then the 1x1 conv's dX and dW. With ``create_graph=True``
    the chain is re-run from differentiable ops and differentiated with the graph kept."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, stride, padding, dilation, groups, pk, ps, pp, pd, ceil_mode):
        ctx.channels_last1 = is_channels_last(x) or is_channels_last(w1)
        z1 = torch.ops.cnnkernels.conv1x1(x, w1, b1, "relu", ctx.channels_last1)
        args, y, arg = _forward(z1, w2, b2, stride, padding, dilation, groups, pk, ps, pp, pd, ceil_mode)
        _remember(ctx, args, (y, arg))
        ctx.has_bias1 = b1 is not None
        ctx.save_for_backward(x, w1, b1, w2, b2, y, arg)
        ctx.mark_non_differentiable(arg)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w1, b1, w2, b2, y, arg = ctx.saved_tensors
        need = ctx.needs_input_grad
        rest = [None] * 9
        if torch.is_grad_enabled():  # create_graph=True
            stride, padding, dilation, groups = ctx.geometry

            def chain(x, w1, b1, w2, b2):
                z1 = _conv.conv2d(x, w1, b1, activation="relu")
                pool = (*ctx.pool, ctx.ceil_mode)
                return (Conv2dReLUMaxPool2dFunction.apply(z1, w2, b2, stride, padding, dilation, groups, *pool),)

            return *recompute_grads(chain, (x, w1, b1, w2, b2), (grad_y,), need[:5]), *rest
        with torch.no_grad():
            z1 = torch.ops.cnnkernels.conv1x1(x, w1, b1, "relu", ctx.channels_last1)
        need_stage1 = need[0] or need[1] or (need[2] and ctx.has_bias1)
        dz1, dw2, db2 = stage_grads(ctx, grad_y, z1, w2, y, arg, (need_stage1, need[3], need[4]))
        dx = dw1 = db1 = None
        if need_stage1:
            g1, db1 = torch.ops.cnnkernels.conv2d_backward_prep(dz1, z1, "relu", need[2] and ctx.has_bias1)
            dx, dw1 = input_weight_grads(g1, x, w1, _GEOMETRY_1X1, ctx.channels_last1, need[0], need[1])
            if not (need[2] and ctx.has_bias1):
                db1 = None
        return dx, dw1, db1, dw2, db2, *rest


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
    geometry = (stride, padding, dilation, groups, kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode)
    key, plan = _fast.lookup(("chain", *geometry, type(ceil_mode)), input, weight1, bias1, weight, bias)
    if plan is not None:
        return plan(input, weight1, bias1, weight, bias)
    input, weight1, bias1, weight, bias = autocast_inputs(input, weight1, bias1, weight, bias)
    x, unbatched, *_ = conv2d_args(input, weight1, bias1, 1, 0, 1, 1)
    if tuple(weight1.shape[2:]) != (1, 1):
        raise ValueError(f"weight1 must be a 1x1 convolution's weight, got shape {tuple(weight1.shape)}")
    z1 = torch.empty((x.shape[0], weight1.shape[0], *x.shape[2:]), device="meta", dtype=x.dtype)
    meta_bias = None if bias is None else bias.to("meta")
    _, _, stride, pads, dilation, groups, pk, ps, pp, pd = conv2d_relu_max_pool2d_args(
        z1, weight.to("meta"), meta_bias, *geometry
    )
    if weight.device != x.device or weight.dtype != x.dtype:
        raise TypeError(f"weight ({weight.dtype}, {weight.device}) must match input ({x.dtype}, {x.device})")
    if bias is not None and (bias.device != x.device or bias.dtype != x.dtype):
        raise TypeError(f"bias ({bias.dtype}, {bias.device}) must match input ({x.dtype}, {x.device})")
    inputs = (x, weight1, bias1, weight, bias)

    def plan(record, y):
        arg = _fast.written(record, y, _kp.argmax_dtype(tuple(pk)))
        z1_shape = (x.shape[0], weight1.shape[0], *x.shape[2:])
        z1 = {id(a): a for a in record[0][2] if isinstance(a, Tensor) and a is not x and a.shape == z1_shape}
        if len(z1) != 1:
            raise _fast.Unplannable("the first launch does not write the 1x1 stage's output alone")
        (z1,) = z1.values()
        if not key[-1]:
            return _fast.Plan.of(unbatched, _fast.LaunchPlan.build(record, inputs, (y,)))
        launches = _fast.LaunchPlan.build(record, inputs, (y, arg, z1))
        channels_last1 = is_channels_last(x) or is_channels_last(weight1)
        channels_last = is_channels_last(z1) or is_channels_last(weight)
        op_args = (channels_last1, stride, pads, dilation, groups, pk, ps, pp, pd, ceil_mode, channels_last, None)
        return _fast.Plan.of(unbatched, launches, PlannedChainFunction, op_args=op_args)

    pool = (pk, ps, pp, pd, ceil_mode)
    y = _fast.planned(
        key, lambda: Conv1x1ReLUConv2dReLUMaxPool2dFunction.apply(*inputs, stride, pads, dilation, groups, *pool), plan
    )
    return y.squeeze(0) if unbatched else y


_LAYER_BY_LAYER = contextvars.ContextVar("cnnkernels_layer_by_layer", default=False)


@contextlib.contextmanager
def layer_by_layer():
    """Within this context, modules fused across layer boundaries compute their own layer only
    and their placeholders compute theirs (a ``Conv2dReLUMaxPool2d`` returns the conv + ReLU
    output and the ``FusedMaxPool2d`` after it pools), so walking a model one layer at a time
    (``layer_summary``) sees every layer's own output, as in the ``torch.nn`` model. The results
    are the same either way; only what is saved for backward and the passes over memory differ."""
    token = _LAYER_BY_LAYER.set(True)
    try:
        yield
    finally:
        _LAYER_BY_LAYER.reset(token)


def fused_layers() -> bool:
    """False inside ``layer_by_layer()``."""
    return not _LAYER_BY_LAYER.get()
