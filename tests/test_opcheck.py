"""``torch.library.opcheck`` on every ``cnnkernels::`` op, with inputs that require grad so the
autograd-registration check runs. ``test_aot_dispatch_dynamic`` compiles, which needs a GPU
(``tests/test_gpu.py``)."""

from __future__ import annotations

import pytest
import torch

import cnnkernels.cat  # noqa: F401  (each module registers its ops)
import cnnkernels.conv  # noqa: F401
import cnnkernels.convpool  # noqa: F401
import cnnkernels.inception  # noqa: F401
import cnnkernels.pool  # noqa: F401

from conftest import DEVICE

UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


def _r(*shape, grad=True):
    return torch.randn(*shape, device=DEVICE, dtype=torch.float64, requires_grad=grad)


def _cases():
    x, w, b = _r(2, 3, 7, 7), _r(4, 3, 3, 3), _r(4)
    y = torch.ops.cnnkernels.conv2d(x.detach(), w.detach(), b.detach(), [1, 1], [1, 1, 1, 1], [1, 1], 1, "relu", False)
    w1 = _r(5, 3, 1, 1)
    y1 = torch.ops.cnnkernels.conv1x1(x.detach(), w1.detach(), None, "relu", False)
    _, arg, _ = torch.ops.cnnkernels.max_pool2d(x.detach(), [3, 3], [2, 2], [1, 1], [1, 1], True, True)
    geo = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    c = 2
    inc = [_r(2, 4, 5, 5), None]
    inc[1] = torch.ops.cnnkernels.max_pool2d(inc[0].detach(), [3, 3], [1, 1], [1, 1], [1, 1], False, False)[0]
    inc[1].requires_grad_()
    params = [_r(1, 4, 1, 1), _r(1), _r(2, 4, 1, 1), _r(2), _r(3, 2, 3, 3), _r(3)]
    params += [_r(1, 4, 1, 1), _r(1), _r(2, 1, 5, 5), _r(2), _r(2, 4, 1, 1), _r(2)]
    out, scratch, w_cat = torch.ops.cnnkernels.inception(
        inc[0].detach(), inc[1].detach(), *(p.detach() for p in params)
    )
    return {
        "conv2d": (x, w, b, *geo, "relu", False),
        "conv2d_backward_input": (_r(*y.shape), y, w, [2, 3, 7, 7], *geo, "relu", True),
        "conv2d_backward_prep": (_r(*y.shape), y, "relu", True),
        "conv2d_backward_weight": (x, _r(*y.shape), y, w.detach(), *geo, "relu", True),
        "conv1x1": (x, w1, _r(5), "relu", True),
        "conv1x1_backward_input": (_r(*y1.shape), y1, w1, [2, 3, 7, 7], "relu", False),
        "conv1x1_backward_weight": (x, _r(*y1.shape), y1, w1.detach(), "relu", True),
        "conv2d_relu_max_pool2d": (x, w, b, *geo, [3, 3], [2, 2], [1, 1], [1, 1], True, False, True),
        "max_pool2d": (x, [3, 3], [2, 2], [1, 1], [1, 1], True, True),
        "max_pool2d_backward": (_r(*arg.shape), arg, [2, 3, 7, 7], [3, 3], [2, 2], [1, 1], [1, 1], False),
        "adaptive_avg_pool2d": (x, [3, 4]),
        "adaptive_avg_pool2d_backward": (_r(2, 3, 3, 4), [2, 3, 7, 7], False),
        "global_avg_pool2d": (x,),
        "global_avg_pool2d_backward": (_r(2, 3, 1, 1), [2, 3, 7, 7], True),
        "cat": ([_r(2, 3, 4, 5), _r(2, 1, 4, 5)], 1),
        "inception": (*inc, *params),
        "inception_backward": (
            _r(*out.shape),
            inc[0],
            inc[1],
            out,
            scratch,
            w_cat.requires_grad_(),
            params[4],
            params[8],
            params[10],
            c - 1,
        ),
    }


OPS = sorted(  # from the registry, so that collecting launches no kernel
    n
    for n in dir(torch.ops.cnnkernels)
    if not n.startswith("_") and isinstance(getattr(torch.ops.cnnkernels, n), torch._ops.OpOverloadPacket)
)


def test_every_op_is_covered():
    assert set(OPS) == set(_cases())


@pytest.mark.parametrize("name", OPS)
def test_opcheck_with_grad(name):
    args = _cases()[name]
    assert (
        any(isinstance(a, torch.Tensor) and a.requires_grad for a in args if isinstance(a, torch.Tensor))
        or name == "cat"
    )
    op = getattr(torch.ops.cnnkernels, name).default
    for util in UTILS:
        torch.library.opcheck(op, args, test_utils=util)


@pytest.mark.parametrize("name", ["conv2d", "conv1x1", "max_pool2d", "adaptive_avg_pool2d", "cat", "inception"])
def test_direct_op_calls_are_differentiable(name):
    """Calling ``torch.ops.cnnkernels.*`` directly gives exact gradients too (registered autograd)."""
    args = _cases()[name]
    leaves = [a for a in (args[0] if name == "cat" else args) if isinstance(a, torch.Tensor) and a.requires_grad]
    f = getattr(torch.ops.cnnkernels, name)

    def first(*ts):
        it = iter(ts)
        call = (
            [list(ts)] + list(args[1:])
            if name == "cat"
            else [next(it) if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args]
        )
        out = f(*call)
        return out[0] if isinstance(out, (tuple, list)) else out

    assert torch.autograd.gradcheck(first, tuple(leaves), fast_mode=True)
