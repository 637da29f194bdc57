"""Max pooling and adaptive / global average pooling: outputs, indices and input gradients
against torch.nn.functional in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cnnkernels.functional as CF
import cnnkernels.nn as cnn
from cnnkernels.kernels import avgpool as kavg
from cnnkernels.kernels import pool as kpool
from cnnkernels.testing import assert_close, poison_

from conftest import DEVICE

LOW = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]


# ---------------------------------------------------------------------------------------------
# References (torch.nn.functional in float64) and helpers.
# ---------------------------------------------------------------------------------------------


def max_pool_ref(x, args, dy):
    """torch's max pooling in fp64: output, int64 indices and dX for the given dY."""
    xr = x.detach().double().requires_grad_(True)
    y, idx = F.max_pool2d(xr, return_indices=True, **args)
    y.backward(dy.double())
    return y.detach(), idx, xr.grad


def avg_pool_ref(x, output_size, dy):
    """torch's adaptive average pooling in fp64: output and dX for the given dY."""
    xr = x.detach().double().requires_grad_(True)
    y = F.adaptive_avg_pool2d(xr, output_size)
    y.backward(dy.double())
    return y.detach(), xr.grad


def _pool_args(case):
    return dict(
        kernel_size=case["k"],
        stride=case.get("stride"),
        padding=case.get("padding", 0),
        dilation=case.get("dilation", 1),
        ceil_mode=case.get("ceil_mode", False),
    )


def _input(case, dtype=torch.float32, channels_last=False):
    x = torch.randn(case["n"], case["c"], case["h"], case["w"], dtype=dtype, device=DEVICE)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _grads(fn, x, dy):
    xl = x.detach().clone().requires_grad_(True)
    out = fn(xl)
    y = out[0] if isinstance(out, tuple) else out
    y.backward(dy)
    return out, xl.grad


def _check_max_pool(x, args, torch_check=False):
    """Output, indices and dX against the fp64 reference, backpropagating the same dY."""
    dtype = x.dtype
    dy = _dy(x, args)
    (y, idx), dx = _grads(lambda t: CF.max_pool2d(t, return_indices=True, **args), x, dy)
    yr, idx_r, dxr = max_pool_ref(x, args, dy)
    torch_out = F.max_pool2d(x, **args) if torch_check else None
    assert y.dtype == dtype and idx.dtype == torch.int64
    assert_close(y, yr, dtype, name="output", torch_out=torch_out)
    assert torch.equal(idx, idx_r), "indices differ from torch's"
    assert_close(dx, dxr, dtype, name="grad_input")
    return y, dx


def _dy(x, args):
    """A fixed random dY of the pooled shape (never zeros)."""
    shape = F.max_pool2d(torch.empty(x.shape, device="meta"), **args).shape
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(x.dtype)


@pytest.fixture
def poisoned_alloc(monkeypatch):
    """Every tensor the launchers allocate starts as poison (NaN, or 77 for integer tensors),
    so an element a kernel fails to write shows up."""
    real_empty, real_strided = torch.empty, torch.empty_strided

    def fill(t):
        return poison_(t) if t.is_floating_point() else t.fill_(77)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_strided", lambda *a, **k: fill(real_strided(*a, **k)))


# ---------------------------------------------------------------------------------------------
# Max pooling.
# ---------------------------------------------------------------------------------------------

