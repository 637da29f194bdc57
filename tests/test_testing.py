"""The comparison every test relies on must fail on what it exists to catch."""

from __future__ import annotations

import pytest
import torch

from cnnkernels.testing import assert_close

NAN, INF = float("nan"), float("inf")


def _ref():
    return torch.tensor([1.0, NAN, INF, -INF, 2.0], dtype=torch.float64)


def test_identical_patterns_pass():
    assert_close(_ref().clone(), _ref())


@pytest.mark.parametrize(
    "index, value, match",
    [
        pytest.param(0, NAN, "NaN pattern", id="extra-nan"),
        pytest.param(1, 3.0, "NaN pattern", id="missing-nan"),
        pytest.param(2, -INF, r"\+inf pattern", id="inf-sign"),
        pytest.param(3, 5.0, "-inf pattern", id="missing-neg-inf"),
        pytest.param(4, 2.5, "relative error", id="wrong-finite-next-to-nan"),
    ],
)
def test_every_difference_fails(index, value, match):
    out = _ref().clone()
    out[index] = value
    with pytest.raises(AssertionError, match=match):
        assert_close(out, _ref())


def test_shape_mismatch_fails():
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.zeros(2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))


def test_scale_bounds_a_cancelled_sum_and_nothing_more():
    """``scale``: a sum that cancels to near zero may be off by rounding of its large terms,
    measured against the sum of their magnitudes; an error beyond that still fails."""
    terms = torch.tensor([[1e4, -1e4 + 1e-3]] * 4 + [[100.0, 100.0]] * 124, dtype=torch.float64)
    ref, scale = terms.sum(1), terms.abs().sum(1)
    out = terms.float().sum(1)  # the 1e-3 left of two 1e4 terms in fp32: off by up to 5e-4
    with pytest.raises(AssertionError, match="differs by"):
        assert_close(out, ref, torch.float32)
    assert_close(out, ref, torch.float32, scale=scale)
    bad = out.clone()
    bad[0] += 5.0  # beyond 1e-4 * 2e4 + 1e-5
    with pytest.raises(AssertionError, match="relative error|differs by"):
        assert_close(bad, ref, torch.float32, scale=scale)
