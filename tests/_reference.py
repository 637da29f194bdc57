"""Pure-PyTorch references for the tests: torch.nn.functional in float64 (and torch's own
low-precision result, for the "no worse than twice torch's error" check)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conv2d_ref(x, w, b, stride, padding, dilation, groups, relu):
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    return F.relu(y) if relu else y


def forward_backward(fn, inputs, grad_out_seed=1):
    """Run ``fn(*inputs)``, backprop a fixed random dY; return (output, grads, dY)."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(grad_out_seed)
    dy = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    out.backward(dy)
    return out.detach(), [t.grad if t is not None else None for t in leaves], dy