# The seed's pooling layers scaled down, plus awkward shapes. The interpreter tile is 256 pixels
# x 64 channels: "multi-block" spans several tiles on both axes.
MAX_CASES = [
    pytest.param(dict(n=2, c=5, h=8, w=8, k=2, stride=2), id="vgg-2x2s2"),
    pytest.param(dict(n=2, c=7, h=13, w=13, k=3, stride=2), id="alexnet-3x3s2-overlap"),
    pytest.param(dict(n=2, c=6, h=14, w=14, k=3, stride=2, ceil_mode=True), id="ceil-hangs-over-edge"),
    pytest.param(dict(n=1, c=9, h=7, w=9, k=3, stride=1, padding=1), id="inception-3x3s1p1-batch1"),
    pytest.param(dict(n=2, c=3, h=11, w=6, k=(3, 2), stride=(2, 1), padding=(1, 0)), id="rect-odd"),
    pytest.param(dict(n=2, c=4, h=10, w=9, k=3, stride=1, padding=1, dilation=2), id="dilated"),
    pytest.param(dict(n=2, c=3, h=9, w=10, k=3, stride=2, padding=1, dilation=2, ceil_mode=True), id="ceil-pad-dil"),
    pytest.param(dict(n=2, c=3, h=1, w=1, k=1), id="1x1-input"),
    pytest.param(dict(n=2, c=3, h=10, w=11, k=2, stride=3), id="stride-gt-kernel"),
    pytest.param(dict(n=2, c=3, h=9, w=8, k=(2, 3), stride=3, padding=1, ceil_mode=True), id="disjoint-pad-ceil"),
    pytest.param(dict(n=2, c=67, h=24, w=23, k=2, stride=2), id="multi-block-C67"),
    pytest.param(dict(n=1, c=2, h=13, w=14, k=12, stride=1), id="12x12-int16-argmax"),
]


@pytest.mark.parametrize("case", MAX_CASES)
def test_max_pool2d_fp32(case):
    _check_max_pool(_input(case), _pool_args(case))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("case", [MAX_CASES[1], MAX_CASES[6]])
def test_max_pool2d_low_precision(case, dtype):
    _check_max_pool(_input(case, dtype), _pool_args(case), torch_check=True)


@pytest.mark.parametrize("case", [MAX_CASES[2], MAX_CASES[9]])
def test_max_pool2d_channels_last(case):
    x = _input(case, channels_last=True)
    y, dx = _check_max_pool(x, _pool_args(case))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert dx.is_contiguous(memory_format=torch.channels_last)


def test_max_pool2d_nchw_stays_nchw():
    y = CF.max_pool2d(torch.randn(2, 4, 8, 8, device=DEVICE), 2)
    assert y.is_contiguous()


def test_max_pool2d_strided_view_input():
    """A channel slice of a channels_last buffer and a spatially strided view, read in place."""
    buf = torch.randn(2, 12, 11, 13, device=DEVICE).to(memory_format=torch.channels_last)
    _check_max_pool(buf[:, 3:8], dict(kernel_size=3, stride=2, padding=1))
    _check_max_pool(buf[:, :, ::2, 1::2], dict(kernel_size=2, stride=1))


def test_max_pool2d_unbatched():
    x = torch.randn(3, 9, 8, device=DEVICE)
    y, idx = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
    yr, ir = F.max_pool2d(x.double(), 3, 2, 1, return_indices=True)
    assert y.shape == (3, 5, 4)
    assert_close(y, yr, torch.float32)
    assert torch.equal(idx, ir)
    assert isinstance(CF.max_pool2d(x, 2), torch.Tensor)


def test_max_pool2d_nan_propagates_like_torch():
    x = torch.randn(2, 3, 9, 9, device=DEVICE)
    x[0, 0, 1, 1] = float("nan")  # one NaN in a window
    x[0, 1, 4, 4] = float("nan")  # two NaNs in one window: torch keeps the last
    x[0, 1, 4, 5] = float("nan")
    x[1, 2, 0, :] = float("nan")  # a NaN row, shared by overlapping windows
    args = dict(kernel_size=3, stride=2, padding=1)
    dy = _dy(x, args)
    (y, idx), dx = _grads(lambda t: CF.max_pool2d(t, return_indices=True, **args), x, dy)
    yr, ir, dxr = max_pool_ref(x, args, dy)
    assert torch.equal(torch.isnan(y), torch.isnan(yr)) and torch.isnan(y).any()
    assert torch.equal(idx, ir)
    assert_close(dx, dxr, torch.float32, name="grad_input")


