"""conv + bias + ReLU + max pool as one op (``CF.conv2d_relu_max_pool2d``) against the
torch.nn.functional composition ``max_pool2d(relu(conv2d(...)))``: values, every gradient, ties,
NaN, odd sizes, ceil_mode, both forward schemes (one kernel, and conv into a freed temporary),
second order, what is saved for backward, the module and its placeholder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import cnnkernels.functional as CF
import cnnkernels.nn as cnn
from cnnkernels.convpool import layer_by_layer
from cnnkernels.fusion import FusedMaxPool2d, FusedReLU, fuse
from cnnkernels.kernels import convpool as kcp
from cnnkernels.testing import assert_close

from conftest import DEVICE

# Each case: input (n, c, h, w), conv (k, r, stride, padding, groups, bias), pool (kernel, stride,
# padding, ceil_mode). Small, odd sizes; the models' geometries in miniature.
CASES = {
    "vgg-2x2s2": dict(x=(2, 5, 9, 11), conv=(6, 3, 1, 1, 1, True), pool=(2, 2, 0, False)),
    "vgg-2x2s2-ceil": dict(x=(1, 3, 7, 9), conv=(4, 3, 1, 1, 1, True), pool=(2, 2, 0, True)),
    "alexnet-3x3s2": dict(x=(2, 4, 13, 12), conv=(5, 5, 1, 2, 1, True), pool=(3, 2, 0, False)),
    "alexnet-first-11x11s4": dict(x=(1, 1, 37, 35), conv=(6, 11, 4, 1, 1, True), pool=(3, 2, 0, False)),
    "nin-1x1-3x3s2": dict(x=(2, 33, 9, 8), conv=(7, 1, 1, 0, 1, True), pool=(3, 2, 0, False)),
    "stem-7x7s2-pool-pad1": dict(x=(1, 1, 15, 17), conv=(5, 7, 2, 3, 1, True), pool=(3, 2, 1, False)),
    "3x3s2-pad1-ceil-groups-nobias": dict(x=(2, 4, 10, 9), conv=(6, 3, 1, 1, 2, False), pool=(3, 2, 1, True)),
}


def _args(case):
    k, r, stride, padding, groups, _ = case["conv"]
    pk, ps, pp, ceil = case["pool"]
    return dict(stride=stride, padding=padding, groups=groups), dict(
        kernel_size=pk, stride=ps, padding=pp, ceil_mode=ceil
    )


def _inputs(case, dtype=torch.float64, channels_last=False):
    n, c, h, w = case["x"]
    k, r, _, _, groups, has_bias = case["conv"]
    x = torch.randn(n, c, h, w, dtype=dtype, device=DEVICE)
    wt = torch.randn(k, c // groups, r, r, dtype=dtype, device=DEVICE) / (c // groups * r * r) ** 0.5
    b = torch.randn(k, dtype=dtype, device=DEVICE) if has_bias else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, wt, b


def reference(x, w, b, conv, pool):
    return F.max_pool2d(F.relu(F.conv2d(x, w, b, **conv)), **pool)


def ours(x, w, b, conv, pool):
    return CF.conv2d_relu_max_pool2d(
        x,
        w,
        b,
        conv["stride"],
        conv["padding"],
        1,
        conv["groups"],
        pool["kernel_size"],
        pool["stride"],
        pool["padding"],
        1,
        pool["ceil_mode"],
    )


def _op(x, w, b, stride, padding, dilation, groups, pool, one_kernel):
    """The registered op with square geometry: (pooled output, int8 within-window argmax)."""
    pk, ps, pp, ceil = pool
    conv_args = ([stride] * 2, [padding] * 4, [dilation] * 2, groups)
    pool_args = ([pk] * 2, [ps] * 2, [pp] * 2, [1, 1], ceil)
    return torch.ops.cnnkernels.conv2d_relu_max_pool2d(x, w, b, *conv_args, *pool_args, False, one_kernel)


def _run(fn, x, w, b, dy_seed=1):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    y = fn(*leaves)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed), dtype=torch.float64).to(y.dtype)
    y.backward(g.to(y.device))
    return y.detach(), [t.grad if t is not None else None for t in leaves]


def _compare(x, w, b, conv, pool, dtype=None):
    y, grads = _run(lambda *t: ours(*t, conv, pool), x, w, b)
    y_ref, grads_ref = _run(lambda *t: reference(*t, conv, pool), x, w, b)
    assert_close(y, y_ref, dtype, name="output")
    for name, got, want in zip(("dX", "dW", "db"), grads, grads_ref):
        if want is not None:
            assert_close(got, want, dtype, name=name)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_the_composition_fp64(name):
    case = CASES[name]
    conv, pool = _args(case)
    _compare(*_inputs(case), conv, pool)


@pytest.mark.parametrize("one_kernel", [True, False], ids=["one-kernel", "temporary"])
@pytest.mark.parametrize("name", ["alexnet-3x3s2", "stem-7x7s2-pool-pad1", "3x3s2-pad1-ceil-groups-nobias"])
def test_both_forward_schemes_give_the_composition(name, one_kernel):
    """The op's two forward schemes: values and argmax (checked through dX, which it routes)."""
    case = CASES[name]
    conv, pool = _args(case)
    x, w, b = _inputs(case)
    k, r, stride, padding, groups, _ = case["conv"]
    pk, ps, pp, ceil = case["pool"]
    y, arg = _op(x, w, b, stride, padding, 1, groups, pool=(pk, ps, pp, ceil), one_kernel=one_kernel)
    assert arg.dtype == torch.int8 and arg.shape == y.shape
    assert_close(y, reference(x, w, b, conv, pool))
    # The argmax is the tap torch's indices point at (first maximum), decoded to (row, col).
    z = F.relu(F.conv2d(x, w, b, **conv))
    _, idx = F.max_pool2d(z, **pool, return_indices=True)
    rows = torch.arange(y.shape[2], device=DEVICE).view(1, 1, -1, 1) * ps - pp + arg.long() // pk
    cols = torch.arange(y.shape[3], device=DEVICE).view(1, 1, 1, -1) * ps - pp + arg.long() % pk
    assert torch.equal(rows * z.shape[3] + cols, idx)


