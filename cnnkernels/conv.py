"""Convolution (+ bias + ReLU) as ``torch.library`` ops and an autograd function.

Ops (namespace ``cnnkernels``): ``conv2d``, ``conv2d_backward_input``,
``conv2d_backward_weight``; each is a ``triton_op``, so ``torch.compile`` traces them.
``Conv2dFunction`` calls them in forward and backward; with ``create_graph=True`` the backward
runs through ``Conv2dBackwardInputFunction`` and ``Conv2dBackwardWeightFunction``, themselves
differentiable, so second- and higher-order gradients are exact.

Backward maths, for Y = act(conv(X, W) + b) and dY' = dY * (Y > 0) under ReLU (else dY):
    dX = conv_transpose(dY', W)       gathered per input pixel, strides by divisibility masks
    dW[k,c,r,s] = sum_{n,p,q} dY'[n,k,p,q] X[n,c,p*sh-pt+r*dh,q*sw-pl+s*dw]
    db[k] = sum_{n,p,q} dY'[n,k,p,q]
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnnkernels.kernels import conv as _k

from . import _fast, conv1x1
from ._utils import as_int, autocast_inputs, check_same, check_tensor, is_channels_last, memory_format, pair


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
    geometry = map(tuple, (input_shape, stride, padding, dilation))
    return _k.conv2d_backward_input(grad_out, out, weight, *geometry, groups, activation, fmt)


@torch.library.triton_op("cnnkernels::conv2d_backward_prep", mutates_args=())
def conv2d_backward_prep_op(grad_out: Tensor, out: Tensor, activation: str, need_bias: bool) -> tuple[Tensor, Tensor]:
    """(dY', db): dY masked by ``out`` > 0 under ReLU (empty otherwise: the GEMMs then read dY)
    and its sum over the pixels (empty unless ``need_bias``), in one elementwise pass shared by
    the dX and dW GEMMs, whose loops then hold the MMA alone."""
    masked, db = _k.conv2d_backward_prep(grad_out, out, activation, need_bias)
    if masked is None:
        masked = grad_out.new_empty((0,))
    if db is None:
        db = grad_out.new_empty((0,))
    return masked, db


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


def relu_mask(grad_y: Tensor, y: Tensor | None) -> Tensor:
    """dY' = dY where Y > 0 else 0, as torch's ``threshold_backward`` (a NaN in Y passes dY);
    differentiable in dY, the mask a constant. ``y`` None means no activation."""
    return grad_y if y is None else torch.where(y <= 0, torch.zeros_like(grad_y), grad_y)


def _setup_conv(ctx, inputs, output):
    """Shared by ``Conv2dFunction`` and the ``conv2d`` op's registered autograd."""
    x, weight, bias, stride, padding, dilation, groups, activation, channels_last = inputs
    ctx.geometry = (list(stride), list(padding), list(dilation), groups)
    ctx.activation = activation
    ctx.has_bias = bias is not None
    ctx.channels_last = channels_last
    # Under ReLU the output itself is saved: its sign is the backward mask.
    ctx.save_for_backward(x, weight, output if activation == "relu" else None)


def _conv_grads(ctx, grad_y):
    """(dX, dW, db) of ``_setup_conv``'s convolution. Plain backward: the fused kernels (ReLU
    mask applied as dY is loaded). With ``create_graph=True``: the differentiable family below."""
    x, weight, y = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.has_bias
    prepared = False
    if torch.is_grad_enabled():  # create_graph=True: differentiable all the way down
        g = relu_mask(grad_y, y)
        grad_b = g.sum((0, 2, 3)) if need_b else None
    else:
        g, grad_b = prepared_grad(grad_y, y, ctx.activation, need_b)
        prepared = ctx.activation == "relu"  # g is the prep pass's output
    return *input_weight_grads(g, x, weight, ctx.geometry, ctx.channels_last, need_x, need_w, prepared), grad_b


def input_weight_grads(g, x, weight, geometry, channels_last, need_x, need_w, prepared=False):
    """(dX, dW) of a convolution of ``x`` by ``weight`` for the masked output gradient ``g``
    (those flagged): the differentiable functions under grad mode (``create_graph=True``), else
    the kernels' ops (``prepared``: ``g`` is ``conv2d_backward_prep``'s output, its channel
    padding zero, which the dX kernel may read)."""
    grad_x = grad_w = None
    if torch.is_grad_enabled():
        if need_x:
            grad_x = Conv2dBackwardInputFunction.apply(g, weight, list(x.shape), *geometry, channels_last)
        if need_w:
            grad_w = Conv2dBackwardWeightFunction.apply(x, g, weight, *geometry)
        return grad_x, grad_w
    stride, padding, _, groups = geometry
    if conv1x1.eligible(weight, stride, padding, groups):
        # The 1x1 GEMM kernels: a plain loop over pixels (the generic row-tiled dW took NiN's
        # fused 27x27 and 13x13 1x1 layers at 1.35-1.42x the anchor's instructions per HGMMA,
        # its steps whole rows of 27 or 13 pixels; static, sm_90).
        if need_x:
            grad_x = torch.ops.cnnkernels.conv1x1_backward_input(g, g, weight, list(x.shape), "none", channels_last)
        if need_w:
            grad_w, _ = torch.ops.cnnkernels.conv1x1_backward_weight(x, g, g, weight, "none", False)
        return grad_x, grad_w
    if need_x:
        grad_x = torch.ops.cnnkernels.conv2d_backward_input(
            g, g, weight, list(x.shape), *geometry, "prepared" if prepared else "none", channels_last
        )
    if need_w:
        grad_w, _ = torch.ops.cnnkernels.conv2d_backward_weight(x, g, g, weight, *geometry, "none", False)
    return grad_x, grad_w


def prepared_grad(grad_y: Tensor, y: Tensor | None, activation: str, need_bias: bool):
    """(dY', db): dY masked once under ReLU and db summed in the same pass
    (``cnnkernels::conv2d_backward_prep``), for both GEMMs of the backward."""
    if activation != "relu" and not need_bias:
        return grad_y, None
    masked, db = torch.ops.cnnkernels.conv2d_backward_prep(grad_y, grad_y if y is None else y, activation, need_bias)
    return (masked if activation == "relu" else grad_y), (db if need_bias else None)


class Conv2dFunction(torch.autograd.Function):
    """Y = act(conv2d(X, W) + b) on the ``cnnkernels`` ops, ``act`` "none" or "relu" (fused into
    the epilogue; the backward masks dY with Y > 0 of the saved output in one pass shared by its
    two GEMMs, ``cnnkernels::conv2d_backward_prep``).
    Arguments are normalised by ``conv2d_args`` (padding as (top, bottom, left, right)).

    With ``create_graph=True`` the backward is built from differentiable ops of the same family
    (``Conv2dBackwardInputFunction``, ``Conv2dBackwardWeightFunction``, this one), so gradients
    of any order are exact; the ReLU mask is a constant of the second pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, activation):
        # NHWC output when the input or the weight is NHWC, as cuDNN decides.
        channels_last = is_channels_last(x) or is_channels_last(weight)
        args = (x, weight, bias, stride, padding, dilation, groups, activation, channels_last)
        y = torch.ops.cnnkernels.conv2d(*args)
        _setup_conv(ctx, args, y)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return *_conv_grads(ctx, grad_y), None, None, None, None, None


class Conv2dBackwardInputFunction(torch.autograd.Function):
    """dX = conv_transpose(dY', W) for an input of ``input_shape``: the dX kernel without
    activation. Bilinear in (dY', W); its own backward is a convolution and a dW:
        d(dY') = conv2d(g, W),   dW = conv2d_backward_weight(X=g, dY=dY')."""

    @staticmethod
    def forward(ctx, grad_y, weight, input_shape, stride, padding, dilation, groups, channels_last):
        ctx.geometry = (list(stride), list(padding), list(dilation), groups)
        ctx.save_for_backward(grad_y, weight)
        return torch.ops.cnnkernels.conv2d_backward_input(
            grad_y, grad_y, weight, input_shape, stride, padding, dilation, groups, "none", channels_last
        )

    @staticmethod
    def backward(ctx, g):
        grad_y, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        d_dy, d_w = backward_input_grads(need[0], need[1], g, grad_y, None, weight, ctx.geometry)
        return d_dy, d_w, None, None, None, None, None, None


class Conv2dBackwardWeightFunction(torch.autograd.Function):
    """dW[k,c,r,s] = sum_{n,p,q} dY'[n,k,p,q] X[n,c,p*sh-pt+r*dh,q*sw-pl+s*dw], shaped and strided
    like ``weight_like`` (which takes no gradient). Bilinear in (X, dY'); its backward:
        dX = conv_transpose(dY', g),   d(dY') = conv2d(X, g)."""

    @staticmethod
    def forward(ctx, x, grad_y, weight_like, stride, padding, dilation, groups):
        ctx.geometry = (list(stride), list(padding), list(dilation), groups)
        ctx.channels_last = is_channels_last(x)
        ctx.save_for_backward(x, grad_y)
        dw, _ = torch.ops.cnnkernels.conv2d_backward_weight(
            x, grad_y, grad_y, weight_like, stride, padding, dilation, groups, "none", False
        )
        return dw

    @staticmethod
    def backward(ctx, g):
        x, grad_y = ctx.saved_tensors
        need = ctx.needs_input_grad
        d_x, d_dy = backward_weight_grads(
            need[0], need[1], g, None, x, grad_y, None, ctx.geometry, ctx.channels_last, False
        )
        return d_x, d_dy, None, None, None, None, None


def backward_input_grads(need_dy, need_w, g, grad_out, out, weight, geometry):
    """Gradients of dX = conv_transpose(mask(dY), W) with respect to (dY, W), given g = d(dX);
    the mask (``out`` > 0 under ReLU, else none) is a constant."""
    d_dy = d_w = None
    if need_dy:
        d_dy = relu_mask(Conv2dFunction.apply(g, weight, None, *geometry, "none"), out)
    if need_w:
        d_w = Conv2dBackwardWeightFunction.apply(g, relu_mask(grad_out, out), weight, *geometry)
    return d_dy, d_w


def backward_weight_grads(need_x, need_dy, gdw, gdb, x, grad_out, out, geometry, channels_last, need_bias):
    """Gradients of (dW, db) = (corr(X, mask(dY)), sum mask(dY)) with respect to (X, dY), given
    (gdw, gdb)."""
    d_x = d_dy = None
    if need_x:
        d_x = Conv2dBackwardInputFunction.apply(relu_mask(grad_out, out), gdw, list(x.shape), *geometry, channels_last)
    if need_dy:
        t = Conv2dFunction.apply(x, gdw, None, *geometry, "none")
        if need_bias and gdb is not None and gdb.numel():
            t = t + gdb.view(1, -1, 1, 1)
        d_dy = relu_mask(t, out)
    return d_x, d_dy


def _conv_op_backward(ctx, grad_y):
    return *_conv_grads(ctx, grad_y), None, None, None, None, None, None


def _setup_bwd_input(ctx, inputs, output):
    grad_out, out, weight, _, stride, padding, dilation, groups, activation, _ = inputs
    ctx.geometry = (list(stride), list(padding), list(dilation), groups)
    ctx.save_for_backward(grad_out, out if activation == "relu" else None, weight)


def _bwd_input_op_backward(ctx, g):
    grad_out, out, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    d_dy, d_w = backward_input_grads(need[0], need[2], g, grad_out, out, weight, ctx.geometry)
    return d_dy, None, d_w, None, None, None, None, None, None, None


def _setup_bwd_weight(ctx, inputs, output):
    x, grad_out, out, weight, stride, padding, dilation, groups, activation, need_bias = inputs
    ctx.geometry = (list(stride), list(padding), list(dilation), groups)
    ctx.need_bias = need_bias
    ctx.channels_last = is_channels_last(x)
    ctx.save_for_backward(x, grad_out, out if activation == "relu" else None)


def _bwd_weight_op_backward(ctx, gdw, gdb):
    x, grad_out, out = ctx.saved_tensors
    need = ctx.needs_input_grad
    d_x, d_dy = backward_weight_grads(
        need[0], need[1], gdw, gdb, x, grad_out, out, ctx.geometry, ctx.channels_last, ctx.need_bias
    )
    return d_x, d_dy, None, None, None, None, None, None, None, None


def _setup_prep(ctx, inputs, output):
    grad_out, out, activation, need_bias = inputs
    ctx.relu, ctx.need_bias = activation == "relu", need_bias
    ctx.save_for_backward(out if activation == "relu" else None)


def _prep_op_backward(ctx, g_masked, g_db):
    (out,) = ctx.saved_tensors
    total = None
    if ctx.relu and g_masked is not None and g_masked.numel():
        total = g_masked
    if ctx.need_bias and g_db is not None and g_db.numel():
        spread = g_db.view(1, -1, 1, 1)
        total = spread if total is None else total + spread
    if total is None:
        return None, None, None, None
    if out is not None:
        total = relu_mask(total.expand_as(out), out)
    return total, None, None, None


# The ops are differentiable on their own too (to any order), for callers of torch.ops.cnnkernels.
torch.library.register_autograd("cnnkernels::conv2d", _conv_op_backward, setup_context=_setup_conv)
torch.library.register_autograd(
    "cnnkernels::conv2d_backward_input", _bwd_input_op_backward, setup_context=_setup_bwd_input
)
torch.library.register_autograd(
    "cnnkernels::conv2d_backward_weight", _bwd_weight_op_backward, setup_context=_setup_bwd_weight
)
torch.library.register_autograd("cnnkernels::conv2d_backward_prep", _prep_op_backward, setup_context=_setup_prep)


def conv2d_args(input, weight, bias, stride, padding, dilation, groups):
    """Validate ``torch.nn.functional.conv2d`` arguments; return the 4-D input view, whether
    the input was unbatched, and normalised (stride, padding(top, bottom, left, right), dilation,
    groups)."""
    check_tensor(input, "input", (3, 4))
    check_tensor(weight, "weight", (4,))
    check_same(input, weight, "input", "weight")
    if bias is not None:
        check_tensor(bias, "bias", (1,))
        check_same(input, bias, "input", "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} elements but weight has {weight.shape[0]} output channels")
    groups = as_int(groups, "groups")
    if groups < 1:
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
    return x, unbatched, list(stride), list(pads), list(dilation), groups


class PlannedConvFunction(torch.autograd.Function):
    """``Conv2dFunction`` / ``Conv1x1Function`` replayed from a ``_fast.Plan``: the same kernel,
    saved tensors and backward, without the checks, the op dispatch and the autotuner."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan):
        y = plan.launches.run((x, weight, bias))
        plan.setup(ctx, (x, weight, bias, *plan.op_args), y)
        ctx.plan = plan
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return *ctx.plan.grads(ctx, grad_y), None


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation: str = "none"):
    """Shared body of ``functional.conv2d`` and ``functional.conv2d_relu``. A call whose key (see
    ``cnnkernels._fast``) was seen before replays its plan; the first call takes the full path and
    records it."""
    key, plan = _fast.lookup((activation, stride, padding, dilation, groups), input, weight, bias)
    if plan is not None:
        return plan(input, weight, bias)
    # Under autocast, cast first (as nn.Conv2d does), so fp32 weights meet a bf16 input.
    input, weight, bias = autocast_inputs(input, weight, bias)
    x, unbatched, stride, pads, dilation, groups = conv2d_args(input, weight, bias, stride, padding, dilation, groups)
    one = conv1x1.eligible(weight, stride, pads, groups)

    def call():
        if one:
            return conv1x1.Conv1x1Function.apply(x, weight, bias, activation)
        return Conv2dFunction.apply(x, weight, bias, stride, pads, dilation, groups, activation)

    def plan(record, y):
        launches = _fast.LaunchPlan.build(record, (x, weight, bias), (y,))
        if not key[-1]:
            return _fast.Plan.of(unbatched, launches)
        channels_last = is_channels_last(x) or is_channels_last(weight)
        if one:
            state = dict(setup=conv1x1._setup, grads=conv1x1._grads, op_args=(activation, channels_last))
        else:
            op_args = (stride, pads, dilation, groups, activation, channels_last)
            state = dict(setup=_setup_conv, grads=_conv_grads, op_args=op_args)
        return _fast.Plan.of(unbatched, launches, PlannedConvFunction, **state)

    y = _fast.planned(key, call, plan)
    return y.squeeze(0) if unbatched else y