def test_max_pool2d_ties_pick_first_max():
    x = torch.randint(0, 3, (2, 4, 9, 10), device=DEVICE).float()
    _check_max_pool(x, dict(kernel_size=3, stride=1, padding=1))
    _check_max_pool(torch.ones(1, 2, 5, 5, device=DEVICE), dict(kernel_size=2, stride=1))


def test_max_pool2d_all_minus_inf_window():
    x = torch.full((1, 2, 6, 6), float("-inf"), device=DEVICE)
    x[0, 0, 5, 5] = 1.0
    y, idx = CF.max_pool2d(x, 2, return_indices=True)
    yr, ir = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(y, yr) and torch.equal(idx, ir)


def test_max_pool2d_every_output_written(poisoned_alloc):
    x = _input(dict(n=2, c=67, h=17, w=17))
    y, idx = CF.max_pool2d(x, 3, 2, ceil_mode=True, return_indices=True)
    yr, ir = F.max_pool2d(x, 3, 2, ceil_mode=True, return_indices=True)
    assert torch.equal(y, yr) and torch.equal(idx, ir)
    y, arg, idx = kpool.max_pool2d_forward(x, (3, 3), (2, 2), (0, 0), (1, 1), True, True)
    assert arg.dtype == torch.int8 and int(arg.max()) < 9 and int(arg.min()) >= 0
    dx = kpool.max_pool2d_backward(torch.randn_like(y), arg, tuple(x.shape), (3, 3), (2, 2), (0, 0), (1, 1))
    assert not torch.isnan(dx).any()


def test_max_pool2d_argmax_dtype():
    assert kpool.argmax_dtype((11, 11)) == torch.int8
    assert kpool.argmax_dtype((12, 11)) == torch.int16
    assert kpool.argmax_dtype((200, 200)) == torch.int32


def test_max_pool2d_gradcheck_fp64():
    x = torch.randn(1, 1, 6, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: CF.max_pool2d(t, 3, 2, 1), (x,))
    assert torch.autograd.gradcheck(lambda t: CF.max_pool2d(t, 2, 1, dilation=2, ceil_mode=True), (x,))