@pytest.mark.parametrize(
    "x_shape,k,r,stride,padding,dilation,pool",
    [
        ((2, 64, 7, 6), 5, 3, 1, 1, 1, (3, 2, 1, True)),  # tap-wise, whole channel blocks, clamped taps
        ((1, 3, 12, 11), 4, 3, 1, 8, 8, (2, 2, 0, True)),  # flattened, dilation 8: coordinates compared
        ((1, 40, 11, 10), 3, 2, 1, 8, 15, (3, 2, 1, False)),  # tap-wise, dilation 15: coordinates compared
        ((2, 1, 13, 12), 4, 5, 2, 2, 1, (3, 2, 1, True)),  # 1 channel: the span form, nine accumulators
        ((1, 3, 16, 15), 6, 3, 1, 2, 2, (3, 2, 1, False)),  # 3 channels, dilated span form, nine accumulators
        # Disjoint 2x2 windows (``tap_rows``): the max over a tile's tap rows in the epilogue.
        ((2, 64, 9, 7), 5, 3, 1, 1, 1, (2, 2, 1, True)),  # tap-wise, clamped taps at both ends
        ((2, 1, 11, 9), 6, 3, 1, 1, 1, (2, 2, 0, True)),  # 1 channel (VGG's stem): the span form
    ],
    ids=[
        "tapwise-c64-pad-ceil",
        "flat-dilated",
        "tapwise-dilated",
        "span-c1-pad-ceil",
        "span-c3-dilated-pad",
        "rows-c64",
        "rows-span-c1",
    ],
)
def test_one_kernel_ties_nan_and_argmax_like_torch(x_shape, k, r, stride, padding, dilation, pool):
    """The one-kernel forward against torch's max_pool2d(relu(conv2d)) with its indices: integer
    data (exact ties, windows all <= 0 after ReLU), NaN inputs (the last NaN of a window wins),
    pool taps outside the conv output at both ends (padding, ceil_mode)."""
    pk, ps, pp, ceil = pool
    x = torch.randint(-1, 2, x_shape, device=DEVICE).double()
    x[0, -1, 2, 3] = float("nan")
    x[-1, 0, x_shape[2] - 1, x_shape[3] - 2] = float("nan")
    w = torch.randint(-1, 2, (k, x_shape[1], r, r), device=DEVICE).double()
    b = torch.randint(-2, 3, (k,), device=DEVICE).double()
    y, arg = _op(x, w, b, stride, padding, dilation, 1, pool=(pk, ps, pp, ceil), one_kernel=True)
    z = F.relu(F.conv2d(x, w, b, stride, padding, dilation))
    y_ref, idx = F.max_pool2d(z, pk, ps, pp, ceil_mode=ceil, return_indices=True)
    assert (z == 0).any() and torch.isnan(z).any() and not torch.isnan(y_ref).all()
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
    assert torch.equal(y.nan_to_num(), y_ref.nan_to_num())
    rows = torch.arange(y.shape[2], device=DEVICE).view(1, 1, -1, 1) * ps - pp + arg.long() // pk
    cols = torch.arange(y.shape[3], device=DEVICE).view(1, 1, 1, -1) * ps - pp + arg.long() % pk
    assert torch.equal(rows * z.shape[3] + cols, idx)


