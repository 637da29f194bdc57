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
