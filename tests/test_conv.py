"""Fused convolution (+ bias + ReLU): every output and gradient against torch.nn.functional."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnkernels._fast as fast
import cnnkernels.functional as CF
import cnnkernels.nn as cnn
from cnnkernels.kernels import conv as kconv
from cnnkernels.testing import assert_close, poison_

from _reference import conv2d_ref, forward_backward
from conftest import DEVICE

# Geometries: the seed's layer shapes scaled down in batch and image size, plus awkward ones.
CASES = [
    pytest.param(dict(n=2, c=1, h=39, w=39, k=8, r=11, s=11, stride=4, padding=1), id="alexnet-11x11s4-C1"),
    pytest.param(dict(n=2, c=1, h=21, w=19, k=8, r=7, s=7, stride=2, padding=3), id="googlenet-7x7s2-C1"),
    pytest.param(dict(n=2, c=5, h=13, w=13, k=6, r=5, s=5, stride=1, padding=2), id="5x5-odd"),
    pytest.param(dict(n=2, c=40, h=9, w=11, k=20, r=3, s=3, stride=1, padding=1), id="3x3-tapwise-C40"),
    pytest.param(dict(n=3, c=48, h=7, w=7, k=24, r=1, s=1, stride=1, padding=0), id="1x1"),
    pytest.param(dict(n=1, c=3, h=10, w=9, k=5, r=3, s=3, stride=2, padding=1, bias=False), id="batch1-stride2-nobias"),
    pytest.param(
        dict(n=2, c=4, h=12, w=11, k=6, r=3, s=3, stride=1, padding=2, dilation=2, groups=2), id="dilated-groups"
    ),
    pytest.param(dict(n=2, c=6, h=8, w=8, k=6, r=3, s=3, stride=1, padding=1, groups=6), id="depthwise"),
    pytest.param(dict(n=2, c=3, h=9, w=10, k=4, r=4, s=2, stride=1, padding="same"), id="same-even-kernel"),
    pytest.param(dict(n=2, c=3, h=9, w=10, k=4, r=3, s=3, stride=1, padding="same", dilation=2), id="same-dilated"),
    pytest.param(dict(n=2, c=3, h=9, w=10, k=4, r=3, s=5, stride=(2, 1), padding=(1, 2)), id="rect-kernel-valid-pairs"),
    pytest.param(dict(n=2, c=3, h=6, w=6, k=4, r=3, s=3, stride=1, padding="valid"), id="valid"),
    pytest.param(dict(n=2, c=34, h=7, w=6, k=33, r=2, s=2, stride=2, padding=0), id="kernel-eq-stride-C34"),
    # K >= 32: dX runs tap-wise; with dilation 1 over the stride's residue classes.
    pytest.param(dict(n=2, c=3, h=23, w=21, k=36, r=11, s=11, stride=4, padding=1), id="11x11s4-dX-residue"),
    pytest.param(dict(n=1, c=5, h=12, w=11, k=40, r=3, s=3, stride=(3, 2), padding=(1, 0)), id="stride3x2-dX-residue"),
    pytest.param(
        dict(n=2, c=4, h=11, w=10, k=33, r=3, s=3, stride=2, padding=1, dilation=2), id="dilated-strided-dX-masks"
    ),
]


def _make(case, dtype, device=DEVICE, channels_last=False):
    g = case.get("groups", 1)
    x = torch.randn(case["n"], case["c"], case["h"], case["w"], dtype=dtype, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = (
        torch.randn(case["k"], case["c"] // g, case["r"], case["s"], dtype=dtype, device=device)
        / (case["c"] * case["r"] * case["s"] / g) ** 0.5
    )
    b = torch.randn(case["k"], dtype=dtype, device=device) if case.get("bias", True) else None
    args = dict(
        stride=case.get("stride", 1), padding=case.get("padding", 0), dilation=case.get("dilation", 1), groups=g
    )
    return x, w, b, args


def _check(case, dtype, relu, channels_last=False):
    x, w, b, args = _make(case, dtype, channels_last=channels_last)
    fn = CF.conv2d_relu if relu else CF.conv2d
    out, grads, dy = forward_backward(lambda x_, w_, b_: fn(x_, w_, b_, **args), (x, w, b))

    def ref_fn(x_, w_, b_):
        return conv2d_ref(x_, w_, b_, relu=relu, **args)

    # fp64 reference, backpropagating exactly the dY that was fed to the kernels.
    leaves = [t.double().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    ref = ref_fn(*leaves)
    ref.backward(dy.double())
    torch_out = None
    if dtype in (torch.float16, torch.bfloat16) and DEVICE == "cuda":
        torch_out = ref_fn(x, w, b)
    assert_close(out, ref, dtype, name="output", torch_out=torch_out)
    for name, got, leaf in zip(("grad_input", "grad_weight", "grad_bias"), grads, leaves):
        if leaf is None:
            assert got is None
            continue
        assert_close(got, leaf.grad, dtype, name=name)
    assert out.dtype == dtype
    return out


@pytest.mark.parametrize("relu", [False, True], ids=["conv", "conv_relu"])
@pytest.mark.parametrize("case", CASES)
def test_conv_fp32(case, relu):
    _check(case, torch.float32, relu)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[6]])
def test_conv_low_precision(case, dtype):
    _check(case, dtype, relu=True)


@pytest.mark.parametrize("case", [CASES[3], CASES[5]])
def test_conv_channels_last_input(case):
    out = _check(case, torch.float32, relu=True, channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_conv_nchw_output_layout_follows_input():
    x, w, b, args = _make(CASES[4].values[0], torch.float32)
    assert CF.conv2d(x, w, b).is_contiguous()


def test_unbatched_input():
    x = torch.randn(3, 9, 8, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    out = CF.conv2d_relu(x, w, None, padding=1)
    assert out.shape == (4, 9, 8)
    assert_close(out, F.relu(F.conv2d(x.double(), w.double(), None, padding=1)), torch.float32)


def test_gradcheck_fp64():
    x = torch.randn(1, 3, 6, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, d: CF.conv2d_relu(a, c, d, stride=2, padding=1), (x, w, b))
    assert torch.autograd.gradcheck(lambda a, c, d: CF.conv2d(a, c, d, padding="same", dilation=2), (x, w, b))


def test_output_into_channel_slice_of_poisoned_buffer():
    """The launcher writes a channel slice of a larger NHWC buffer and nothing else."""
    x = torch.randn(2, 5, 7, 7, device=DEVICE)
    w = torch.randn(6, 5, 3, 3, device=DEVICE)
    b = torch.randn(6, device=DEVICE)
    buf = poison_(torch.empty(2, 16, 7, 7, device=DEVICE).to(memory_format=torch.channels_last))
    view = buf[:, 4:10]
    kconv.conv2d_forward(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1, "relu", out=view)
    assert_close(view, F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1)), torch.float32)
    assert torch.isnan(buf[:, :4]).all() and torch.isnan(buf[:, 10:]).all()


@pytest.mark.parametrize(
    "c,width,offset,vec",
    [(24, 40, 8, 8), (24, 36, 8, 4), (24, 34, 8, 2), (24, 40, 4, 1), (12, 28, 8, 4), (12, 30, 8, 2)],
    ids=["vec8", "vec4", "vec2", "misaligned-gathered", "flat-vec4", "flat-vec2"],
)
def test_channel_slices_keep_their_vectors(c, width, offset, vec):
    """A channel slice of a wider NHWC buffer (GoogLeNet's 5x5 branches read their reduce conv's
    slice): 24 channels (tap-wise, a K slice of 32) and 12 (below FWD_FLAT_BELOW: lanes over
    (r, s, c)) go 16, 8 or 4 bytes at a time as the slice's pixel stride allows, one element at a
    time from a first element off 16 bytes: the same result every way."""
    buf = torch.randn(2, width, 9, 8, dtype=torch.float16, device=DEVICE).to(memory_format=torch.channels_last)
    x = buf[:, offset : offset + c]
    w = (torch.randn(16, c, 5, 5, dtype=torch.float16, device=DEVICE) / 11).to(memory_format=torch.channels_last)
    b = torch.randn(16, dtype=torch.float16, device=DEVICE)
    assert kconv.flat_vector(x, w, c) == vec
    y = kconv.conv2d_forward(x, w, b, (1, 1), (2, 2, 2, 2), (1, 1), 1, "relu")
    assert_close(y, F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=2)), torch.float16)


@pytest.mark.parametrize(
    "r,stride,pad,dil",
    [(5, 1, 2, 1), (3, 2, 1, 1), (7, 1, 6, 2), (1, 1, 0, 1)],
    ids=["5x5-25-taps", "3x3s2-9-taps", "7x7-dilated-49-taps", "1x1-one-tap"],
)
def test_forward_two_taps_a_step(monkeypatch, r, stride, pad, dil):
    """A power-of-two channel count C below 64 with BLOCK_K = 2C (the interpreter's BLOCK_K = 64
    at C = 32) reads two taps a step: an odd tap count (the last step's second tap is past the
    filter), more than 31 taps (window tests by coordinates instead of bits), a single tap, a
    channel slice of a wider buffer; an inf at an image border poisons exactly torch's windows."""
    pow2 = _launch_kwargs(monkeypatch, kconv._conv_fwd_kernel, "C_POW2")
    buf = torch.randn(2, 48, 11, 10, device=DEVICE).to(memory_format=torch.channels_last)
    buf[1, 9, 0, 9] = float("inf")
    x = buf[:, 8:40]
    w = torch.randn(20, 32, r, r, device=DEVICE) / (6 * r)
    b = torch.randn(20, device=DEVICE)
    for dtype in (torch.float32, torch.bfloat16):
        xd, wd, bd = x.to(dtype), w.to(dtype), b.to(dtype)
        y = kconv.conv2d_forward(xd, wd, bd, (stride, stride), (pad,) * 4, (dil, dil), 1, "none")
        ref = F.conv2d(xd.double(), wd.double(), bd.double(), stride=stride, padding=pad, dilation=dil)
        assert torch.equal(torch.isinf(y), torch.isinf(ref)) and torch.isinf(ref).any()
        assert_close(y.nan_to_num(posinf=0, neginf=0), ref.nan_to_num(posinf=0, neginf=0), dtype)
    assert pow2 == [32, 32]


