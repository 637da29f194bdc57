"""Concatenation: values (bit-exact), memory format and gradients against torch.cat."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnkernels.functional as CF
from cnnkernels.cat import output_memory_format
from cnnkernels.kernels import cat as kcat
from cnnkernels.testing import poison_

from conftest import DEVICE

DTYPES = [
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float64, id="fp64"),
]


def cat_ref(tensors, dim):
    """torch.cat itself: a copy is exact, so results must be bit-equal."""
    return torch.cat(tensors, dim)


def _rand(shape, dtype=torch.float32, channels_last=False):
    t = torch.randn(shape, dtype=dtype, device=DEVICE)
    return t.to(memory_format=torch.channels_last) if channels_last else t


def _check(tensors, dim):
    """Output bit-equal to torch.cat with the same strides; each dX is the matching slice of dY
    and a view of it."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    before = [t.clone() for t in tensors]
    y = CF.cat(leaves, dim)
    ref = cat_ref(tensors, dim)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert torch.equal(y, ref)
    assert y.stride() == ref.stride(), f"strides {y.stride()} != torch.cat's {ref.stride()}"
    dy = torch.randn(y.shape, dtype=torch.float64, device=DEVICE).to(y.dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_grads = torch.autograd.grad(torch.cat(leaves, dim), leaves, dy)
    lo, hi = dy.data_ptr(), dy.data_ptr() + dy.numel() * dy.element_size()
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)
        if g.numel():
            assert lo <= g.data_ptr() < hi, "the gradient is not a view of dY"
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)
    return y


# GoogLeNet's Inception concatenation scaled down (branch widths 3, 5, 2, 7 channels), plus
# other dims, ranks and layouts.
CASES = [
    pytest.param(dict(shapes=[(2, 3, 5, 6), (2, 5, 5, 6), (2, 2, 5, 6), (2, 7, 5, 6)], dim=1), id="inception-nchw"),
    pytest.param(
        dict(shapes=[(2, 3, 5, 6), (2, 5, 5, 6), (2, 2, 5, 6), (2, 7, 5, 6)], dim=1, cl=[1, 1, 1, 1]),
        id="inception-channels-last",
    ),
    pytest.param(dict(shapes=[(2, 3, 5, 6), (2, 4, 5, 6)], dim=1, cl=[1, 0]), id="mixed-formats"),
    pytest.param(dict(shapes=[(1, 3, 5, 6), (3, 3, 5, 6)], dim=0, cl=[1, 1]), id="batch-dim-channels-last"),
    pytest.param(dict(shapes=[(2, 3, 5, 6), (2, 3, 5, 1)], dim=-1), id="negative-dim"),
    pytest.param(dict(shapes=[(2, 3, 4, 6), (2, 3, 9, 6)], dim=2, cl=[1, 1]), id="height-channels-last"),
    pytest.param(dict(shapes=[(7,), (300,), (1,)], dim=0), id="1-d"),
    pytest.param(dict(shapes=[(5, 70), (5, 3)], dim=-1), id="2-d"),
    pytest.param(dict(shapes=[(3, 4, 5), (3, 2, 5)], dim=1), id="3-d"),
    pytest.param(dict(shapes=[(2, 3, 2, 3, 4), (2, 3, 2, 1, 4)], dim=3), id="5-d"),
    pytest.param(dict(shapes=[(2, 3, 5, 6), (2, 0, 5, 6), (2, 1, 5, 6)], dim=1), id="empty-along-dim"),
    pytest.param(dict(shapes=[(2, 67, 9, 9)], dim=1, cl=[1]), id="single-input"),
    pytest.param(dict(shapes=[(2, 130, 7, 7), (2, 67, 7, 7)], dim=1, cl=[1, 1]), id="multi-block-C130"),
]