def test_nine_accumulators_for_the_span_form_under_3x3_windows(monkeypatch):
    """Overlapping 3x3 windows over a span-form conv (AlexNet's and GoogLeNet's stems) run one
    GEMM into nine accumulators (``NINE_TAPS``); a tap-wise conv under them keeps the tap loop,
    and 2x2/2 windows take the tap rows."""
    seen = []
    launch = kcp.launch

    def spy(kernel, grid, *args, **kwargs):
        if kernel is kcp._conv_relu_max_pool_fwd_kernel:
            seen.append((kwargs["SPAN"], kwargs["NINE_TAPS"], kwargs["TAP_ROWS"]))
        return launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(kcp, "launch", spy)
    for c, pool in ((3, (3, 2, 0, False)), (40, (3, 2, 0, False)), (3, (2, 2, 0, False))):
        x = torch.randn(1, c, 12, 12, device=DEVICE)
        w = torch.randn(4, c, 3, 3, device=DEVICE) / c
        y, _ = _op(x, w, None, 1, 1, 1, 1, pool=pool, one_kernel=True)
        assert_close(y, F.max_pool2d(F.relu(F.conv2d(x, w, None, 1, 1)), *pool[:3]))
    assert seen == [(True, True, 0), (False, False, 0), (True, False, 4)]


def test_tap_rows_only_for_disjoint_power_of_two_windows():
    """Which pools take the maximum in the epilogue over (tap, pixel) rows (``kcp.tap_rows``)."""
    assert kcp.tap_rows((2, 2), (2, 2), (1, 1)) == 4  # VGG
    assert kcp.tap_rows((1, 2), (1, 2), (1, 1)) == 2
    assert kcp.tap_rows((2, 2), (4, 4), (2, 2)) == 4  # dilated, still disjoint
    assert kcp.tap_rows((2, 2), (2, 2), (2, 2)) == 0  # dilated into the next window
    assert kcp.tap_rows((3, 3), (2, 2), (1, 1)) == 0  # AlexNet, GoogLeNet: windows overlap
    assert kcp.tap_rows((3, 3), (3, 3), (1, 1)) == 0  # 9 taps: not a power of two
    assert kcp.tap_rows((8, 4), (8, 4), (1, 1)) == 0  # more than 16 taps


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_low_precision_and_layouts(dtype, channels_last):
    case = CASES["vgg-2x2s2"]
    conv, pool = _args(case)
    x, w, b = _inputs(case, torch.float32, channels_last)
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    y = ours(x, w, b, conv, pool)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    ref64 = reference(x.double(), w.double(), b.double(), conv, pool)
    assert_close(y, ref64, dtype, torch_out=reference(x, w, b, conv, pool))