@pytest.mark.parametrize(
    "k,r,pad,dil,relu,pow2",
    [
        (10, 3, 1, 1, True, 16),
        (10, 3, 1, 1, False, 0),
        (16, 5, 2, 1, False, 16),
        (20, 3, 2, 2, True, 32),
        (12, 2, 1, 1, True, 16),
    ],
    ids=["nin-10-prepared", "10-unmasked-flat", "16-5x5-odd-taps", "20-dilated-padded-to-32", "12-2x2-even-taps"],
)
def test_dx_two_taps_a_step(monkeypatch, k, r, pad, dil, relu, pow2):
    """dX of a stride-1 layer of 9 to 32 filters reads two taps' dY' channels a step (K_POW2):
    dY' of 16 or 32 channels, or fewer zero-padded to that by ``conv2d_backward_prep`` (ReLU);
    an unmasked dY' of 10 channels has no such padding and keeps the flattened form. Odd and
    even tap counts, dilation; every gradient against float64."""
    seen = _launch_kwargs(monkeypatch, kconv._conv_bwd_input_kernel, "K_POW2")
    case = dict(n=2, c=12, h=7, w=6, k=k, r=r, s=r, stride=1, padding=pad, dilation=dil)
    for dtype in (torch.float32, torch.bfloat16):
        _check(case, dtype, relu)
    assert seen == [pow2, pow2]


