"""Second-order gradients: every op's backward is itself differentiable (``create_graph=True``),
checked by float64 ``gradcheck``/``gradgradcheck`` under the interpreter and by a gradient
penalty against torch's own ops. Shapes are tiny: the numerical Jacobians run the kernels once
per input element."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import cnnkernels.functional as CF
import cnnkernels.nn as cnn

from conftest import DEVICE

D = torch.float64


def _t(*shape):
    return torch.randn(*shape, dtype=D, device=DEVICE, requires_grad=True)


def _conv_case(relu, stride=1, padding=1, dilation=1, groups=1, r=3):
    fn = CF.conv2d_relu if relu else CF.conv2d
    x, w, b = _t(1, 2, 5, 4), _t(2, 2 // groups, r, r), _t(2)
    return (lambda x, w, b: fn(x, w, b, stride, padding, dilation, groups)), (x, w, b)


CASES = {
    "conv2d-3x3-stride2": lambda: _conv_case(False, stride=2),
    "conv2d_relu-3x3": lambda: _conv_case(True),
    "conv2d-dilated-groups": lambda: _conv_case(False, padding=2, dilation=2, groups=2),
    "conv2d_relu-1x1": lambda: _conv_case(True, padding=0, r=1),
    "max_pool2d": lambda: ((lambda x: CF.max_pool2d(x, 3, 2, 1, ceil_mode=True)), (_t(1, 2, 5, 6),)),
    "adaptive_avg_pool2d": lambda: ((lambda x: CF.adaptive_avg_pool2d(x, (2, 3))), (_t(1, 2, 5, 5),)),
    "global_avg_pool2d": lambda: ((lambda x: CF.adaptive_avg_pool2d(x, 1)), (_t(2, 3, 3, 2),)),
    "cat": lambda: ((lambda a, b: CF.cat([a, b], 1)), (_t(1, 2, 3, 3), _t(1, 1, 3, 3))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck_and_gradgradcheck(name):
    fn, inputs = CASES[name]()
    assert gradcheck(fn, inputs, fast_mode=True)
    assert gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv2d_relu-3x3", "conv2d-3x3-stride2", "max_pool2d"])
def test_gradgradcheck_full_jacobian(name):
    fn, inputs = CASES[name]()
    assert gradgradcheck(fn, inputs)


def _inception_fn():
    block = cnn.Inception(1, (1, 1), (1, 1), 1).to(D)
    x = _t(1, 2, 3, 3)
    block(x)  # materialise the lazy convs
    names = sorted(n for n, _ in block.named_parameters())
    params = [dict(block.named_parameters())[n].detach().clone().requires_grad_() for n in names]

    def fn(x, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x,))

    return block, fn, (x, *params)


@pytest.mark.slow
def test_inception_gradgradcheck():
    _, fn, inputs = _inception_fn()
    assert gradcheck(fn, inputs, fast_mode=True)
    assert gradgradcheck(fn, inputs, fast_mode=True)


def test_inception_gradient_penalty_matches_reference_block():
    from cnnkernels.models import reference

    block, fn, (x, *params) = _inception_fn()
    ref = reference.Inception(1, (1, 1), (1, 1), 1).to(D)
    ref(x)
    ref.load_state_dict(block.state_dict())
    results = []
    for module in (block, ref):
        xx = x.detach().clone().requires_grad_()
        y = module(xx)
        (gx,) = torch.autograd.grad(y.sum(), xx, create_graph=True)
        loss = (y * y).sum() + gx.pow(2).sum()
        ps = [p for _, p in sorted(module.named_parameters())]
        results.append(torch.autograd.grad(loss, (xx, *ps)))
    for g, r in zip(*results):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


def _penalty_grads(conv, pool, x, w, b):
    """A gradient penalty (WGAN-GP / R1 style): L = sum(y) + ||dL0/dx||^2, where L0 = sum(y)."""
    y = pool(conv(x, w, b))
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    loss = y.sum() + gx.pow(2).sum()
    return torch.autograd.grad(loss, (x, w, b))


@pytest.mark.parametrize(
    "ours, theirs, r",
    [
        pytest.param(
            (lambda x, w, b: CF.conv2d_relu(x, w, b, padding=1), lambda y: y),
            (lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)), lambda y: y),
            3,
            id="conv2d_relu",
        ),
        pytest.param(
            (lambda x, w, b: CF.conv2d(x, w, b, stride=2), lambda y: CF.max_pool2d(y, 2)),
            (lambda x, w, b: F.conv2d(x, w, b, stride=2), lambda y: F.max_pool2d(y, 2)),
            3,
            id="conv2d-max_pool2d",
        ),
        pytest.param(
            (lambda x, w, b: CF.conv2d_relu(x, w, b), lambda y: CF.adaptive_avg_pool2d(y, 2) ** 2),
            (lambda x, w, b: F.relu(F.conv2d(x, w, b)), lambda y: F.adaptive_avg_pool2d(y, 2) ** 2),
            1,
            id="1x1-adaptive_avg_pool2d",
        ),
    ],
)
def test_gradient_penalty_matches_torch(ours, theirs, r):
    x = torch.randn(2, 3, 7, 7, dtype=D, device=DEVICE)
    w = torch.randn(4, 3, r, r, dtype=D, device=DEVICE)
    b = torch.randn(4, dtype=D, device=DEVICE)
    got = _penalty_grads(*ours, *(t.clone().requires_grad_() for t in (x, w, b)))
    want = _penalty_grads(*theirs, *(t.clone().requires_grad_() for t in (x, w, b)))
    for g, ref in zip(got, want):
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-9)
    # The second-order term is not negligible: the first-order gradient alone differs.
    w_first = w.clone().requires_grad_()
    y = theirs[1](theirs[0](x, w_first, b))
    (first,) = torch.autograd.grad(y.sum(), w_first)
    assert not torch.allclose(first, want[1])


def test_third_order_conv():
    """The backward's backward is itself differentiable (the op family is closed)."""
    x, w = _t(1, 1, 4, 4), _t(1, 1, 3, 3)
    for fn, ref in ((CF.conv2d, F.conv2d),):
        outs = []
        for f in (fn, ref):
            y = f(x, w, padding=1)
            (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
            (gw,) = torch.autograd.grad(gx.pow(2).sum(), w, create_graph=True)
            (gxx,) = torch.autograd.grad(gw.pow(2).sum(), x)
            outs.append(gxx)
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-9)