def test_ties_pick_the_first_maximum_and_relu_zeros():
    """Integer data: conv outputs are exact integers with many equal maxima (and many windows all
    <= 0, whose pooled 0 must pass no gradient); gradients route as torch's do."""
    for name in ("vgg-2x2s2", "alexnet-3x3s2", "stem-7x7s2-pool-pad1"):
        case = CASES[name]
        conv, pool = _args(case)
        x, w, b = _inputs(case)
        x, w = x.round().clamp(-1, 1), w.sign() * (w.abs() > 0.3)
        b = b.round() if b is not None else None
        y, grads = _run(lambda *t, c=conv, p=pool: ours(*t, c, p), x, w, b)
        y_ref, grads_ref = _run(lambda *t, c=conv, p=pool: reference(*t, c, p), x, w, b)
        z = F.relu(F.conv2d(x, w, b, **conv))
        assert (z == 0).any(), "the case must have ReLU zeros"
        assert torch.equal(y, y_ref), name
        for got, want in zip(grads, grads_ref):
            if want is not None:
                assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), name


def test_nan_propagates_like_torch():
    case = CASES["alexnet-3x3s2"]
    conv, pool = _args(case)
    x, w, b = _inputs(case)
    x[0, 1, 3, 4] = float("nan")
    x[1, 0, 10, 2] = float("nan")
    y = ours(x, w, b, conv, pool)
    y_ref = reference(x, w, b, conv, pool)
    assert torch.isnan(y_ref).any() and not torch.isnan(y_ref).all()
    assert_close(y, y_ref)
    _compare(x, w, b, conv, pool)


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def fn(x, w, b):
        return CF.conv2d_relu_max_pool2d(x, w, b, 1, 1, 1, 1, 3, 2, 1, 1, True)

    assert gradcheck(fn, (x, w, b), fast_mode=True)
    assert gradgradcheck(fn, (x, w, b), fast_mode=True)


def test_saves_nothing_at_the_conv_resolution():
    """Saved for backward: the input, the weight, the pooled output and an int8 argmax."""
    case = CASES["vgg-2x2s2"]
    conv, pool = _args(case)
    x, w, b = (t.requires_grad_(True) for t in _inputs(case))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = ours(x, w, b, conv, pool)
    kinds = sorted((tuple(t.shape), str(t.dtype)) for t in saved)
    want = [(x.shape, x.dtype), (w.shape, w.dtype), (y.shape, y.dtype), (y.shape, torch.int8)]
    want = sorted((tuple(s), str(d)) for s, d in want)
    assert kinds == want
    assert any(t is x for t in saved) and any(t is w for t in saved)


def test_bad_arguments_name_them_and_touch_nothing():
    x, w, b = _inputs(CASES["vgg-2x2s2"])
    before = x.clone()
    with pytest.raises(ValueError, match="padding"):
        CF.conv2d_relu_max_pool2d(x, w, b, 1, 1, kernel_size=2, pool_padding=2)
    with pytest.raises(ValueError, match="kernel_size"):
        CF.conv2d_relu_max_pool2d(x, w, b, 1, 1, kernel_size=0)
    with pytest.raises(TypeError, match="weight dtype"):
        CF.conv2d_relu_max_pool2d(x, w.float(), b, 1, 1)
    with pytest.raises(ValueError, match="larger than the padded input"):
        CF.conv2d_relu_max_pool2d(x[:, :, :2, :2], w, b, 1, 0, kernel_size=2)
    assert torch.equal(x, before)


def test_meta_tensors_give_shapes():
    x = torch.empty(2, 3, 17, 17, device="meta")
    w = torch.empty(4, 3, 3, 3, device="meta")
    y = CF.conv2d_relu_max_pool2d(x, w, None, 1, 1, 1, 1, 3, 2, 1, 1, True)
    assert y.shape == F.max_pool2d(F.conv2d(x, w, None, 1, 1), 3, 2, 1, ceil_mode=True).shape