@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul")
def test_dx_two_taps_nonfinite_weight_like_torch(monkeypatch):
    """An inf in W reaches exactly the dX pixels torch's reaches: the two-tap step's masked lanes
    multiply it by zero (NaN), and the tile is recomputed without the unreached taps."""
    seen = _launch_kwargs(monkeypatch, kconv._conv_bwd_input_kernel, "K_POW2")
    x = torch.randn(1, 8, 6, 6, device=DEVICE)
    w = torch.randn(16, 8, 3, 3, device=DEVICE)
    w[3, 2, 0, 0] = float("inf")
    dy = torch.randn(1, 16, 6, 6, device=DEVICE)
    dx = kconv.conv2d_backward_input(dy, None, w, tuple(x.shape), (1, 1), (1, 1, 1, 1), (1, 1), 1, "none")
    ref = torch.nn.grad.conv2d_input(x.shape, w.double(), dy.double(), padding=1)
    assert torch.equal(torch.isnan(dx), torch.isnan(ref)) and torch.equal(torch.isinf(dx), torch.isinf(ref))
    assert torch.isinf(ref).any()
    finite = torch.isfinite(ref)
    assert_close(dx[finite], ref[finite], torch.float32)
    assert seen == [16]


def test_every_output_element_written():
    """Outputs come from torch.empty: a poisoned allocator would show unwritten elements as NaN,
    so the check is direct: run into a NaN-filled ``out`` of the full shape."""
    case = CASES[2].values[0]
    x, w, b, args = _make(case, torch.float32)
    out = poison_(torch.empty(2, 6, 13, 13, device=DEVICE).to(memory_format=torch.channels_last))
    kconv.conv2d_forward(x, w, b, (1, 1), (2, 2, 2, 2), (1, 1), 1, "none", out=out)
    assert not torch.isnan(out).any()


def test_inputs_unchanged_and_backward_deterministic():
    x, w, b, args = _make(CASES[3].values[0], torch.float32)
    copies = [t.clone() for t in (x, w, b)]
    _, g1, _ = forward_backward(lambda a, c, d: CF.conv2d_relu(a, c, d, **args), (x, w, b))
    _, g2, _ = forward_backward(lambda a, c, d: CF.conv2d_relu(a, c, d, **args), (x, w, b))
    for t, c in zip((x, w, b), copies):
        assert torch.equal(t, c)
    for a, c in zip(g1, g2):
        assert torch.equal(a, c)


def test_dw_split_reduction_used_and_exact():
    """Enough output pixels for several dW splits: the fixed-order partial sum must match."""
    x = torch.randn(4, 16, 12, 12, device=DEVICE)
    w = torch.randn(8, 16, 3, 3, device=DEVICE)
    dy = torch.randn(4, 8, 12, 12, device=DEVICE)
    assert 4 * 12 * 12 > kconv._dw_chunk(4 * 144, 1)
    dw, db = kconv.conv2d_backward_weight(x, dy, None, w, (1, 1), (1, 1, 1, 1), (1, 1), 1, "none", True)
    xr = x.double().requires_grad_()
    wr = w.double().requires_grad_()
    br = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    F.conv2d(xr, wr, br, padding=1).backward(dy.double())
    assert_close(dw, wr.grad, torch.float32, name="grad_weight")
    assert_close(db, br.grad, torch.float32, name="grad_bias")


# Row-tiled dW (stride 1, 'same', NHWC): whole rows per step with several images per step (5x5,
# 1-wide), one row per step, rows wider than the step (segments), dilation, a 5x5 tap grid,
# channel slices of wider buffers, and K, C not multiples of the blocks; several splits each.
DW_ROWS = [
    pytest.param(dict(n=20, c=40, h=5, w=5, k=24, r=3, s=3, pad=1, dil=1), id="5x5-images-multiwrap"),
    pytest.param(dict(n=3, c=36, h=20, w=1, k=10, r=3, s=3, pad=1, dil=1), id="w1-32-rows-per-step"),
    pytest.param(dict(n=3, c=33, h=9, w=11, k=40, r=5, s=5, pad=2, dil=1), id="5x5-taps"),
    pytest.param(dict(n=4, c=32, h=9, w=10, k=8, r=3, s=3, pad=2, dil=2, slice=True), id="dilated-channel-slices"),
    pytest.param(dict(n=2, c=32, h=3, w=70, k=16, r=3, s=3, pad=1, dil=1), id="segments-w70"),
    pytest.param(dict(n=1, c=32, h=3, w=130, k=8, r=3, s=3, pad=1, dil=1), id="segments-w130-last-partial"),
    # Below FLAT_BELOW channels, channels in whole 16-byte vectors (GoogLeNet's 5x5 branches): narrow tiles.
    pytest.param(dict(n=3, c=24, h=7, w=7, k=16, r=5, s=5, pad=2, dil=1), id="5x5-C24-narrow"),
    pytest.param(dict(n=4, c=16, h=9, w=9, k=12, r=5, s=5, pad=2, dil=1, slice=True), id="5x5-C16-channel-slices"),
    # Strided: an input twice the output (no skip between images), odd inputs and asymmetric
    # padding (each image's input ends past its last output row: a skip, also inside a step),
    # a 1x1 stride-2 downsample (the skip is negative), segments, dilation, groups.
    pytest.param(dict(n=3, c=32, h=10, w=12, k=16, r=3, s=3, pad=1, dil=1, stride=2), id="3x3s2-even"),
    pytest.param(dict(n=5, c=32, h=9, w=11, k=12, r=3, s=3, pad=(1, 2, 1, 2), dil=1, stride=2), id="3x3s2-pad12-odd"),
    pytest.param(dict(n=4, c=40, h=9, w=9, k=24, r=1, s=1, pad=0, dil=1, stride=2), id="1x1s2-downsample"),
    pytest.param(dict(n=2, c=32, h=5, w=141, k=8, r=3, s=3, pad=1, dil=1, stride=2), id="segments-s2"),
    pytest.param(dict(n=3, c=32, h=13, w=12, k=8, r=3, s=3, pad=2, dil=2, stride=(2, 3)), id="dilated-s2x3"),
    pytest.param(
        dict(n=3, c=64, h=9, w=10, k=24, r=3, s=3, pad=(1, 2, 1, 2), dil=1, stride=2, groups=2), id="grouped-s2"
    ),
    # 10 filters, dY' in a buffer of 16 channels a pixel (conv2d_backward_prep's): dW reads 16
    # channels a pixel whole (K_READ), the padding NaN here, reaching no stored element.
    pytest.param(dict(n=3, c=32, h=6, w=5, k=10, r=3, s=3, pad=1, dil=1, padded=True), id="10-filters-nan-padding"),
]