def test_max_pool2d_inputs_unchanged_and_backward_deterministic():
    x = _input(dict(n=2, c=7, h=12, w=11), channels_last=True)
    before = x.clone()
    args = dict(kernel_size=3, stride=1, padding=1)  # every pixel sits in up to 9 windows
    dy = _dy(x, args)
    _, g1 = _grads(lambda t: CF.max_pool2d(t, **args), x, dy)
    _, g2 = _grads(lambda t: CF.max_pool2d(t, **args), x, dy)
    assert torch.equal(x, before)
    assert torch.equal(g1, g2)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 5),
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    dil=st.integers(1, 2),
    ceil_mode=st.booleans(),
    channels_last=st.booleans(),
)
def test_max_pool2d_property(n, c, h, w, kh, kw, stride, pad, dil, ceil_mode, channels_last):
    pad = (min(pad, kh // 2), min(pad, kw // 2))
    args = dict(kernel_size=(kh, kw), stride=stride, padding=pad, dilation=dil, ceil_mode=ceil_mode)
    x = _input(dict(n=n, c=c, h=h, w=w), channels_last=channels_last)
    try:
        F.max_pool2d(x, **args)
    except RuntimeError:
        with pytest.raises(ValueError, match="larger than the padded input"):
            CF.max_pool2d(x, **args)
        return
    # torch's own backward aborts on a window with no tap inside the input (its index points
    # outside the plane); that case has its own test below.
    assume(not _has_empty_window(h, kh, stride, pad[0], dil, ceil_mode))
    assume(not _has_empty_window(w, kw, stride, pad[1], dil, ceil_mode))
    _check_max_pool(x, args)


def _has_empty_window(size, k, stride, pad, dil, ceil_mode):
    out = kpool.pool_output_size(size, k, stride, pad, dil, ceil_mode)
    return any(not any(0 <= o * stride - pad + r * dil < size for r in range(k)) for o in range(out))


def test_max_pool2d_window_without_input_taps():
    """H=2 with a 2-tap window of dilation 3 and padding 1 covers rows -1 and 2 only: torch
    returns -inf with an index outside the plane (6); here the index is -1 and no gradient
    flows from that window."""
    x = torch.randn(1, 1, 2, 2, device=DEVICE, requires_grad=True)
    y, idx = CF.max_pool2d(x, 2, padding=1, dilation=3, return_indices=True)
    assert torch.equal(y, F.max_pool2d(x, 2, padding=1, dilation=3))
    assert y.item() == float("-inf") and idx.item() == -1
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.zeros_like(x))


X = torch.randn(1, 4, 8, 8)
MAX_BAD = [
    pytest.param(dict(input=torch.randn(4, 8)), ValueError, "input must be 3-D or 4-D", id="rank"),
    pytest.param(dict(input=X.long()), TypeError, "input must be float", id="int-input"),
    pytest.param(dict(input=torch.randn(2, 0, 8, 8)), ValueError, "input must have non-zero", id="zero-channels"),
    pytest.param(dict(kernel_size=0), ValueError, "kernel_size must be positive", id="zero-kernel"),
    pytest.param(dict(kernel_size=(2, -1)), ValueError, "kernel_size must be positive", id="neg-kernel"),
    pytest.param(dict(kernel_size=(1, 2, 3)), TypeError, "kernel_size must be an int or a pair", id="kernel-triple"),
    pytest.param(dict(stride=0), ValueError, "stride must be positive", id="zero-stride"),
    pytest.param(dict(stride=-2), ValueError, "stride must be positive", id="neg-stride"),
    pytest.param(dict(dilation=0), ValueError, "dilation must be positive", id="zero-dilation"),
    pytest.param(dict(padding=-1), ValueError, "padding must be non-negative", id="neg-padding"),
    pytest.param(dict(padding=2), ValueError, "padding .* at most half of kernel_size", id="pad-gt-half"),
    pytest.param(dict(kernel_size=3, padding=2, dilation=2), ValueError, "at most half", id="pad-gt-half-dilated"),
    pytest.param(dict(kernel_size=9, padding=0), ValueError, "larger than the padded input", id="window-too-big"),
    pytest.param(dict(ceil_mode=1), TypeError, "ceil_mode must be a bool", id="ceil-mode-int"),
    pytest.param(dict(return_indices="yes"), TypeError, "return_indices must be a bool", id="return-indices-str"),
]


@pytest.mark.parametrize("override, exc, match", MAX_BAD)
def test_max_pool2d_bad_arguments(override, exc, match):
    kw = dict(input=X.clone(), kernel_size=3, stride=None, padding=1, dilation=1)
    kw.update(override)
    before = kw["input"].clone()
    with pytest.raises(exc, match=match):
        CF.max_pool2d(**kw)
    assert torch.equal(kw["input"], before)


def test_max_pool2d_module_matches_torch():
    ref = torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    ours = cnn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    assert isinstance(ours, torch.nn.MaxPool2d) and repr(ours) == repr(ref)
    x = torch.randn(2, 3, 10, 9, device=DEVICE)
    assert torch.equal(ours(x), ref(x))
    y, idx = cnn.MaxPool2d(2, return_indices=True)(x)
    assert torch.equal(idx, F.max_pool2d(x, 2, return_indices=True)[1])


def test_max_pool2d_opcheck():
    x = torch.randn(2, 3, 7, 7)
    args = (x, [3, 3], [2, 2], [1, 1], [1, 1], True, True)
    for util in ("test_schema", "test_autograd_registration", "test_faketensor"):
        torch.library.opcheck(torch.ops.cnnkernels.max_pool2d.default, args, test_utils=util)
    _, arg, _ = torch.ops.cnnkernels.max_pool2d(*args)
    bwd = (torch.randn(2, 3, 4, 4), arg, [2, 3, 7, 7], [3, 3], [2, 2], [1, 1], [1, 1], False)
    for util in ("test_schema", "test_faketensor"):
        torch.library.opcheck(torch.ops.cnnkernels.max_pool2d_backward.default, bwd, test_utils=util)


# ---------------------------------------------------------------------------------------------
# Adaptive and global average pooling.
# ---------------------------------------------------------------------------------------------

AVG_CASES = [
    pytest.param(dict(n=2, c=67, h=7, w=7, out=1), id="googlenet-global-C67"),
    pytest.param(dict(n=1, c=10, h=5, w=5, out=(1, 1)), id="nin-global-batch1"),
    pytest.param(dict(n=2, c=3, h=9, w=11, out=1), id="global-hw-gt-block"),
    pytest.param(dict(n=2, c=3, h=1, w=1, out=1), id="global-1x1-input"),
    pytest.param(dict(n=2, c=4, h=7, w=7, out=7), id="identity-7x7"),
    pytest.param(dict(n=2, c=5, h=13, w=11, out=(4, 5)), id="uneven-windows"),
    pytest.param(dict(n=2, c=3, h=10, w=9, out=(3, None)), id="none-keeps-width"),
    pytest.param(dict(n=2, c=3, h=4, w=3, out=(9, 7)), id="output-larger-than-input"),
    pytest.param(dict(n=2, c=67, h=20, w=15, out=(6, 4)), id="multi-block-C67"),
]


def _check_avg_pool(x, out_size, torch_check=False):
    dtype = x.dtype
    ref_shape = F.adaptive_avg_pool2d(torch.empty(x.shape, device="meta"), out_size).shape
    g = torch.Generator().manual_seed(2)
    dy = torch.randn(ref_shape, generator=g, dtype=torch.float64)
    dy = dy.to(dtype)
    y, dx = _grads(lambda t: CF.adaptive_avg_pool2d(t, out_size), x, dy)
    yr, dxr = avg_pool_ref(x, out_size, dy)
    torch_out = F.adaptive_avg_pool2d(x, out_size) if torch_check else None
    assert y.dtype == dtype
    assert_close(y, yr, dtype, name="output", torch_out=torch_out)
    assert_close(dx, dxr, dtype, name="grad_input")
    return y, dx


@pytest.mark.parametrize("case", AVG_CASES)
def test_adaptive_avg_pool2d_fp32(case):
    _check_avg_pool(_input(case), case["out"])


@pytest.mark.parametrize("case", [AVG_CASES[0], AVG_CASES[5], AVG_CASES[8]])
def test_adaptive_avg_pool2d_channels_last(case):
    y, dx = _check_avg_pool(_input(case, channels_last=True), case["out"])
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert dx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("case", [AVG_CASES[0], AVG_CASES[5]])
def test_adaptive_avg_pool2d_low_precision(case, dtype):
    _check_avg_pool(_input(case, dtype), case["out"], torch_check=True)


def test_adaptive_avg_pool2d_unbatched_and_strided_view():
    x = torch.randn(3, 9, 8, device=DEVICE)
    y = CF.adaptive_avg_pool2d(x, (2, 3))
    assert y.shape == (3, 2, 3)
    assert_close(y, F.adaptive_avg_pool2d(x.double(), (2, 3)), torch.float32)
    buf = torch.randn(2, 12, 9, 9, device=DEVICE).to(memory_format=torch.channels_last)
    _check_avg_pool(buf[:, 2:9], 1)
    _check_avg_pool(buf[:, :, 1::2], (2, 3))


def test_global_avg_pool_uses_its_own_kernel(monkeypatch):
    calls = []
    real = kavg.global_avg_pool2d_forward
    monkeypatch.setattr(kavg, "global_avg_pool2d_forward", lambda x: calls.append(1) or real(x))
    CF.adaptive_avg_pool2d(torch.randn(2, 3, 5, 5, device=DEVICE), 1)
    CF.adaptive_avg_pool2d(torch.randn(2, 3, 5, 5, device=DEVICE), 2)
    assert calls == [1]


def test_avg_pool_every_output_written(poisoned_alloc):
    x = _input(dict(n=2, c=67, h=9, w=10), channels_last=True)
    for out in (1, (4, 3)):
        y = CF.adaptive_avg_pool2d(x, out)
        assert_close(y, F.adaptive_avg_pool2d(x.double(), out), torch.float32)
        dx = (kavg.global_avg_pool2d_backward if out == 1 else kavg.adaptive_avg_pool2d_backward)(
            torch.randn_like(y), tuple(x.shape)
        )
        assert not torch.isnan(dx).any()


def test_adaptive_avg_pool2d_gradcheck_fp64():
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: CF.adaptive_avg_pool2d(t, 1), (x,))
    assert torch.autograd.gradcheck(lambda t: CF.adaptive_avg_pool2d(t, (3, 4)), (x,))