def test_one_kernel_rule_by_the_roofline():
    # Non-overlapping windows recompute nothing.
    assert kcp.one_kernel_wins(224 * 224, 112 * 112, 512, 3, 3, (2, 2), 2)
    # AlexNet's first layer (C*R*S = 121): recomputing the overlap is cheaper than a round trip.
    assert kcp.one_kernel_wins(54 * 54, 26 * 26, 1, 11, 11, (3, 3), 2)
    # AlexNet's last conv (C*R*S = 3456): the temporary is cheaper.
    assert not kcp.one_kernel_wins(12 * 12, 5 * 5, 384, 3, 3, (3, 3), 2)


def test_module_keeps_conv_state_dict_and_layer_by_layer():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True)).double()
    fused, report = fuse(ref, report=True)
    assert [type(m) for m in fused] == [cnn.Conv2dReLUMaxPool2d, FusedReLU, FusedMaxPool2d]
    assert list(fused.state_dict()) == list(ref.state_dict()) == ["0.weight", "0.bias"]
    rows = {e.name: e for e in report}
    assert rows["0"].was == "Conv2d+ReLU+MaxPool2d" and rows["0"].became == "Conv2dReLUMaxPool2d"
    assert rows["2"].became == "FusedMaxPool2d"
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64, device=DEVICE)
    assert_close(fused(x), ref(x))
    with layer_by_layer():
        z = fused[0](x)
        assert z.shape == ref[0](x).shape
        assert_close(fused[2](fused[1](z)), ref(x))


def test_fuse_reaches_into_a_nested_sequential():
    """NiN's layout: the conv + ReLU end a block, the pool follows the block."""
    block = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU())
    ref = nn.Sequential(block, nn.MaxPool2d(3, 2)).double()
    fused = fuse(ref)
    assert type(fused[0][0]) is cnn.Conv2dReLUMaxPool2d and type(fused[1]) is FusedMaxPool2d
    x = torch.randn(1, 2, 7, 9, dtype=torch.float64, device=DEVICE)
    assert_close(fused(x), ref(x))


def test_lazy_module_becomes_the_fused_module():
    ref = nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).double()
    fused = fuse(ref)
    assert type(fused[0]) is cnn.LazyConv2dReLUMaxPool2d
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, device=DEVICE)
    y = fused(x)
    assert type(fused[0]) is cnn.Conv2dReLUMaxPool2d and y.shape == (1, 4, 3, 3)
    ref(x)  # materialise, then compare with the same weights
    ref.load_state_dict(fused.state_dict())
    assert_close(y, ref(x))


# ------------------------------------------------------------------ 1x1 conv recomputed (NiN)


def _chain_inputs(bias1=True):
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64, device=DEVICE)
    w1 = torch.randn(6, 5, 1, 1, dtype=torch.float64, device=DEVICE) / 5**0.5
    b1 = torch.randn(6, dtype=torch.float64, device=DEVICE) if bias1 else None
    w2 = torch.randn(4, 6, 1, 1, dtype=torch.float64, device=DEVICE) / 6**0.5
    b2 = torch.randn(4, dtype=torch.float64, device=DEVICE)
    return x, w1, b1, w2, b2


def _chain_ref(x, w1, b1, w2, b2):
    return F.max_pool2d(F.relu(F.conv2d(F.relu(F.conv2d(x, w1, b1)), w2, b2)), 3, 2)


def _chain_ours(x, w1, b1, w2, b2):
    return CF.conv1x1_relu_conv2d_relu_max_pool2d(x, w1, b1, w2, b2, kernel_size=3, pool_stride=2)


