"""1x1 convolution on the GEMM path: routing, two-way outputs, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnnkernels.functional as CF
from cnnkernels import conv1x1 as c1
from cnnkernels.kernels import conv1x1 as k1
from cnnkernels.testing import assert_close, poison_

from _reference import forward_backward
from conftest import DEVICE


@pytest.mark.parametrize("relu", [False, True], ids=["conv", "relu"])
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param((2, 20, 5, 7, 30), id="odd"),
        pytest.param((1, 3, 1, 1, 1), id="tiny"),
        pytest.param((3, 130, 4, 4, 70), id="C130"),
        # Partial last blocks along M, C and K at once (dX wraps rows past M and columns past C).
        pytest.param((3, 150, 10, 9, 140), id="tails-M270-C150-K140"),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_conv1x1_matches_torch(shape, relu, channels_last):
    n, c, h, w, k = shape
    x = torch.randn(n, c, h, w, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    wt = torch.randn(k, c, 1, 1, device=DEVICE) / c**0.5
    b = torch.randn(k, device=DEVICE)
    fn = CF.conv2d_relu if relu else CF.conv2d
    out, grads, dy = forward_backward(lambda a, bb, cc: fn(a, bb, cc), (x, wt, b))
    leaves = [t.double().requires_grad_() for t in (x, wt, b)]
    ref = F.conv2d(*leaves)
    ref = F.relu(ref) if relu else ref
    ref.backward(dy.double())
    assert_close(out, ref, torch.float32)
    for name, g, leaf in zip(("grad_input", "grad_weight", "grad_bias"), grads, leaves):
        assert_close(g, leaf.grad, torch.float32, name=name)


def test_routing_picks_the_gemm_path(monkeypatch):
    calls = []
    real = k1.conv1x1_forward
    monkeypatch.setattr(k1, "conv1x1_forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    CF.conv2d_relu(x, torch.randn(6, 4, 1, 1, device=DEVICE), None)
    assert calls == [1]
    CF.conv2d(x, torch.randn(6, 4, 1, 1, device=DEVICE), None, stride=2)  # strided: general kernel
    CF.conv2d(x, torch.randn(6, 2, 1, 1, device=DEVICE), None, groups=2)  # grouped: general kernel
    assert calls == [1]
    assert c1.eligible(torch.empty(2, 2, 1, 1), [1, 1], [0, 0, 0, 0], 1)
    assert not c1.eligible(torch.empty(2, 2, 1, 1), [1, 1], [1, 1, 1, 1], 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
def test_conv1x1_dtypes(dtype):
    x = torch.randn(2, 24, 5, 5, device=DEVICE, dtype=dtype)
    w = torch.randn(16, 24, 1, 1, device=DEVICE, dtype=dtype) / 5
    b = torch.randn(16, device=DEVICE, dtype=dtype)
    out = CF.conv2d_relu(x, w, b)
    assert out.dtype == dtype
    assert_close(out, F.relu(F.conv2d(x.double(), w.double(), b.double())), dtype)


def test_gradcheck_fp64():
    x = torch.randn(1, 5, 3, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 5, 1, 1, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(CF.conv2d_relu, (x, w, b))


def test_two_way_output_writes_only_its_slices():
    """One GEMM over concatenated weights: columns go to a slice of one buffer and to another."""
    x = torch.randn(2, 20, 5, 7, device=DEVICE).to(memory_format=torch.channels_last)
    w = torch.randn(30, 20, 1, 1, device=DEVICE)
    b = torch.randn(30, device=DEVICE)
    out = poison_(torch.empty(2, 40, 5, 7, device=DEVICE).to(memory_format=torch.channels_last))
    scratch = poison_(torch.empty(2, 18, 5, 7, device=DEVICE))
    k1.conv1x1_forward(x, w, b, "relu", out[:, 3:15], scratch)
    ref = F.relu(F.conv2d(x.double(), w.double(), b.double()))
    assert_close(out[:, 3:15], ref[:, :12], torch.float32)
    assert_close(scratch, ref[:, 12:], torch.float32)
    assert torch.isnan(out[:, :3]).all() and torch.isnan(out[:, 15:]).all()


def test_two_way_backward():
    x = torch.randn(2, 20, 5, 7, device=DEVICE)
    w = torch.randn(30, 20, 1, 1, device=DEVICE)
    b = torch.randn(30, device=DEVICE)
    y = F.relu(F.conv2d(x, w, b))
    g = torch.randn(2, 30, 5, 7, device=DEVICE)
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    F.relu(F.conv2d(xr, wr, br)).backward(g.double())
    dx = poison_(torch.empty(2, 20, 5, 7, device=DEVICE))
    k1.conv1x1_backward_input(g[:, :12], y[:, :12], w, dx, "relu", dy1=g[:, 12:], y1=y[:, 12:])
    assert_close(dx, xr.grad, torch.float32, name="grad_input")
    dw, db = k1.conv1x1_backward_weight(x, g[:, :12], y[:, :12], w, "relu", True, dy1=g[:, 12:], y1=y[:, 12:])
    assert_close(dw, wr.grad, torch.float32, name="grad_weight")
    assert_close(db, br.grad, torch.float32, name="grad_bias")


@pytest.mark.parametrize(
    "n, h, w, dy_layout",
    [(1, 19, 17, "nchw"), (1, 19, 17, "nhwc"), (2, 19, 17, "nchw"), (300, 1, 1, "nchw")],
    ids=["batch1-both-nchw", "batch1-x-nchw", "batch2-both-nchw", "1x1-image-nchw"],
)
def test_dw_copies_operands_whose_pixels_are_not_linear(n, h, w, dy_layout, monkeypatch):
    """dW of NCHW operands (batch-1 GoogLeNet's 1x1 inputs): the kernel receives pixel-linear
    copies, and dW, db match torch over several splits, the same bits run to run."""
    from cnnkernels.kernels import conv as kconv

    seen = []
    launch = k1.launch

    def spy(kernel, grid, *args, **kwargs):
        if kernel is k1._conv1x1_bwd_weight_kernel:
            seen.append([kconv._pixel_linear(a) for a in args[:2]])
        return launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(k1, "launch", spy)
    x = torch.randn(n, 40, h, w, device=DEVICE)
    dy = torch.randn(n, 24, h, w, device=DEVICE)
    if dy_layout == "nhwc":
        dy = dy.to(memory_format=torch.channels_last)
    wt = torch.randn(24, 40, 1, 1, device=DEVICE)
    assert n * h * w > kconv._dw_chunk(n * h * w, 1)  # several splits
    runs = [k1.conv1x1_backward_weight(x, dy, None, wt, "none", True) for _ in range(2)]
    assert seen == [[True, True]] * 2
    assert torch.equal(runs[0][0], runs[1][0])
    xr, wr = x.double(), wt.double().requires_grad_()
    br = torch.zeros(24, dtype=torch.float64, requires_grad=True)
    F.conv2d(xr, wr, br).backward(dy.double())
    assert_close(runs[0][0], wr.grad, torch.float32, name="grad_weight")
    assert_close(runs[0][1], br.grad, torch.float32, name="grad_bias")


@pytest.mark.parametrize("padded_dy", [True, False], ids=["dy-padded-nan", "dy-plain"])
def test_dw_of_ten_channels_reads_whole_vectors(padded_dy, monkeypatch):
    """NiN's 10-class 1x1 layer: X (10 channels, 20-byte pixels) is copied into 16-channel pixels
    and read 16 channels a pixel (C_READ); dY' in a 16-channel buffer (the prep pass's) is read
    likewise (K_READ), its padding NaN here, reaching no stored element."""
    seen = []
    launch = k1.launch

    def spy(kernel, grid, *args, **kwargs):
        if kernel is k1._conv1x1_bwd_weight_kernel:
            seen.append((kwargs["K_READ"], kwargs["C_READ"]))
        return launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(k1, "launch", spy)
    x = torch.randn(3, 10, 6, 5, device=DEVICE).to(memory_format=torch.channels_last)
    dy = torch.randn(3, 10, 6, 5, device=DEVICE).to(memory_format=torch.channels_last)
    if padded_dy:
        buf = poison_(torch.empty(3, 16, 6, 5, device=DEVICE).to(memory_format=torch.channels_last))
        dy = buf[:, :10].copy_(dy)
    wt = torch.randn(10, 10, 1, 1, device=DEVICE)
    dw, db = k1.conv1x1_backward_weight(x, dy, None, wt, "none", False)  # dY read as given
    assert db is None and seen == [(16 if padded_dy else 0, 16)]
    wr = wt.double().requires_grad_()
    F.conv2d(x.double(), wr).backward(dy.double())
    assert_close(dw, wr.grad, torch.float32, name="grad_weight")


@pytest.mark.parametrize("layout", ["nchw", "hooked-batch1"], ids=["nchw", "nhwc-batch-stride-c"])
def test_forward_reads_channels_contiguously(layout, monkeypatch):
    """The forward's kernel always receives X with contiguous channels: an NCHW input (what
    torch's layout rule makes of a pooled image under a full backward hook at batch 1) is copied
    channels_last; an NHWC image with an arbitrary batch stride (what the hook hands on) is read
    as it is. The two-way result matches torch either way."""
    seen = []
    launch = k1.launch

    def spy(kernel, grid, *args, **kwargs):
        if kernel is k1._conv1x1_fwd_kernel:
            seen.append(args[0].stride(1))
        return launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(k1, "launch", spy)
    x = torch.randn(1, 24, 7, 5, device=DEVICE)
    if layout == "hooked-batch1":
        x = x.to(memory_format=torch.channels_last).as_strided(x.shape, (24, 1, 5 * 24, 24))
    wt = torch.randn(20, 24, 1, 1, device=DEVICE)
    b = torch.randn(20, device=DEVICE)
    y0 = torch.empty(1, 12, 7, 5, device=DEVICE).to(memory_format=torch.channels_last)
    y1 = torch.empty(1, 8, 7, 5, device=DEVICE).to(memory_format=torch.channels_last)
    k1.conv1x1_forward(x, wt, b, "relu", y0, y1)
    assert seen == [1]
    ref = F.relu(F.conv2d(x.double(), wt.double(), b.double()))
    assert_close(torch.cat((y0, y1), 1), ref, torch.float32)
