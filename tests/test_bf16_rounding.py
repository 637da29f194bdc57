"""Under the interpreter every kernel's bf16 output rounds to nearest even, as a GPU's cast does
(the interpreter's own cast truncates)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import cnnkernels.functional as CF
from cnnkernels.kernels._common import to_dtype

from conftest import DEVICE


@triton.jit
def _cast_kernel(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(y_ptr + offs, to_dtype(tl.load(x_ptr + offs), y_ptr.dtype.element_ty))


def test_to_dtype_matches_torch_round_to_nearest_even():
    x = torch.randn(4096, device=DEVICE) * 10
    x[:8] = torch.tensor([float("nan"), float("inf"), float("-inf"), 3.4e38, 0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8])
    y = torch.empty(4096, dtype=torch.bfloat16, device=DEVICE)
    _cast_kernel[(1,)](x, y, N=4096)
    ref = x.to(torch.bfloat16)
    same = (y == ref) | (y.isnan() & ref.isnan())
    assert same.all(), f"{int((~same).sum())} of 4096 differ"
    assert torch.equal(torch.signbit(y[4:6]), torch.signbit(ref[4:6]))


def test_conv_bf16_output_is_torch_rounding_of_the_fp32_result():
    """A 1x1 conv whose fp32 result is exact: the bf16 output must be its nearest-even rounding,
    which truncation misses for about half the elements."""
    x = torch.randint(-8, 8, (2, 16, 5, 5), device=DEVICE).to(torch.bfloat16)
    w = torch.randint(-8, 8, (24, 16, 1, 1), device=DEVICE).to(torch.bfloat16) / 64 + 1 / 1024
    w = w.to(torch.bfloat16)
    exact = torch.nn.functional.conv2d(x.double(), w.double())
    got = CF.conv2d(x, w)
    assert torch.equal(got, exact.to(torch.bfloat16))