@pytest.mark.parametrize("bias1", [True, False], ids=["bias", "no-bias"])
def test_recomputed_1x1_matches_the_composition(bias1):
    inputs = _chain_inputs(bias1)
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in inputs]
    refs = [t.clone().requires_grad_(True) if t is not None else None for t in inputs]
    y, y_ref = _chain_ours(*leaves), _chain_ref(*refs)
    assert_close(y, y_ref)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    for name, a, b in zip(("dX", "dW1", "db1", "dW2", "db2"), leaves, refs):
        if b is not None:
            assert_close(a.grad, b.grad, name=name)


def test_recomputed_1x1_saves_no_intermediate_and_gradchecks():
    x, w1, b1, w2, b2 = (t.requires_grad_(True) for t in _chain_inputs())
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _chain_ours(x, w1, b1, w2, b2)
    big = [t for t in saved if t.dim() == 4 and t.shape[2:] == x.shape[2:] and t is not x]
    assert not big, [tuple(t.shape) for t in big]  # nothing at the conv resolution but the input
    small = tuple(t.requires_grad_(True) for t in (x[:1, :2, :5, :5], w1[:3, :2], b1[:3], w2[:2, :3], b2[:2]))
    small = tuple(t.detach().clone().requires_grad_(True) for t in small)
    assert gradcheck(_chain_ours, small, fast_mode=True)
    assert gradgradcheck(_chain_ours, small, fast_mode=True)


def test_fuse_recomputes_a_pointwise_producer():
    ref = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.ReLU()),
        nn.MaxPool2d(3, 2),
    ).double()
    fused, report = fuse(ref, report=True)
    block = fused[0]
    assert [type(m).__name__ for m in block] == [
        "Conv2dReLU",
        "FusedReLU",
        "RecomputedConv2dReLU",
        "FusedReLU",
        "Conv2dReLUMaxPool2d",
        "FusedReLU",
    ]
    assert block[4].producer is block[2]
    assert "recomputed" in {e.name: e for e in report}["0.2"].reason
    assert list(fused.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert_close(fused(x), ref(x))
    with layer_by_layer():
        assert block[2](block[0](x)).shape == ref[0][2](ref[0][0](x)).shape
    y, y_ref = fused(x), ref(x)
    g = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, [x, *fused.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    for a, b in zip(grads, grads_ref):
        assert_close(a, b)


def test_lazy_producer_and_consumer_materialise():
    ref = nn.Sequential(nn.LazyConv2d(4, 1), nn.ReLU(), nn.LazyConv2d(6, 1), nn.ReLU(), nn.MaxPool2d(2)).double()
    fused = fuse(ref)
    assert type(fused[0]).__name__ == "LazyRecomputedConv2dReLU" and fused[2].producer is fused[0]
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, device=DEVICE)
    y = fused(x)
    assert fused[0].weight.shape == (4, 3, 1, 1) and fused[2].weight.shape == (6, 4, 1, 1)
    ref(x)
    ref.load_state_dict(fused.state_dict())
    assert_close(y, ref(x))


# --------------------------------------------------- Inception's pool branch: pooled on load


def _block_and_input(nan=False):
    from cnnkernels.models import reference

    ref = reference.Inception(3, (2, 4), (2, 3), 5).double().to(DEVICE)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, device=DEVICE)
    ref(x)  # materialise the lazy convs
    x[0, 1, 2, 3] = x[0, 1, 2, 2]  # a tie inside several windows: the first maximum takes dX
    x[1, 4, 0, 0] = x[1, 4, 1, 1]
    if nan:
        x[1, 2, 3, 3] = float("nan")
    params = [p for name in ("b1_1", "b2_1", "b2_2", "b3_1", "b3_2", "b4_2") for p in getattr(ref, name).parameters()]
    return ref, x, params


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
def test_inception_pools_on_load_like_the_torch_block(nan):
    from cnnkernels.inception import InceptionFunction

    ref, x, params = _block_and_input(nan)
    ours_x, ref_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = InceptionFunction.apply(ours_x, None, *params)
    y_ref = ref(ref_x)
    assert_close(y, y_ref)
    # Saved at the input's resolution: x, the block output and the reduce convs' output, no pooled x.
    assert sorted(t.shape[1] for t in saved if t.dim() == 4 and t.shape[2:] == x.shape[2:]) == [4, 6, 15]
    g = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, [ours_x, *params], g)
    grads_ref = torch.autograd.grad(y_ref, [ref_x, *params], g)
    for got, want in zip(grads, grads_ref):
        assert_close(got, want)


