"""GPU-only checks: the compiled kernels against cuDNN at sizes the interpreter cannot reach.

Each test carries the ``gpu`` marker; without a CUDA device they are skipped with that reason
(see conftest.py). ``make gpu-check`` runs them first."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnnkernels.functional as CF
from cnnkernels.testing import assert_close

from conftest import DEVICE

pytestmark = pytest.mark.gpu

DTYPES = [
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.float32, id="fp32"),
]
LAYERS = [
    pytest.param(dict(n=8, c=1, h=224, k=96, r=11, stride=4, padding=1), id="alexnet-conv1"),
    pytest.param(dict(n=16, c=96, h=26, k=256, r=5, stride=1, padding=2), id="alexnet-conv2"),
    pytest.param(dict(n=16, c=64, h=112, k=128, r=3, stride=1, padding=1), id="vgg-conv2"),
    pytest.param(dict(n=8, c=1, h=224, k=64, r=7, stride=2, padding=3), id="googlenet-stem"),
    pytest.param(dict(n=32, c=192, h=28, k=64, r=1, stride=1, padding=0), id="inception-1x1"),
    pytest.param(dict(n=32, c=96, h=28, k=128, r=3, stride=1, padding=1), id="inception-3x3"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", LAYERS)
def test_conv_relu_vs_cudnn(layer, dtype):
    x = torch.randn(layer["n"], layer["c"], layer["h"], layer["h"], device=DEVICE, dtype=dtype)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    w = (
        torch.randn(layer["k"], layer["c"], layer["r"], layer["r"], device=DEVICE, dtype=dtype)
        / (layer["c"] * layer["r"] ** 2) ** 0.5
    )
    w = w.to(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(layer["k"], device=DEVICE, dtype=dtype, requires_grad=True)
    args = dict(stride=layer["stride"], padding=layer["padding"])
    y = CF.conv2d_relu(x, w, b, **args)
    dy = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = F.relu(F.conv2d(x64, w64, b64, **args))
    rx, rw, rb = torch.autograd.grad(y64, (x64, w64, b64), dy.double())
    torch_y = F.relu(F.conv2d(x.detach(), w.detach(), b.detach(), **args))
    # Each result is a long sum: the same sums over the terms' absolute values bound its rounding.
    xa, wa, ba = (t.detach().abs().requires_grad_() for t in (x64, w64, b64))
    ya = F.conv2d(xa, wa, ba, **args)
    dya = (dy.double() * (y64 > 0)).abs()
    sx, sw, sb = torch.autograd.grad(ya, (xa, wa, ba), dya)
    assert_close(y, y64, dtype, torch_out=torch_y, scale=ya)
    assert_close(gx, rx, dtype, name="grad_input", scale=sx)
    assert_close(gw, rw, dtype, name="grad_weight", scale=sw)
    assert_close(gb, rb, dtype, name="grad_bias", scale=sb)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pools_vs_cudnn(dtype):
    x = torch.randn(64, 96, 54, 54, device=DEVICE, dtype=dtype).to(memory_format=torch.channels_last)
    y, idx = CF.max_pool2d(x, 3, 2, return_indices=True)
    ry, ridx = F.max_pool2d(x, 3, 2, return_indices=True)
    assert torch.equal(y, ry)
    assert torch.equal(idx, ridx)
    g = CF.adaptive_avg_pool2d(x, 1)
    assert_close(g, F.adaptive_avg_pool2d(x.double(), 1), dtype)


def test_more_than_2_pow_31_elements():
    """A batch offset past 2**31 elements: the 64-bit offsets must hold (about 4.3 GB in bf16)."""
    n, c, h = 33, 64, 1024  # 33 * 64 * 1024 * 1024 > 2**31
    x = torch.randn(n, c, h, h, device=DEVICE, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    w = torch.randn(8, c, 1, 1, device=DEVICE, dtype=torch.bfloat16) / 8
    y = CF.conv2d_relu(x, w, None)
    ref_last = F.relu(F.conv2d(x[-1:].double(), w.double()))
    assert_close(y[-1:], ref_last, torch.bfloat16)
    del x, y


def test_opcheck_full_on_gpu():
    x = torch.randn(2, 3, 9, 9, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    torch.library.opcheck(torch.ops.cnnkernels.conv2d.default, (x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, "relu", True))


def test_torch_compile_traces_the_ops():
    x = torch.randn(4, 16, 20, 20, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(32, 16, 3, 3, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    fn = torch.compile(lambda a, c: CF.conv2d_relu(a, c, None, padding=1), fullgraph=True)
    y = fn(x, w)
    y.sum().backward()
    assert_close(y, F.relu(F.conv2d(x.detach().double(), w.detach().double(), padding=1)), torch.bfloat16)


def _small_model(name="nin"):
    from cnnkernels import models

    torch.manual_seed(0)
    cls = {"nin": models.NiN, "googlenet": models.GoogLeNet}[name]
    model = cls(num_classes=10).to(DEVICE)
    with torch.no_grad():
        model(torch.randn(1, 1, 224, 224, device=DEVICE))  # materialise the lazy layers
    return model


@pytest.mark.parametrize("name", ["nin", "googlenet"])
def test_cuda_graph_forward_replays_the_eager_result(name):
    from cnnkernels import graphs

    model = _small_model(name).eval()
    x = torch.randn(2, 1, 224, 224, device=DEVICE)
    forward = graphs.capture_forward(model, x)
    for seed in range(2):
        x = torch.randn(2, 1, 224, 224, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(seed))
        with torch.no_grad():
            eager = model(x)
        assert torch.equal(forward(x), eager)  # same kernels, same configs: the same bits


def test_cuda_graph_train_step_matches_eager_steps():
    import copy

    from cnnkernels import graphs

    eager_model = _small_model("nin").train()
    graph_model = copy.deepcopy(eager_model)
    loss_fn = torch.nn.functional.cross_entropy
    eager_opt = torch.optim.SGD(eager_model.parameters(), lr=0.01)
    graph_opt = torch.optim.SGD(graph_model.parameters(), lr=0.01)
    x = torch.randn(4, 1, 224, 224, device=DEVICE)
    y = torch.randint(0, 10, (4,), device=DEVICE)
    # The capture's warm-up takes optimizer steps too: the eager twin takes as many.
    step = graphs.capture_train_step(graph_model, graph_opt, loss_fn, x, y, warmup=3)
    for _ in range(3):
        eager_opt.zero_grad(set_to_none=True)
        loss_fn(eager_model(x), y).backward()
        eager_opt.step()
    for _ in range(2):
        loss = step(x, y)
        eager_opt.zero_grad(set_to_none=True)
        eager_loss = loss_fn(eager_model(x), y)
        eager_loss.backward()
        eager_opt.step()
        assert_close(loss, eager_loss.detach(), torch.float32)
    for p, q in zip(graph_model.parameters(), eager_model.parameters()):
        assert_close(p.detach(), q.detach(), torch.float32)
    # A wrong-shaped target is refused before x is copied in: the static input stays as it was.
    before = step.static_input.clone()
    with pytest.raises(ValueError, match="target"):
        step(x + 1, y[:2])
    assert torch.equal(step.static_input, before)


def test_torch_compile_reduce_overhead_over_the_ops():
    model = _small_model("nin").eval()
    compiled = torch.compile(model, mode="reduce-overhead")
    x = torch.randn(2, 1, 224, 224, device=DEVICE)
    with torch.no_grad():
        for _ in range(3):  # warm-up runs, then the captured graph replays
            out = compiled(x)
        assert_close(out, model(x), torch.float32)
