"""The seed's Inception block with zero-copy concatenation.

The block's NHWC output is allocated once and every branch's last convolution writes its own
channel slice of it, so the concatenation costs no copy and no extra memory pass:

    out[:, 0:c1]            <- relu(b1_1(x))                  \\  one GEMM over the three
    scratch[:, 0:c2a]       <- relu(b2_1(x))                   } concatenated 1x1 weights,
    scratch[:, c2a:]        <- relu(b3_1(x))                  /  x read once
    out[:, c1:c1+c2b]       <- relu(b2_2(scratch[:, :c2a]))     3x3, pad 1
    out[:, ...:...+c3b]     <- relu(b3_2(scratch[:, c2a:]))     5x5, pad 2
    out[:, -c4:]            <- relu(b4_2(maxpool3x3(x)))        1x1, x pooled while loaded

Backward hands each branch a view of dOut; the 3x3 and 5x5 convs write their dX into one
d_scratch buffer, joined with dOut[:, :c1] for the 1x1 convs. With ``pooled`` None the backward
recomputes the pool from x. Parameters stay per branch (the seed's ``state_dict`` keys).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnnkernels.kernels import conv as _kc
from cnnkernels.kernels import conv1x1 as _k1
from cnnkernels.kernels import convpool as _kcp
from cnnkernels.kernels._common import empty_padded_channels

from ._utils import is_channels_last

_POOL3 = ([3, 3], [1, 1], [1, 1], [1, 1], False)  # kernel, stride, padding, dilation, ceil_mode
_PAD3 = (1, 1, 1, 1)
_PAD5 = (2, 2, 2, 2)
_ONE = (1, 1)


@torch.library.triton_op("cnnkernels::inception", mutates_args=())
def inception_op(
    x: Tensor,
    pooled: Tensor | None,
    w1: Tensor,
    b1: Tensor,
    w21: Tensor,
    b21: Tensor,
    w22: Tensor,
    b22: Tensor,
    w31: Tensor,
    b31: Tensor,
    w32: Tensor,
    b32: Tensor,
    w4: Tensor,
    b4: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (out, scratch, w_cat): the output, the reduce convs' outputs, the stacked 1x1
    weights. ``pooled`` None: the pool branch pools x while its GEMM loads it."""
    n, _, h, w = x.shape
    c1, c2a, c2b, c3a, c3b, c4 = w1.shape[0], w21.shape[0], w22.shape[0], w31.shape[0], w32.shape[0], w4.shape[0]
    kw = dict(device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    out = torch.empty((n, c1 + c2b + c3b + c4, h, w), **kw)
    # Pixel stride rounded up to 16 channels (4b and 4c have 136 and 152): the 3x3 and 5x5 convs
    # reading its slices keep 16-byte loads (static, sm_90).
    scratch = empty_padded_channels(n, c2a + c3a, h, w, x.device, x.dtype)
    # The three input-side 1x1 weights as one [c1+c2a+c3a, C] matrix (a few KB per call).
    w_cat = torch.cat((w1, w21, w31))
    b_cat = torch.cat((b1, b21, b31))
    _k1.conv1x1_forward(x, w_cat, b_cat, "relu", out[:, :c1], scratch)
    o2, o3 = c1 + c2b, c1 + c2b + c3b
    _kc.conv2d_forward(scratch[:, :c2a], w22, b22, _ONE, _PAD3, _ONE, 1, "relu", out=out[:, c1:o2])
    _kc.conv2d_forward(scratch[:, c2a:], w32, b32, _ONE, _PAD5, _ONE, 1, "relu", out=out[:, o2:o3])
    if pooled is None:
        _kcp.max_pool_conv1x1_forward(x, w4, b4, (3, 3), (1, 1), "relu", out[:, o3:])
    else:
        _k1.conv1x1_forward(pooled, w4, b4, "relu", out[:, o3:])
    return out, scratch, w_cat


@torch.library.triton_op("cnnkernels::inception_backward", mutates_args=())
def inception_backward_op(
    grad_out: Tensor,
    x: Tensor,
    pooled: Tensor,
    out: Tensor,
    scratch: Tensor,
    w_cat: Tensor,
    w22: Tensor,
    w32: Tensor,
    w4: Tensor,
    c1: int,
) -> list[Tensor]:
    """Returns [dx, d_pooled, dw_cat, db_cat, dw22, db22, dw32, db32, dw4, db4]; dw_cat/db_cat
    stack the grads of b1_1, b2_1, b3_1 (split into views by the caller: an op's outputs may
    not alias one another). ``w_cat`` is the forward's stacked 1x1 weights, b1_1's first."""
    c2a, c2b, c3b = w22.shape[1], w22.shape[0], w32.shape[0]
    o2, o3 = c1 + c2b, c1 + c2b + c3b
    g1, g2, g3, g4 = grad_out[:, :c1], grad_out[:, c1:o2], grad_out[:, o2:o3], grad_out[:, o3:]
    y1, y2, y3, y4 = out[:, :c1], out[:, c1:o2], out[:, o2:o3], out[:, o3:]
    s2, s3 = scratch[:, :c2a], scratch[:, c2a:]
    kw = dict(device=x.device, dtype=x.dtype, memory_format=torch.channels_last)

    # Each conv's dY is masked (ReLU) and its db summed once, for both of its GEMMs.
    # Pooling branch: its 1x1 conv.
    g4, db4 = _kc.conv2d_backward_prep(g4, y4, "relu", True)
    d_pooled = _k1.conv1x1_backward_input(g4, None, w4, torch.empty(pooled.shape, **kw), "none")
    dw4, _ = _k1.conv1x1_backward_weight(pooled, g4, None, w4, "none", False)
    # The 3x3 and 5x5 convs: dX straight into the slices of one d_scratch buffer.
    g2, db22 = _kc.conv2d_backward_prep(g2, y2, "relu", True)
    g3, db32 = _kc.conv2d_backward_prep(g3, y3, "relu", True)
    d_scratch = empty_padded_channels(*scratch.shape, x.device, x.dtype)
    _kc.conv2d_backward_input(g2, None, w22, tuple(s2.shape), _ONE, _PAD3, _ONE, 1, "prepared", dx=d_scratch[:, :c2a])
    _kc.conv2d_backward_input(g3, None, w32, tuple(s3.shape), _ONE, _PAD5, _ONE, 1, "prepared", dx=d_scratch[:, c2a:])
    dw22, _ = _kc.conv2d_backward_weight(s2, g2, None, w22, _ONE, _PAD3, _ONE, 1, "none", False)
    dw32, _ = _kc.conv2d_backward_weight(s3, g3, None, w32, _ONE, _PAD5, _ONE, 1, "none", False)
    # The three input-side 1x1 convs: one dY' from two places (dOut's first slice and d_scratch),
    # then one GEMM each for dX and dW.
    g_cat, db_cat = _kc.conv2d_backward_prep(g1, y1, "relu", True, d_scratch, scratch)
    dx = torch.empty(x.shape, **kw)
    _k1.conv1x1_backward_input(g_cat, None, w_cat, dx, "none")
    dw_cat, _ = _k1.conv1x1_backward_weight(x, g_cat, None, w_cat, "none", False)
    return [dx, d_pooled, dw_cat, db_cat, dw22, db22, dw32, db32, dw4, db4]


class InceptionFunction(torch.autograd.Function):
    """Inputs: x, the max-pooled x (or None), then (weight, bias) of b1_1, b2_1, b2_2, b3_1, b3_2,
    b4_2. With ``create_graph=True`` the backward re-runs the block as differentiable ops."""

    @staticmethod
    def forward(ctx, x, pooled, *params):
        out, scratch, w_cat = torch.ops.cnnkernels.inception(x, pooled, *params)
        InceptionFunction.setup(ctx, x, pooled, params, out, scratch, w_cat)
        return out

    @staticmethod
    def setup(ctx, x, pooled, params, out, scratch, w_cat):
        """What the backward reads; shared with the fast path's replay (``cnnkernels.nn``)."""
        w1, w21, w31 = params[0], params[2], params[6]
        ctx.sizes = (w1.shape[0], w21.shape[0], w31.shape[0])
        ctx.n_params = len(params)
        ctx.save_for_backward(x, pooled, out, scratch, w_cat, *params)

    @staticmethod
    def backward(ctx, grad_out):
        x, pooled, out, scratch, w_cat, *params = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            return recompute_grads(_block, (x, pooled, *params), (grad_out,), ctx.needs_input_grad)
        w22, w32, w4 = params[4], params[8], params[10]
        on_load = pooled is None  # pooled while loaded: recompute it (and its argmax) from x
        if on_load:
            pooled, arg, _ = torch.ops.cnnkernels.max_pool2d(x, *_POOL3, False)
        dx, d_pooled, dw_cat, db_cat, dw22, db22, dw32, db32, dw4, db4 = torch.ops.cnnkernels.inception_backward(
            grad_out, x, pooled, out, scratch, w_cat, w22, w32, w4, ctx.sizes[0]
        )
        if on_load:  # the pool's backward joins the block's dX; the pooled input takes no gradient
            dx = dx + torch.ops.cnnkernels.max_pool2d_backward(
                d_pooled, arg, list(x.shape), *_POOL3[:4], is_channels_last(x)
            )
            d_pooled = None
        dw1, dw21, dw31 = dw_cat.split(ctx.sizes)
        db1, db21, db31 = db_cat.split(ctx.sizes)
        return dx, d_pooled, dw1, db1, dw21, db21, dw22, db22, dw31, db31, dw32, db32, dw4, db4


def recompute_grads(fn, inputs, grad_outputs, needs, create_graph=True):
    """Gradients of ``fn(*inputs)`` (a tuple of tensors) for the inputs flagged in ``needs`` (None
    for the rest), by re-running ``fn`` under autograd. Inputs in an outer graph enter as aliases,
    so each gradient counts only its own uses and stays connected to that graph."""
    with torch.enable_grad():
        leaves = [
            None if t is None else t.view_as(t) if t.requires_grad else t.detach().requires_grad_(n)
            for t, n in zip(inputs, needs)
        ]
        outs = fn(*leaves)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None and o.requires_grad]
        wanted = [t for t, n in zip(leaves, needs) if n]
        if not pairs or not wanted:
            return tuple(None for _ in needs)
        grads = iter(
            torch.autograd.grad(
                [o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=create_graph, allow_unused=True
            )
        )
    return tuple(next(grads) if n else None for n in needs)


def _block(x, pooled, w1, b1, w21, b21, w22, b22, w31, b31, w32, b32, w4, b4):
    """The block as separate differentiable ops: (out, scratch, w_cat) as ``inception_op``."""
    from .cat import cat
    from .conv import conv2d

    if pooled is None:  # the pool branch pools on load: here, a differentiable pool of x
        from .pool import max_pool2d

        pooled = max_pool2d(x, 3, 1, 1)
    s2 = conv2d(x, w21, b21, activation="relu")
    s3 = conv2d(x, w31, b31, activation="relu")
    y1 = conv2d(x, w1, b1, activation="relu")
    y2 = conv2d(s2, w22, b22, padding=1, activation="relu")
    y3 = conv2d(s3, w32, b32, padding=2, activation="relu")
    y4 = conv2d(pooled, w4, b4, activation="relu")
    return cat((y1, y2, y3, y4), 1), cat((s2, s3), 1), cat((w1, w21, w31), 0)


def _block_backward(grad_out, x, pooled, out, scratch, w_cat, w22, w32, w4, c1):
    """``inception_backward_op`` as separate differentiable ops (ReLU masks from ``out`` and
    ``scratch`` are constants; ``scratch`` is also the 3x3/5x5 convs' input)."""
    from .cat import cat
    from .conv import Conv2dBackwardInputFunction as BwdX
    from .conv import Conv2dBackwardWeightFunction as BwdW
    from .conv import relu_mask

    c2a, c2b, c3b = w22.shape[1], w22.shape[0], w32.shape[0]
    o2, o3 = c1 + c2b, c1 + c2b + c3b
    g1, g2, g3, g4 = (relu_mask(grad_out[:, a:b], out[:, a:b]) for a, b in ((0, c1), (c1, o2), (o2, o3), (o3, None)))
    s2, s3 = scratch[:, :c2a], scratch[:, c2a:]
    one, none = [1, 1], [0, 0, 0, 0]
    d_pooled = BwdX.apply(g4, w4, list(pooled.shape), one, none, one, 1, True)
    dw4, db4 = BwdW.apply(pooled, g4, w4, one, none, one, 1), g4.sum((0, 2, 3))
    ds2 = BwdX.apply(g2, w22, list(s2.shape), one, list(_PAD3), one, 1, True)
    ds3 = BwdX.apply(g3, w32, list(s3.shape), one, list(_PAD5), one, 1, True)
    dw22, db22 = BwdW.apply(s2, g2, w22, one, list(_PAD3), one, 1), g2.sum((0, 2, 3))
    dw32, db32 = BwdW.apply(s3, g3, w32, one, list(_PAD5), one, 1), g3.sum((0, 2, 3))
    g_cat = cat((g1, relu_mask(cat((ds2, ds3), 1), scratch)), 1)
    dx = BwdX.apply(g_cat, w_cat, list(x.shape), one, none, one, 1, True)
    dw_cat, db_cat = BwdW.apply(x, g_cat, w_cat, one, none, one, 1), g_cat.sum((0, 2, 3))
    return dx, d_pooled, dw_cat, db_cat, dw22, db22, dw32, db32, dw4, db4


def _setup_block(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _block_op_backward(ctx, g_out, g_scratch, g_wcat):
    return recompute_grads(
        _block, ctx.saved_tensors, (g_out, g_scratch, g_wcat), ctx.needs_input_grad, torch.is_grad_enabled()
    )


def _setup_block_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.c1 = inputs[9]


def _block_backward_op_backward(ctx, grads):
    def fn(*tensors):
        return _block_backward(*tensors, ctx.c1)

    return (*recompute_grads(fn, ctx.saved_tensors, grads, ctx.needs_input_grad[:9], torch.is_grad_enabled()), None)


# The ops are differentiable on their own too (to any order), for callers of torch.ops.cnnkernels.
torch.library.register_autograd("cnnkernels::inception", _block_op_backward, setup_context=_setup_block)
torch.library.register_autograd(
    "cnnkernels::inception_backward", _block_backward_op_backward, setup_context=_setup_block_backward
)
