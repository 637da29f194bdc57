"""Edge cases where torch's own test suites probe the functional API: integral argument types,
argument shapes torch refuses, empty inputs torch accepts, and windows with no input pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnkernels.functional as CF

from conftest import DEVICE


def _x(*shape):
    return torch.randn(*shape, device=DEVICE)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        pytest.param(
            lambda x: CF.conv2d(x, torch.ones(4, 1, 3, 3), stride=np.int64(2), groups=np.int64(2)),
            lambda x: F.conv2d(x, torch.ones(4, 1, 3, 3), stride=2, groups=2),
            id="conv2d-numpy-stride-groups",
        ),
        pytest.param(
            lambda x: CF.conv2d(x, torch.ones(3, 2, 3, 3), padding=(np.int32(1), np.int64(0))),
            lambda x: F.conv2d(x, torch.ones(3, 2, 3, 3), padding=(1, 0)),
            id="conv2d-numpy-padding-pair",
        ),
        pytest.param(
            lambda x: CF.max_pool2d(x, np.int64(2)), lambda x: F.max_pool2d(x, 2), id="max_pool2d-numpy-kernel"
        ),
        pytest.param(
            lambda x: CF.max_pool2d(x, torch.tensor(3), torch.tensor(2)),
            lambda x: F.max_pool2d(x, 3, 2),
            id="max_pool2d-0d-tensor-args",
        ),
        pytest.param(lambda x: CF.cat([x, x], np.int64(1)), lambda x: torch.cat([x, x], 1), id="cat-numpy-dim"),
        pytest.param(
            lambda x: CF.adaptive_avg_pool2d(x, np.int64(3)),
            lambda x: F.adaptive_avg_pool2d(x, 3),
            id="adaptive-numpy-size",
        ),
    ],
)
def test_integral_arguments_as_torch_takes_them(ours, theirs):
    x = _x(1, 2, 9, 9)
    torch.testing.assert_close(ours(x), theirs(x.cpu()).to(DEVICE))


@pytest.mark.parametrize("value", [2.0, True, "2", None])
def test_non_integral_arguments_are_refused(value):
    with pytest.raises(TypeError, match="stride"):
        CF.conv2d(_x(1, 2, 5, 5), torch.ones(3, 2, 3, 3), stride=value)


@pytest.mark.parametrize("size", [(5,), [5], (1, 2, 3)])
def test_adaptive_output_size_must_be_an_int_or_a_pair(size):
    x = _x(1, 2, 10, 10)
    with pytest.raises(RuntimeError):
        F.adaptive_avg_pool2d(x.cpu(), size)  # torch refuses it too
    with pytest.raises(TypeError, match="output_size"):
        CF.adaptive_avg_pool2d(x, size)


@pytest.mark.parametrize("shape", [(0, 10, 10), (2, 0, 10, 10), (0, 3, 10, 10)])
@pytest.mark.parametrize("size", [5, 1])
def test_adaptive_avg_pool_of_empty_channels_or_batch_is_empty(shape, size):
    x = _x(*shape).requires_grad_()
    y = CF.adaptive_avg_pool2d(x, size)
    assert y.shape == F.adaptive_avg_pool2d(x.detach().cpu(), size).shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_adaptive_avg_pool_zero_height_is_refused():
    with pytest.raises(ValueError, match="height and width"):
        CF.adaptive_avg_pool2d(_x(1, 3, 0, 4), 2)


def test_max_pool_window_without_input_pixel():
    """Dilation 2, padding 1 on a 1x1 input: the only window's taps both fall in the padding.
    torch returns -inf and an index outside the plane (its CPU backward then writes outside the
    gradient buffer); cnnkernels returns -inf, index -1, and a zero gradient."""
    x = _x(1, 2, 1, 1).requires_grad_()
    y, idx = CF.max_pool2d(x, 2, 1, 1, 2, return_indices=True)
    ref = F.max_pool2d(x.detach().cpu(), 2, 1, 1, 2)
    assert y.shape == ref.shape and torch.equal(y.cpu(), ref)
    assert torch.isinf(y).all() and (y < 0).all()
    assert (idx == -1).all()
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
    assert torch.equal(gx, torch.zeros_like(gx))