def test_max_pool_conv1x1_kernel_against_the_composition():
    x = torch.randn(2, 37, 6, 5, dtype=torch.float32, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(9, 37, 1, 1, dtype=torch.float32, device=DEVICE)
    b = torch.randn(9, dtype=torch.float32, device=DEVICE)
    out = torch.full((2, 12, 6, 5), float("nan"), device=DEVICE).to(memory_format=torch.channels_last)
    kcp.max_pool_conv1x1_forward(x, w, b, (3, 3), (1, 1), "relu", out[:, 2:11])
    assert_close(out[:, 2:11], F.relu(F.conv2d(F.max_pool2d(x, 3, 1, 1), w, b)))
    assert torch.isnan(out[:, :2]).all() and torch.isnan(out[:, 11:]).all()  # only its slice written
    with pytest.raises(ValueError, match="keep the size"):
        kcp.max_pool_conv1x1_forward(x, w, b, (3, 3), (0, 0))


@pytest.mark.parametrize(
    "n,c,h,w,pool,k",
    [
        (3, 64, 9, 11, (3, 3), 5),
        (2, 37, 7, 4, (5, 3), 5),
        (2, 16, 1, 3, (3, 3), 5),
        (2, 24, 33, 32, (3, 3), 130),
    ],
    ids=["whole-channel-blocks-odd-rows", "partial-channel-block-5x3", "one-row", "tiles-per-program-filter-blocks"],
)
def test_max_pool_conv1x1_pairs_of_rows_nan_and_edges(n, c, h, w, pool, k):
    """The kernel pools pairs of vertically adjacent pixels from shared row maxima, loads clamped
    coordinates for taps outside the image and wraps pairs past the batch: an odd image height
    (the last pair's lower pixel is outside), more pairs than one program holds, more tiles than
    programs (each restages its rows per tile) and more filters than one block (the GEMM runs
    over the staged rows per block), channel counts that fill whole blocks or not, a 5x3 window,
    NaN and inf at edges and corners."""
    x = torch.randn(n, c, h, w, dtype=torch.float64, device=DEVICE)
    x[0, 1, 0, 0] = float("nan")
    x[-1, 2, h - 1, w - 1] = float("nan")
    x[0, 3, h // 2, w - 1] = float("inf")
    x[-1, 0, h - 1, 0] = float("-inf")
    x = x.to(memory_format=torch.channels_last)
    wt = torch.randn(k, c, 1, 1, dtype=torch.float64, device=DEVICE)
    b = torch.randn(k, dtype=torch.float64, device=DEVICE)
    pad = (pool[0] // 2, pool[1] // 2)
    y = kcp.max_pool_conv1x1_forward(x, wt, b, pool, pad, "none")
    ref = F.conv2d(F.max_pool2d(x, pool, 1, pad), wt, b)
    assert torch.isnan(ref).any() and not torch.isnan(ref).all()
    assert_close(y, ref)  # NaN and +-inf exactly where the composition has them


@pytest.mark.slow  # ~90 s under the interpreter; the block's first-order gradients stay in the fast suite
def test_inception_pool_on_load_gradgradcheck():
    from cnnkernels.inception import InceptionFunction

    blk = cnn.Inception(1, (1, 1), (1, 1), 1).double().to(DEVICE)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    blk(x)
    params = [p for c in (blk.b1_1, blk.b2_1, blk.b2_2, blk.b3_1, blk.b3_2, blk.b4_2) for p in (c.weight, c.bias)]

    def fn(x, *p):
        return InceptionFunction.apply(x, None, *p)

    assert gradcheck(fn, (x, *params), fast_mode=True)
    assert gradgradcheck(fn, (x, *params), fast_mode=True)