def test_adaptive_avg_pool2d_inputs_unchanged_and_backward_deterministic():
    x = _input(dict(n=2, c=7, h=11, w=9))
    before = x.clone()
    dy = torch.randn(2, 7, 4, 4, device=DEVICE)
    _, g1 = _grads(lambda t: CF.adaptive_avg_pool2d(t, 4), x, dy)
    _, g2 = _grads(lambda t: CF.adaptive_avg_pool2d(t, 4), x, dy)
    assert torch.equal(x, before)
    assert torch.equal(g1, g2)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 5),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    oh=st.integers(1, 8),
    ow=st.one_of(st.none(), st.integers(1, 8)),
    channels_last=st.booleans(),
)
def test_adaptive_avg_pool2d_property(n, c, h, w, oh, ow, channels_last):
    _check_avg_pool(_input(dict(n=n, c=c, h=h, w=w), channels_last=channels_last), (oh, ow))


AVG_BAD = [
    pytest.param(dict(input=torch.randn(4, 8)), ValueError, "input must be 3-D or 4-D", id="rank"),
    pytest.param(dict(input=X.int()), TypeError, "input must be float", id="int-input"),
    pytest.param(dict(input=torch.randn(1, 3, 0, 4)), ValueError, "input must have non-zero", id="zero-height"),
    pytest.param(dict(output_size=0), ValueError, "output_size must be positive", id="zero-size"),
    pytest.param(dict(output_size=(2, -1)), ValueError, "output_size must be positive", id="neg-size"),
    pytest.param(dict(output_size=(2, 2, 2)), TypeError, "output_size must be an int or a pair", id="triple"),
    pytest.param(dict(output_size=2.5), TypeError, "output_size must be an int or a pair", id="float"),
]