@pytest.mark.parametrize("case", CASES)
def test_cat_fp32(case):
    cl = case.get("cl", [0] * len(case["shapes"]))
    _check([_rand(s, channels_last=bool(c)) for s, c in zip(case["shapes"], cl)], case["dim"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cat_dtypes_bit_exact(dtype):
    _check([_rand((2, 3, 4, 5), dtype, True), _rand((2, 6, 4, 5), dtype, True)], 1)


def test_cat_channels_last_output_for_channels_last_inputs():
    y = CF.cat([_rand((2, 3, 4, 5), channels_last=True), _rand((2, 6, 4, 5), channels_last=True)], 1)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    y = CF.cat([_rand((2, 3, 4, 5), channels_last=True), _rand((2, 6, 4, 5))], 1)
    assert y.is_contiguous()


def test_cat_strided_views():
    """Transposed, sliced and expanded (stride 0) inputs are read in place."""
    base = torch.randn(4, 9, 6, device=DEVICE)
    views = [base[:, ::2, :].transpose(0, 2), base[:, 1:4].permute(2, 1, 0), torch.randn(6, 1, 1).expand(6, 2, 4)]
    _check(views, 1)


def test_cat_beyond_four_dims_after_merging():
    """Source strides reversed against the destination: nothing merges, 6 dims, split launches."""
    a = torch.randn(2, 3, 2, 3, 2, 3, device=DEVICE).permute(5, 4, 3, 2, 1, 0)
    b = torch.randn(3, 2, 3, 2, 3, 2, device=DEVICE)
    assert len(kcat.copy_dims(a.shape, a.stride(), torch.empty_like(b).stride())) > kcat.MAX_DIMS
    _check([a, b], 2)


def test_copy_dims_merges_layouts():
    x = torch.empty(2, 3, 5, 6).to(memory_format=torch.channels_last)
    y = torch.empty(2, 8, 5, 6).to(memory_format=torch.channels_last)[:, 2:5]
    assert kcat.copy_dims(x.shape, x.stride(), y.stride()) == [(60, 3, 8), (3, 1, 1)]
    x, y = torch.empty(2, 3, 5, 6), torch.empty(2, 8, 5, 6)[:, 2:5]
    assert kcat.copy_dims(x.shape, x.stride(), y.stride()) == [(2, 90, 240), (90, 1, 1)]


def test_cat_legacy_empty_1d_is_skipped():
    x = _rand((2, 3, 4, 5), channels_last=True)
    e = torch.empty(0, device=DEVICE)
    y = CF.cat([x, e, x], 1)
    assert torch.equal(y, torch.cat([x, e, x], 1)) and y.stride() == torch.cat([x, e, x], 1).stride()


def test_cat_copy_writes_only_its_slice():
    """The copy writes exactly its slice of a poisoned buffer."""
    x = _rand((2, 5, 7, 7), channels_last=True)
    buf = poison_(torch.empty(2, 16, 7, 7, device=DEVICE).to(memory_format=torch.channels_last))
    kcat.copy_into(x, buf[:, 4:9])
    assert torch.equal(buf[:, 4:9], x)
    assert torch.isnan(buf[:, :4]).all() and torch.isnan(buf[:, 9:]).all()


def test_cat_every_output_written(monkeypatch):
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison_(real_empty(*a, **k)))
    xs = [_rand((2, c, 5, 6), channels_last=True) for c in (3, 5, 2)]
    assert torch.equal(CF.cat(xs, 1), cat_ref(xs, 1))


def test_cat_output_memory_format_rule():
    cl, nchw = _rand((2, 3, 4, 5), channels_last=True), _rand((2, 3, 4, 5))
    assert output_memory_format([cl, cl]) == torch.channels_last
    assert output_memory_format([cl, nchw]) == torch.contiguous_format
    assert output_memory_format([_rand((3, 4))]) == torch.contiguous_format


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cat_property(data):
    rank = data.draw(st.integers(1, 5), label="rank")
    dim = data.draw(st.integers(-rank, rank - 1), label="dim")
    base = data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank), label="shape")
    count = data.draw(st.integers(1, 4), label="count")
    tensors = []
    for _ in range(count):
        shape = list(base)
        shape[dim] = data.draw(st.integers(0, 5), label="size along dim")
        perm = data.draw(st.permutations(range(rank)), label="memory order")
        t = torch.randn([shape[p] for p in perm], device=DEVICE).permute(*[perm.index(i) for i in range(rank)])
        tensors.append(t)
    _check(tensors, dim)


BAD = [
    pytest.param(dict(tensors=[]), ValueError, "tensors must be a non-empty", id="empty-list"),
    pytest.param(dict(tensors=torch.randn(2, 3)), TypeError, "tensors must be a list or tuple", id="a-tensor"),
    pytest.param(dict(tensors=[torch.randn(2), 3.0]), TypeError, r"tensors\[1\] must be a torch.Tensor", id="float"),
    pytest.param(
        dict(tensors=[torch.randn(2, 3), torch.randn(2, 3, 1)]), ValueError, r"tensors\[1\] has rank 3", id="rank"
    ),
    pytest.param(
        dict(tensors=[torch.randn(2, 3), torch.randn(3, 3)], dim=1), ValueError, r"tensors\[1\] has shape", id="shape"
    ),
    pytest.param(
        dict(tensors=[torch.randn(2, 3), torch.randn(2, 3).double()]), TypeError, r"tensors\[1\] has dtype", id="dtype"
    ),
    pytest.param(dict(tensors=[torch.randn(2, 3).long()]), TypeError, r"tensors\[0\] must be float", id="int"),
    pytest.param(dict(tensors=[torch.randn(2, 3)], dim=2), ValueError, "dim 2 is out of range", id="dim-too-big"),
    pytest.param(dict(tensors=[torch.randn(2, 3)], dim=-3), ValueError, "dim -3 is out of range", id="dim-too-neg"),
    pytest.param(dict(tensors=[torch.randn(2, 3)], dim=1.0), TypeError, "dim must be an int", id="dim-float"),
    pytest.param(dict(tensors=[torch.tensor(1.0)]), ValueError, r"tensors\[0\] is zero-dimensional", id="0-d"),
    pytest.param(
        dict(tensors=[torch.randn(2, 3), torch.empty(2, 3, device="meta")]),
        ValueError,
        r"tensors\[1\] is on meta",
        id="device",
    ),
]


@pytest.mark.parametrize("args, exc, match", BAD)
def test_cat_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        CF.cat(**args)


def test_cat_opcheck():
    args = ([torch.randn(2, 3, 4, 5), torch.randn(2, 1, 4, 5)], 1)
    for util in ("test_schema", "test_autograd_registration", "test_faketensor"):
        torch.library.opcheck(torch.ops.cnnkernels.cat.default, args, test_utils=util)
