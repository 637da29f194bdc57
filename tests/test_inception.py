"""Zero-copy Inception block against the seed's torch.nn block, and proof that no
concatenation copy runs."""

from __future__ import annotations

import pytest
import torch

import cnnkernels.nn as cnn
from cnnkernels import inception as inc
from cnnkernels.models.reference import Inception as SeedInception  # the seed's torch.nn block
from cnnkernels.testing import assert_close

from conftest import DEVICE


def _pair(c_in=12, spec=(8, (6, 10), (3, 5), 4), h=7, w=9):
    ref = SeedInception(*spec).to(DEVICE)
    ours = cnn.Inception(*spec).to(DEVICE)
    x = torch.randn(2, c_in, h, w, device=DEVICE)
    ref(x)
    ours._materialize(x)
    ours.load_state_dict(ref.state_dict())
    return ours, ref, x


@pytest.mark.parametrize(
    "spec, c_in, hw",
    [
        pytest.param((8, (6, 10), (3, 5), 4), 12, (7, 9), id="small-odd"),
        pytest.param((16, (12, 20), (4, 8), 8), 24, (5, 5), id="googlenet-like"),
        pytest.param((2, (3, 4), (1, 2), 1), 3, (1, 1), id="1x1-image"),
    ],
)
def test_inception_matches_seed_block(spec, c_in, hw):
    ours, ref, x = _pair(c_in, spec, *hw)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    xa = x.clone().requires_grad_()
    xb = x.double().requires_grad_()
    refd = ref.double()
    y = ours(xa)
    yr = refd(xb)
    g = torch.randn_like(yr)
    y.backward(g.float())
    yr.backward(g)
    assert_close(y, yr, torch.float32)
    assert_close(xa.grad, xb.grad, torch.float32, name="grad_input")
    for (name, p), (_, pr) in zip(ours.named_parameters(), refd.named_parameters()):
        assert_close(p.grad, pr.grad, torch.float32, name=f"grad {name}")


def test_no_concatenation_copy(monkeypatch):
    """Every branch's last conv writes straight into the block's output storage, and neither
    torch.cat nor this library's cat touches an activation."""
    ours, _, x = _pair()
    writes = []
    real_c = inc._kc.conv2d_forward
    real_1 = inc._k1.conv1x1_forward

    def conv(*a, out=None, **kw):
        writes.append(out)
        return real_c(*a, out=out, **kw)

    def conv1(x_, w, b, act, y0, y1=None):
        writes.append(y0)
        return real_1(x_, w, b, act, y0, y1)

    real_p = inc._kcp.max_pool_conv1x1_forward

    def pooled_conv1(x_, w, b, kernel, padding, act, out=None):  # the pool branch: pooled on load
        writes.append(out)
        return real_p(x_, w, b, kernel, padding, act, out)

    monkeypatch.setattr(inc._kc, "conv2d_forward", conv)
    monkeypatch.setattr(inc._k1, "conv1x1_forward", conv1)
    monkeypatch.setattr(inc._kcp, "max_pool_conv1x1_forward", pooled_conv1)
    cat_inputs = []
    real_cat = torch.cat
    monkeypatch.setattr(
        torch, "cat", lambda ts, *a, **kw: cat_inputs.append([t.shape for t in ts]) or real_cat(ts, *a, **kw)
    )
    import cnnkernels.kernels.cat as kcat

    def no_cat(*a, **kw):
        raise AssertionError("the concatenation kernel ran")

    for name in dir(kcat):
        if name.endswith("_forward") or name.endswith("_backward"):
            monkeypatch.setattr(kcat, name, no_cat)
    xa = x.clone().requires_grad_()
    y = ours(xa)
    y.sum().backward()
    assert len(writes) == 4
    storage = y.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == storage for t in writes)
    # Only the tiny per-call stacking of the three 1x1 weights/biases uses torch.cat.
    assert all(shapes[0][-2:] == (1, 1) or len(shapes[0]) == 1 for shapes in cat_inputs)


def test_inception_unbatched_and_channel_error():
    ours, ref, x = _pair()
    out = ours(x[0])
    assert out.shape == (27, 7, 9)
    with pytest.raises(ValueError, match="input has 5 channels"):
        ours(torch.randn(1, 5, 7, 9, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_inception_low_precision(dtype):
    ours, ref, x = _pair()
    y = ours.to(dtype)(x.to(dtype))
    assert y.dtype == dtype
    assert_close(y, ref.double()(x.to(dtype).double()), dtype)


def test_inception_gradcheck_fp64():
    """float64 gradcheck of the block's autograd function: input and every weight and bias."""
    import cnnkernels.functional as CF

    ours, _, _ = _pair(3, (2, (2, 3), (1, 2), 1), 2, 3)
    params = [p.detach().double().requires_grad_() for p in ours.parameters()]
    x = torch.randn(1, 3, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def block(x_, *ps):
        return inc.InceptionFunction.apply(x_, CF.max_pool2d(x_, 3, 1, 1), *ps)

    assert torch.autograd.gradcheck(block, (x, *params), fast_mode=True)


def test_inception_refuses_what_it_would_ignore():
    ours, _, x = _pair()
    ours.b2_2.padding = (0, 0)
    with pytest.raises(ValueError, match="b2_2 must be a 3x3 conv with padding 1"):
        ours(x)
    ours, _, x = _pair()
    ours.b3_1.bias = None
    with pytest.raises(ValueError, match="b3_1 needs a bias"):
        ours(x)
    ours, _, x = _pair()
    ours.b1_1.register_forward_pre_hook(lambda m, a: None)
    with pytest.raises(ValueError, match="b1_1 has forward hooks"):
        ours(x)
    ours, _, x = _pair()
    ours.b4_2 = torch.nn.Conv2d(12, 4, 1)
    with pytest.raises(ValueError, match="b4_2 must stay a cnnkernels Conv2dReLU"):
        ours(x)
    ours, _, x = _pair()
    ours.b4_1 = torch.nn.AvgPool2d(3, 1, 1)
    with pytest.raises(ValueError, match="b4_1 must stay a 3x3 max pool, got AvgPool2d"):
        ours(x)
    ours, _, x = _pair()
    with torch.no_grad():
        ours.b2_2.weight = torch.nn.Parameter(torch.randn(ours.b2_2.out_channels, ours.b2_2.in_channels, 5, 5))
    with pytest.raises(ValueError, match=r"b2_2 has a weight of shape .* the block needs"):
        ours(x)
    ours, _, x = _pair()
    ours.b4_1.register_forward_hook(lambda m, a, o: None)
    with pytest.raises(ValueError, match="b4_1 has forward hooks"):
        ours(x)


def test_relu_keeps_nan_like_torch():
    """A NaN reaching a fused conv+ReLU stays NaN (torch's relu keeps it), in the general conv,
    the 1x1 GEMM and the block."""
    ours, ref, x = _pair()
    x[0, 0, 3, 3] = float("nan")
    y = ours(x)
    yr = ref(x)
    assert torch.equal(torch.isnan(y), torch.isnan(yr))
