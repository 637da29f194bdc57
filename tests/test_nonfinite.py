"""NaN and +-inf in x, weight, bias and dY land exactly where torch puts them, forward and
backward, for every op (float64, where torch's CPU reference is the plain arithmetic). Masked-off
lanes contribute nothing: a NaN weight tap poisons only the input pixels it reaches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnnkernels.functional as CF
from cnnkernels.testing import assert_close

from conftest import DEVICE

D = torch.float64
NAN, INF = float("nan"), float("inf")


def _grads(fn, inputs, dy_poison=None):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(out.shape, generator=g, dtype=D).to(DEVICE)
    if dy_poison is not None:
        dy.view(-1)[dy_poison[0] % dy.numel()] = dy_poison[1]
    out.backward(dy)
    return out.detach(), [t.grad if t is not None else None for t in leaves]


def _compare(ours, theirs, inputs, dy_poison=None):
    out, grads = _grads(ours, inputs, dy_poison)
    ref, ref_grads = _grads(theirs, inputs, dy_poison)
    assert_close(out, ref, name="output")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        if r is not None:
            assert_close(g, r, name=f"grad {i}")


CONV = [
    pytest.param(dict(c=3, k=4, r=3, stride=1, padding=1), id="3x3-pad1-flat"),
    pytest.param(dict(c=3, k=4, r=3, stride=2, padding=0), id="3x3-stride2-flat"),
    pytest.param(dict(c=40, k=40, r=3, stride=1, padding=0), id="3x3-tapwise"),
    pytest.param(dict(c=36, k=36, r=3, stride=2, padding=1), id="3x3-stride2-residue"),
    pytest.param(dict(c=3, k=4, r=3, stride=1, padding=2, dilation=2), id="dilated"),
    pytest.param(dict(c=8, k=6, r=1, stride=1, padding=0), id="1x1-gemm"),
]
WHERE = ["x", "weight", "bias", "dy"]


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("case", CONV)
@pytest.mark.parametrize("relu", [False, True], ids=["conv", "conv_relu"])
def test_conv_nonfinite_placement(case, where, value, relu):
    x = torch.randn(2, case["c"], 7, 7, dtype=D, device=DEVICE)
    w = torch.randn(case["k"], case["c"], case["r"], case["r"], dtype=D, device=DEVICE)
    b = torch.randn(case["k"], dtype=D, device=DEVICE)
    dy_poison = None
    if where == "x":
        x[1, 0, 2, 3] = value
    elif where == "weight":
        w[1, 0, 0, case["r"] - 1] = value
    elif where == "bias":
        b[2] = value
    else:
        dy_poison = (5, value)
    args = dict(stride=case["stride"], padding=case["padding"], dilation=case.get("dilation", 1))
    fn = CF.conv2d_relu if relu else CF.conv2d

    def ref(x_, w_, b_):
        y = F.conv2d(x_, w_, b_, **args)
        return F.relu(y) if relu else y

    _compare(lambda x_, w_, b_: fn(x_, w_, b_, **args), ref, (x, w, b), dy_poison)


def test_nan_weight_tap_poisons_only_reached_pixels():
    """The issue's case: one NaN tap of a 3x3 kernel on a 7x7 input, stride 1 and 2."""
    for stride, reached in ((1, 25), (2, 9)):
        x = torch.randn(1, 40, 7, 7, dtype=D, device=DEVICE, requires_grad=True)
        w = torch.randn(40, 40, 3, 3, dtype=D, device=DEVICE)
        w[0, 0, 0, 0] = NAN
        y = CF.conv2d(x, w, stride=stride)
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
        assert int(torch.isnan(gx[0, 0]).sum()) == reached


POOLS = {
    "max_pool2d": (lambda t: CF.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),
    "max_pool2d-ceil": (
        lambda t: CF.max_pool2d(t, 2, 2, ceil_mode=True),
        lambda t: F.max_pool2d(t, 2, 2, ceil_mode=True),
    ),
    "adaptive_avg_pool2d": (lambda t: CF.adaptive_avg_pool2d(t, (3, 2)), lambda t: F.adaptive_avg_pool2d(t, (3, 2))),
    "global_avg_pool2d": (lambda t: CF.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1)),
    "cat": (lambda t: CF.cat([t, t * 2], 1), lambda t: torch.cat([t, t * 2], 1)),
}


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "dy"])
@pytest.mark.parametrize("op", list(POOLS))
def test_pool_and_cat_nonfinite_placement(op, where, value):
    x = torch.randn(2, 3, 7, 7, dtype=D, device=DEVICE)
    dy_poison = None
    if where == "x":
        x[0, 1, 3, 4] = value
    else:
        dy_poison = (7, value)
    ours, theirs = POOLS[op]
    _compare(ours, theirs, (x,), dy_poison)