@pytest.mark.parametrize("override, exc, match", AVG_BAD)
def test_adaptive_avg_pool2d_bad_arguments(override, exc, match):
    kw = dict(input=X.clone(), output_size=2)
    kw.update(override)
    before = kw["input"].clone()
    with pytest.raises(exc, match=match):
        CF.adaptive_avg_pool2d(**kw)
    assert torch.equal(kw["input"], before)


def test_adaptive_avg_pool2d_module_matches_torch():
    ref = torch.nn.AdaptiveAvgPool2d((3, None))
    ours = cnn.AdaptiveAvgPool2d((3, None))
    assert isinstance(ours, torch.nn.AdaptiveAvgPool2d) and repr(ours) == repr(ref)
    x = torch.randn(2, 3, 10, 9, device=DEVICE)
    assert_close(ours(x), ref(x.double()), torch.float32)
    assert_close(cnn.AdaptiveAvgPool2d(1)(x), x.double().mean((2, 3), keepdim=True), torch.float32)


def test_avg_pool_opcheck():
    x = torch.randn(2, 3, 7, 6)
    for op, args in (
        (torch.ops.cnnkernels.adaptive_avg_pool2d.default, (x, [3, 4])),
        (torch.ops.cnnkernels.global_avg_pool2d.default, (x,)),
        (torch.ops.cnnkernels.adaptive_avg_pool2d_backward.default, (torch.randn(2, 3, 3, 4), [2, 3, 7, 6], False)),
        (torch.ops.cnnkernels.global_avg_pool2d_backward.default, (torch.randn(2, 3, 1, 1), [2, 3, 7, 6], True)),
    ):
        for util in ("test_schema", "test_faketensor"):
            torch.library.opcheck(op, args, test_utils=util)