@pytest.mark.parametrize("case", DW_ROWS)
def test_dw_row_tiled(case, monkeypatch):
    k_read = _launch_kwargs(monkeypatch, kconv._conv_bwd_weight_rows_kernel, "K_READ")
    n, c, h, w, k = case["n"], case["c"], case["h"], case["w"], case["k"]
    dil, groups = case["dil"], case.get("groups", 1)
    pad = case["pad"] if isinstance(case["pad"], tuple) else (case["pad"],) * 4
    stride = case.get("stride", 1)
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    r, s_ = case["r"], case["s"]
    p = (h + pad[0] + pad[1] - dil * (r - 1) - 1) // stride[0] + 1
    q = (w + pad[2] + pad[3] - dil * (s_ - 1) - 1) // stride[1] + 1
    if case.get("slice"):  # X and dY are channel slices of wider NHWC buffers
        x = torch.randn(n, c + 8, h, w, device=DEVICE).to(memory_format=torch.channels_last)[:, 3 : 3 + c]
        dy = torch.randn(n, k + 5, p, q, device=DEVICE).to(memory_format=torch.channels_last)[:, 5:]
    elif case.get("padded"):
        x = torch.randn(n, c, h, w, device=DEVICE).to(memory_format=torch.channels_last)
        dy = poison_(torch.empty(n, 16, p, q, device=DEVICE).to(memory_format=torch.channels_last))[:, :k]
        dy.copy_(torch.randn(n, k, p, q, device=DEVICE))
    else:
        x = torch.randn(n, c, h, w, device=DEVICE).to(memory_format=torch.channels_last)
        dy = torch.randn(n, k, p, q, device=DEVICE).to(memory_format=torch.channels_last)
    wt = torch.randn(k, c // groups, r, s_, device=DEVICE)
    assert kconv._dw_rows_apply(x, dy, stride, c // groups < kconv.FLAT_BELOW, groups)
    assert not kconv._pixel_linear(x.contiguous())  # NCHW: channels strided, the generic dW
    geometry = (stride, pad, (dil, dil), groups)
    for dtype in (torch.float32, torch.bfloat16):
        xd, dyd = x.to(dtype), dy.to(dtype)
        if case.get("padded"):  # .to() of the view drops the padding
            dyd = poison_(torch.empty(n, 16, p, q, device=DEVICE, dtype=dtype).to(memory_format=torch.channels_last))
            dyd = dyd[:, :k].copy_(dy)
        dw, db = kconv.conv2d_backward_weight(xd, dyd, None, wt.to(dtype), *geometry, "none", True)
        xr = F.pad(xd.double(), (pad[2], pad[3], pad[0], pad[1])).requires_grad_()
        wr = wt.to(dtype).double().requires_grad_()
        br = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        F.conv2d(xr, wr, br, stride=stride, dilation=dil, groups=groups).backward(dyd.double())
        assert_close(dw, wr.grad, dtype, name="grad_weight")
        assert_close(db, br.grad, dtype, name="grad_bias")
    assert k_read == [16 if case.get("padded") else 0] * 2


def _launch_kwargs(monkeypatch, kernel, key: str) -> list:
    """A list that receives keyword ``key`` of every launch of ``kernel`` from now on."""
    seen = []
    launch = kconv.launch

    def spy(launched, grid, *args, **kwargs):
        if launched is kernel:
            seen.append(kwargs[key])
        return launch(launched, grid, *args, **kwargs)

    monkeypatch.setattr(kconv, "launch", spy)
    return seen


# Span form of the generic dW (1- to 7-channel layers: channels not whole 16-byte vectors): whole
# output rows per step (several rows, one row), rows wider than the step in segments (the last
# one shorter), strides and dilations that differ per axis, asymmetric padding, an even kernel,
# 'valid' padding; several splits in most.
DW_SPAN = [
    pytest.param(dict(n=4, c=1, h=12, w=12, k=8, r=3, s=3, stride=(1, 1), pad=(1, 1, 1, 1)), id="3x3-C1-rows"),
    pytest.param(dict(n=3, c=3, h=21, w=19, k=10, r=7, s=7, stride=(2, 2), pad=(3, 3, 3, 3)), id="7x7s2-C3-one-row"),
    pytest.param(dict(n=5, c=1, h=39, w=39, k=8, r=11, s=11, stride=(4, 4), pad=(1, 1, 1, 1)), id="11x11s4-C1-span16"),
    pytest.param(dict(n=2, c=1, h=5, w=150, k=8, r=3, s=3, stride=(1, 1), pad=(1, 1, 1, 1)), id="segments-w150"),
    pytest.param(
        dict(n=2, c=3, h=7, w=140, k=6, r=3, s=5, stride=(2, 1), pad=(1, 1, 2, 2), dil=(2, 1)), id="segments-dilated-h"
    ),
    pytest.param(dict(n=3, c=2, h=10, w=9, k=5, r=4, s=2, stride=(1, 2), pad=(1, 2, 0, 1)), id="even-kernel-asym-pad"),
    pytest.param(dict(n=6, c=5, h=8, w=7, k=40, r=3, s=3, stride=(1, 1), pad=(0, 0, 0, 0)), id="valid-C5-K40"),
]


@pytest.mark.parametrize("case", DW_SPAN)
def test_dw_span_form(case, monkeypatch):
    """Span form: dW against float64 torch, the same bits on a second run, every tile counter back
    at 0; the span form is the one launched."""
    n, c, h, w, k, r, s = (case[key] for key in "n c h w k r s".split())
    stride, pad, dil = case["stride"], case["pad"], case.get("dil", (1, 1))
    x = torch.randn(n, c, h, w, device=DEVICE)
    wt = torch.randn(k, c, r, s, device=DEVICE)
    xpad = F.pad(x, (pad[2], pad[3], pad[0], pad[1]))
    p = kconv.conv_output_size(h, r, stride[0], pad[0] + pad[1], dil[0])
    q = kconv.conv_output_size(w, s, stride[1], pad[2] + pad[3], dil[1])
    dy = torch.randn(n, k, p, q, device=DEVICE).to(memory_format=torch.channels_last)
    assert kconv._dw_span_apply(x, dy, stride, dil, 1, c < kconv.FLAT_BELOW)
    assert not kconv._dw_span_apply(x, dy.contiguous(), stride, dil, 1, True)  # NCHW dY: the flat form
    spans = _launch_kwargs(monkeypatch, kconv._conv_bwd_weight_kernel, "SPAN")
    for dtype in (torch.float32, torch.bfloat16):
        xd, dyd, wd = x.to(dtype), dy.to(dtype), wt.to(dtype)
        runs = [
            kconv.conv2d_backward_weight(xd, dyd, None, wd, stride, pad, dil, 1, "none", False)[0] for _ in range(2)
        ]
        assert torch.equal(runs[0], runs[1])
        assert all(int(buf.abs().sum()) == 0 for buf in kconv._COUNTERS.values())
        wr = wd.double().requires_grad_()
        F.conv2d(xpad.to(dtype).double(), wr, stride=stride, dilation=dil).backward(dyd.double())
        assert_close(runs[0], wr.grad, dtype, name="grad_weight")
    assert spans == [True] * 4


def test_dw_span_through_autograd_with_relu(monkeypatch):
    """CF.conv2d_relu on a 1-channel NCHW input (a first layer): dW takes the span form on the
    masked dY' (channels_last), and every gradient matches torch."""
    spans = _launch_kwargs(monkeypatch, kconv._conv_bwd_weight_kernel, "SPAN")
    x = torch.randn(3, 1, 23, 21, device=DEVICE)
    w = torch.randn(12, 1, 7, 7, device=DEVICE) / 7
    b = torch.randn(12, device=DEVICE)
    _, grads, dy = forward_backward(lambda x_, w_, b_: CF.conv2d_relu(x_, w_, b_, stride=2, padding=3), (x, w, b))
    assert spans == [True]
    leaves = [t.double().requires_grad_(True) for t in (x, w, b)]
    conv2d_ref(*leaves, stride=2, padding=3, dilation=1, groups=1, relu=True).backward(dy.double())
    for name, got, leaf in zip(("grad_input", "grad_weight", "grad_bias"), grads, leaves):
        assert_close(got, leaf.grad, torch.float32, name=name)


# Span form of the forward (first layers: one group, channels not whole 16-byte vectors, dilation
# 1 along W): filter rows of 16, 8, 32 and 64 elements; a last step past the filter's rows
# (masked), more filters than one tile, strides and a dilation that differ per axis, asymmetric
# padding, an even kernel; an inf and a NaN in the input, which must poison exactly the windows
# that read them (the span's zero tail and the masked rows must not turn them into NaN elsewhere).
FWD_SPAN = [
    pytest.param(dict(n=2, c=1, h=39, w=37, k=8, r=11, s=11, stride=(4, 4), pad=(1, 1, 1, 1)), id="11x11s4-C1-T16"),
    pytest.param(dict(n=2, c=1, h=12, w=11, k=70, r=3, s=3, stride=(1, 1), pad=(1, 1, 1, 1)), id="3x3-C1-T8-K70"),
    pytest.param(dict(n=1, c=3, h=30, w=29, k=8, r=11, s=11, stride=(4, 4), pad=(2, 2, 2, 2)), id="11x11s4-C3-T64"),
    pytest.param(dict(n=2, c=3, h=15, w=14, k=6, r=7, s=7, stride=(2, 2), pad=(3, 3, 3, 3)), id="7x7s2-C3-T32"),
    pytest.param(
        dict(n=2, c=2, h=14, w=13, k=5, r=4, s=2, stride=(2, 1), pad=(0, 2, 1, 0), dil=(2, 1)), id="asym-dilated-h"
    ),
]


@pytest.mark.parametrize("case", FWD_SPAN)
def test_forward_span_form(case, monkeypatch):
    """Span form of the forward, with bias and ReLU, in fp32 and bf16 on NCHW input, against
    float64 torch; the span form is the one launched."""
    n, c, h, w, k, r, s = (case[key] for key in "n c h w k r s".split())
    stride, pad, dil = case["stride"], case["pad"], case.get("dil", (1, 1))
    x = torch.randn(n, c, h, w, device=DEVICE)
    x[0, 0, h // 2, w // 3] = float("inf")
    x[-1, -1, h - 2, w - 1] = float("nan")
    wt = torch.randn(k, c, r, s, device=DEVICE) / (c * r * s) ** 0.5
    b = torch.randn(k, device=DEVICE)
    spans = _launch_kwargs(monkeypatch, kconv._conv_fwd_kernel, "SPAN")
    for dtype in (torch.float32, torch.bfloat16):
        xd, wd, bd = x.to(dtype), wt.to(dtype), b.to(dtype)
        assert kconv.fwd_span_width(xd, wd, dil, 1) == max(8, triton.next_power_of_2(s * c))
        y = kconv.conv2d_forward(xd, wd, bd, stride, pad, dil, 1, "relu")
        xpad = F.pad(xd.double(), (pad[2], pad[3], pad[0], pad[1]))
        ref = F.relu(F.conv2d(xpad, wd.double(), bd.double(), stride=stride, dilation=dil))
        assert torch.isnan(ref).any() and torch.isfinite(ref).any()
        assert_close(y, ref, dtype)
    assert spans == [True, True]


def test_forward_span_form_applies_to_first_layers_only():
    """The span form takes one-group layers whose channels are not whole 16-byte vectors, with
    dilation 1 along W and at most 64 elements per filter row; the rest keep the other forms."""
    x = torch.empty(1, 3, 8, 8, dtype=torch.bfloat16)
    w = torch.empty(4, 3, 3, 3, dtype=torch.bfloat16)
    assert kconv.fwd_span_width(x, w, (1, 1), 1) == 16
    assert kconv.fwd_span_width(x, w, (2, 1), 1) == 16  # dilation along H: rows apart
    assert kconv.fwd_span_width(x, w, (1, 2), 1) == 0  # along W the taps are not one span
    assert kconv.fwd_span_width(x, w, (1, 1), 3) == 0
    x8, w8 = torch.empty(1, 8, 8, 8, dtype=torch.bfloat16), torch.empty(4, 8, 3, 3, dtype=torch.bfloat16)
    assert kconv.fwd_span_width(x8, w8, (1, 1), 1) == 0  # 16-byte pixels: the flattened form loads vectors
    assert kconv.fwd_span_width(x8.float(), w8.float(), (1, 1), 1) == 0
    wide = torch.empty(4, 3, 3, 22, dtype=torch.bfloat16)  # 66 elements per filter row
    assert kconv.fwd_span_width(x, wide, (1, 1), 1) == 0


@pytest.mark.parametrize("groups", [1, 2])
def test_forward_split_reduction(groups, monkeypatch):
    """A small-M layer with a long reduction (few tiles: ``fwd_splits``) splits the forward's
    steps over programs: against float64 torch in fp32 and bf16, the same bits on a second run,
    every tile counter back at 0, NaN and inf where torch has them; also replayed by the eager
    fast path (whose plan looks the counters up instead of allocating them)."""
    c, k = 130 * groups, 70 * groups
    x = torch.randn(2, c, 5, 6, device=DEVICE)
    x[0, 3, 2, 2] = float("inf")
    x[1, -1, 0, 5] = float("nan")
    wt = torch.randn(k, c // groups, 3, 3, device=DEVICE) / (c * 9 / groups) ** 0.5
    b = torch.randn(k, device=DEVICE)
    steps = 9 * triton.cdiv(c // groups, 64)
    assert kconv.fwd_splits(60, k // groups, groups, steps) > 1
    splits = _launch_kwargs(monkeypatch, kconv._conv_fwd_kernel, "SPLITS")
    for dtype in (torch.float32, torch.bfloat16):
        xd, wd, bd = x.to(dtype), wt.to(dtype), b.to(dtype)
        runs = [kconv.conv2d_forward(xd, wd, bd, (1, 1), (1, 1, 1, 1), (1, 1), groups, "relu") for _ in range(2)]
        assert torch.equal(runs[0].nan_to_num(), runs[1].nan_to_num())
        assert all(int(buf.abs().sum()) == 0 for buf in kconv._COUNTERS.values())
        ref = F.relu(F.conv2d(xd.double(), wd.double(), bd.double(), padding=1, groups=groups))
        assert torch.isnan(ref).any() and torch.isinf(ref).any()
        assert_close(runs[0], ref, dtype)
    assert len(splits) == 4 and min(splits) > 1
    for _ in range(3):  # the first call records the plan, the next ones replay it
        xi = torch.randn(2, c, 5, 6, device=DEVICE)
        y = CF.conv2d_relu(xi, wt, b, padding=1, groups=groups)
        assert_close(y, F.relu(F.conv2d(xi.double(), wt.double(), b.double(), padding=1, groups=groups)), torch.float32)
    assert all(int(buf.abs().sum()) == 0 for buf in kconv._COUNTERS.values())
    plans = [getattr(v, "launches", None) for v in fast._PLANS.values()]
    assert any(p is not None and p.state for p in plans), "the plan must look the counters up"


def test_dw_row_tiled_through_autograd_with_relu(monkeypatch):
    """CF.conv2d_relu on an NHWC input: dW takes the row-tiled kernel on the masked dY'."""
    launched = []

    def spy(kernel, grid, *args, **kwargs):
        launched.append(kernel)
        return launch(kernel, grid, *args, **kwargs)

    launch = kconv.launch
    monkeypatch.setattr(kconv, "launch", spy)
    x = torch.randn(3, 40, 6, 7, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(36, 40, 3, 3, device=DEVICE) / 60
    b = torch.randn(36, device=DEVICE)
    out, grads, dy = forward_backward(lambda x_, w_, b_: CF.conv2d_relu(x_, w_, b_, padding=1), (x, w, b))
    assert kconv._conv_bwd_weight_rows_kernel in launched
    leaves = [t.double().requires_grad_(True) for t in (x, w, b)]
    conv2d_ref(*leaves, stride=1, padding=1, dilation=1, groups=1, relu=True).backward(dy.double())
    for name, got, leaf in zip(("grad_input", "grad_weight", "grad_bias"), grads, leaves):
        assert_close(got, leaf.grad, torch.float32, name=name)


@pytest.mark.parametrize("form", ["row-tiled", "generic", "1x1"])
def test_dw_splits_summed_in_kernel(form, monkeypatch):
    """Several dW splits: the last program of each tile sums the partials (no reduce launch), the
    result is the same bits run to run, and every tile counter is back at 0 afterwards."""
    from cnnkernels.kernels import conv1x1 as kconv1x1

    launched = []
    launch = kconv.launch

    def spy(kernel, grid, *args, **kwargs):
        launched.append(kernel)
        return launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(kconv, "launch", spy)
    monkeypatch.setattr(kconv1x1, "launch", spy)
    r = 1 if form == "1x1" else 3
    x = torch.randn(7, 40, 9, 10, device=DEVICE)
    if form != "generic":
        x = x.to(memory_format=torch.channels_last)
    dy = torch.randn(7, 36, 9, 10, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(36, 40, r, r, device=DEVICE)
    pad = r // 2
    assert 7 * 9 * 10 > 2 * kconv._dw_chunk(7 * 90, 1)  # three or more splits
    if form == "1x1":
        runs = [kconv1x1.conv1x1_backward_weight(x, dy, None, w, "none", False)[0] for _ in range(2)]
        want = kconv1x1._conv1x1_bwd_weight_kernel
    else:
        geometry = ((1, 1), (pad,) * 4, (1, 1), 1)
        runs = [kconv.conv2d_backward_weight(x, dy, None, w, *geometry, "none", False)[0] for _ in range(2)]
        want = kconv._conv_bwd_weight_rows_kernel if form == "row-tiled" else kconv._conv_bwd_weight_kernel
    assert launched == [want, want]
    assert torch.equal(runs[0], runs[1])
    assert all(int(buf.abs().sum()) == 0 for buf in kconv._COUNTERS.values())
    wr = w.double().requires_grad_()
    F.conv2d(x.double(), wr, padding=pad).backward(dy.double())
    assert_close(runs[0], wr.grad, torch.float32, name="grad_weight")


def test_autocast_casts_like_nn_conv2d():
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    dtype = torch.bfloat16 if DEVICE == "cpu" else torch.float16
    with torch.autocast(DEVICE, dtype=dtype):
        ours = CF.conv2d(x, w)
        theirs = F.conv2d(x, w)
    assert ours.dtype == theirs.dtype == dtype
    assert_close(ours, F.conv2d(x.double(), w.double()), dtype)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 9),
    k=st.integers(1, 9),
    h=st.integers(1, 11),
    w=st.integers(1, 11),
    r=st.integers(1, 4),
    s=st.integers(1, 4),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    dil=st.integers(1, 2),
    groups=st.sampled_from([1, 2, 3]),
    relu=st.booleans(),
)
def test_conv_property(n, c, k, h, w, r, s, stride, pad, dil, groups, relu):
    c, k = c * groups, k * groups
    if h + 2 * pad < dil * (r - 1) + 1 or w + 2 * pad < dil * (s - 1) + 1:
        with pytest.raises(ValueError, match="larger than the padded input"):
            CF.conv2d(
                torch.randn(n, c, h, w), torch.randn(k, c // groups, r, s), padding=pad, dilation=dil, groups=groups
            )
        return
    case = dict(n=n, c=c, h=h, w=w, k=k, r=r, s=s, stride=stride, padding=pad, dilation=dil, groups=groups)
    _check(case, torch.float32, relu)


# ---------------------------------------------------------------------------------------------
# Errors: raised before any kernel runs, naming the argument.
# ---------------------------------------------------------------------------------------------

X = torch.randn(1, 4, 8, 8)
W = torch.randn(6, 4, 3, 3)
BAD = [
    pytest.param(dict(input=torch.randn(4, 8)), ValueError, "input must be 3-D or 4-D", id="rank"),
    pytest.param(dict(weight=torch.randn(6, 4, 3)), ValueError, "weight must be 4-D", id="weight-rank"),
    pytest.param(dict(input=X.long()), TypeError, "input must be float", id="int-input"),
    pytest.param(dict(weight=W.double()), TypeError, "weight dtype", id="mixed-dtype"),
    pytest.param(dict(weight=torch.randn(6, 3, 3, 3)), ValueError, "input has 4 channels", id="channels"),
    pytest.param(dict(groups=3), ValueError, "groups=3 does not divide", id="groups"),
    pytest.param(dict(groups=0), ValueError, "groups must be a positive int", id="groups-zero"),
    pytest.param(dict(padding=-1), ValueError, "padding must be non-negative", id="neg-padding"),
    pytest.param(dict(padding="full"), ValueError, "padding must be", id="bad-padding-str"),
    pytest.param(dict(padding="same", stride=2), ValueError, "'same' is not supported for strided", id="same-strided"),
    pytest.param(dict(stride=0), ValueError, "stride must be positive", id="zero-stride"),
    pytest.param(dict(dilation=0), ValueError, "dilation must be positive", id="zero-dilation"),
    pytest.param(
        dict(weight=torch.randn(6, 4, 11, 11)), ValueError, "larger than the padded input", id="kernel-too-big"
    ),
    pytest.param(dict(bias=torch.randn(5)), ValueError, "bias has 5 elements", id="bias-size"),
    pytest.param(dict(bias=torch.randn(6, dtype=torch.float64)), TypeError, "bias dtype", id="bias-dtype"),
    pytest.param(dict(stride=(1, 2, 3)), TypeError, "stride must be an int or a pair", id="stride-triple"),
]


@pytest.mark.parametrize("override, exc, match", BAD)
def test_bad_arguments(override, exc, match):
    kw = dict(input=X.clone(), weight=W.clone(), bias=None, stride=1, padding=1, dilation=1, groups=1)
    kw.update(override)
    before = {k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(exc, match=match):
        CF.conv2d(**kw)
    for k, v in before.items():
        assert torch.equal(kw[k], v)


def test_mixed_devices_error():
    meta = torch.empty(6, 4, 3, 3, device="meta")
    with pytest.raises(ValueError, match="weight is on meta"):
        CF.conv2d(X, meta)


def test_cpu_tensor_without_interpreter_is_an_error():
    code = (
        "import torch, cnnkernels.functional as CF\n"
        "try:\n    CF.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))\n"
        "except RuntimeError as e:\n    print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300).stdout
    assert "ERR" in out and "TRITON_INTERPRET=1" in out and "CUDA device" in out


# ---------------------------------------------------------------------------------------------
# Modules and op registration.
# ---------------------------------------------------------------------------------------------


def test_modules_match_torch_state_dict_and_output():
    ref = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    ours = cnn.Conv2dReLU(3, 5, 3, stride=2, padding=1)
    assert isinstance(ours, torch.nn.Conv2d)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 9, 9)
    assert_close(ours(x), F.relu(ref.double()(x.double())), torch.float32)
    lazy = cnn.LazyConv2d(5, 3, padding=1)
    y = lazy(x)
    assert type(lazy) is cnn.Conv2d and lazy.in_channels == 3 and y.shape == (2, 5, 9, 9)
    with pytest.raises(ValueError, match="padding_mode"):
        cnn.Conv2d(3, 5, 3, padding_mode="reflect")


def test_opcheck():
    x = torch.randn(2, 3, 7, 7)
    w = torch.randn(4, 3, 3, 3)
    b = torch.randn(4)
    args = (x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, "relu", False)
    # test_aot_dispatch_dynamic compiles, which needs a GPU (see test_gpu.py).
    for util in ("test_schema", "test_autograd_registration", "test_faketensor"):
        torch.library.opcheck(torch.ops.cnnkernels.conv2d.default, args, test_utils=util)


@pytest.mark.parametrize("k", [6, 40], ids=["flat-dX", "tapwise-dX"])
@pytest.mark.parametrize("r", [3, 1], ids=["3x3", "1x1"])
def test_relu_nan_propagates_like_torch(r, k):
    """NaN stays NaN through the fused ReLU, and the backward lets dY through where Y is NaN
    (torch's threshold_backward), so every NaN pattern equals torch's."""
    x = torch.randn(1, 3, 6, 6, device=DEVICE)
    x[0, 1, 2, 3] = float("nan")
    w = torch.randn(k, 3, r, r, device=DEVICE)
    b = torch.randn(k, device=DEVICE)
    pad = r // 2
    out, grads, dy = forward_backward(lambda a, c, d: CF.conv2d_relu(a, c, d, padding=pad), (x, w, b))
    ref, ref_grads, _ = forward_backward(lambda a, c, d: F.relu(F.conv2d(a, c, d, padding=pad)), (x, w, b))
    assert torch.isnan(out).any()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    for got, want in zip(grads, ref_grads):
        assert torch.equal(torch.isnan(got), torch.isnan(want))


def test_zero_channels_is_an_error():
    with pytest.raises(ValueError, match="channels must be positive"):
        CF.conv2d(torch.randn(2, 0, 5, 5), torch.randn(3, 0, 3, 3))


@pytest.mark.parametrize("r", [3, 1], ids=["3x3", "1x1"])
def test_output_memory_format_follows_torch(r):
    """channels_last output when the input or the weight is channels_last, as torch decides."""
    x = torch.randn(2, 4, 6, 6, device=DEVICE)
    w = torch.randn(5, 4, r, r, device=DEVICE)
    for xin, win in (
        (x, w),
        (x.to(memory_format=torch.channels_last), w),
        (x, w.to(memory_format=torch.channels_last)),
    ):
        ours, theirs = CF.conv2d(xin, win), F.conv2d(xin, win)
        fmt = (
            torch.channels_last
            if theirs.is_contiguous(memory_format=torch.channels_last) and not theirs.is_contiguous()
            else None
        )
        if fmt is not None:
            assert ours.is_contiguous(memory_format=torch.channels_last)
        else:
            assert ours.is_contiguous()
