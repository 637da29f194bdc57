"""Every config the GPU autotuner can pick, run under the interpreter.

Elsewhere the interpreter runs one large-block config per kernel, so the GPU's own configs (block
sizes, warps, the dtype's halved BLOCK_K, the conv forms each selects) would first compute on a GPU.
Here each autotuned launch runs its GPU config number ``i`` (of the list its prune keeps for that
launch on a GPU), every launch of one op call with the same ``i``, and the results are checked
against float64 torch. The launches of ``torch.library.wrap_triton`` are intercepted as the static
report does; the prune runs with the kernels' ``INTERPRET`` switches off, so it sees the GPU list.
"""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
import torch.nn.functional as F

import cnnkernels._fast as fast
import cnnkernels.functional as CF
from cnnkernels import kernels
from cnnkernels.kernels import convpool as kcp
from cnnkernels.testing import assert_close

from conftest import DEVICE

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's check of the GPU configs")


@contextlib.contextmanager
def _gpu_prune():
    """Every kernel module's ``INTERPRET`` switch off (its prunes and config lists read it)."""
    modules = [m for name, m in sys.modules.items() if name.startswith(kernels.__name__) and hasattr(m, "INTERPRET")]
    saved = [m.INTERPRET for m in modules]
    for m in modules:
        m.INTERPRET = False
    try:
        yield
    finally:
        for m, v in zip(modules, saved):
            m.INTERPRET = v


def gpu_configs(tuner, args, kwargs) -> list:
    """The configs a GPU autotuner would time for this launch (after its prune)."""
    configs = getattr(tuner.configs, "gpu", tuner.configs)
    prune = getattr(tuner, "early_config_prune", None)
    if prune is None:
        return list(configs)
    with _gpu_prune():
        return list(prune(configs, dict(zip(tuner.arg_names, args)), **kwargs))


@contextlib.contextmanager
def gpu_config(index: int, seen: list):
    """Each autotuned launch in the block runs its GPU config ``index`` (modulo the list's length)."""
    real = torch.library.wrap_triton

    def wrap(kernel):
        if not hasattr(kernel, "arg_names") or not hasattr(kernel, "configs"):
            return real(kernel)

        class Launcher:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    configs = gpu_configs(kernel, args, kwargs)
                    cfg = configs[index % len(configs)]
                    seen.append((getattr(kernel, "base_fn", kernel.fn).__name__, len(configs), dict(cfg.kwargs)))
                    kernel.fn[grid](*args, **kwargs, **cfg.kwargs)

                return run

        return Launcher()

    enabled = fast.enabled
    fast.enabled = False  # every call takes the full path through the launchers
    torch.library.wrap_triton = wrap
    try:
        yield
    finally:
        torch.library.wrap_triton = real
        fast.enabled = enabled


LAYERS = {  # (N, C, H, K, R, stride, padding): each picks a different set of kernels and forms
    "flat-c3-11x11-s4": (2, 3, 23, 64, 11, 4, 2),  # span-form forward and dW, flattened dX
    "span-c1-3x3": (2, 1, 9, 16, 3, 1, 1),  # a 1-channel first layer: 8-wide spans
    "taps-c64-3x3": (2, 64, 8, 128, 3, 1, 1),  # tap-wise forward and dX, row-tiled dW
    "taps-c96-5x5-s2": (2, 96, 9, 64, 5, 2, 2),  # strided: the row-tiled dW, a skip between images
    "nchw-c40-3x3-s2": (2, 40, 9, 24, 3, 2, 1),  # NCHW input: the generic tap-wise dW
    "narrow-c24-5x5": (2, 24, 7, 32, 5, 1, 2),  # 24 channels: narrow row tiles, a forward K slice of 32
    "pairs-c16-5x5": (2, 16, 6, 24, 5, 1, 2),  # 16 channels: the forward reads two taps a step
    "1x1-c96": (2, 96, 6, 80, 1, 1, 0),  # the 1x1 kernels
    "1x1-c10": (2, 10, 5, 10, 1, 1, 0),  # NiN's 10-channel 1x1: short K slices, narrow tiles
    "split-c130-3x3": (1, 130, 5, 70, 3, 1, 1),  # few tiles, a long reduction: the split forward
}
FAST = {
    "taps-c64-3x3",
    "narrow-c24-5x5",
    "pairs-c16-5x5",
    "nchw-c40-3x3-s2",
    "1x1-c96",
    "span-c1-3x3",
    "1x1-c10",
    "split-c130-3x3",
}  # fp16 in `make test`; the rest are slow


def _cases():
    for name in LAYERS:
        for dtype in (torch.float16, torch.float32):
            marks = () if name in FAST and dtype == torch.float16 else (pytest.mark.slow,)
            yield pytest.param(name, dtype, marks=marks, id=f"{name}-{str(dtype)[6:]}")


@pytest.mark.parametrize("name,dtype", list(_cases()))
def test_conv_relu_at_every_gpu_config(name, dtype):
    n, c, h, k, r, stride, padding = LAYERS[name]
    torch.manual_seed(0)
    x = torch.randn(n, c, h, h, dtype=dtype)
    x = (x if name.startswith("nchw") else x.to(memory_format=torch.channels_last)).requires_grad_()
    w = (torch.randn(k, c, r, r, dtype=dtype) / (c * r * r) ** 0.5).to(memory_format=torch.channels_last)
    w.requires_grad_()
    b = torch.randn(k, dtype=dtype, requires_grad=True)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = F.relu(F.conv2d(x64, w64, b64, stride, padding))
    dy = torch.randn(y64.shape, dtype=dtype)
    refs = (y64, *torch.autograd.grad(y64, (x64, w64, b64), dy.double()))
    widest = 1
    for index in range(3):  # the GPU lists hold at most three configs
        seen: list = []
        with gpu_config(index, seen):
            y = CF.conv2d_relu(x, w, b, stride, padding)
            grads = torch.autograd.grad(y, (x, w, b), dy)
        assert seen, "no autotuned launch was intercepted"
        widest = max(widest, *(count for _, count, _ in seen))
        for got, ref, what in zip((y, *grads), refs, ("output", "grad_input", "grad_weight", "grad_bias")):
            assert_close(got, ref, dtype, name=f"{what} at GPU config {index}: {seen}")
        if index + 1 >= widest:
            break


POOL_CASES = {  # name: (op on cnnkernels.functional or torch.nn.functional, input shape)
    "max_pool2d-3x3-s2": (lambda f, x: f.max_pool2d(x, 3, 2, 1), (2, 48, 13, 13)),
    "max_pool2d-2x2-s2": (lambda f, x: f.max_pool2d(x, 2, 2), (2, 40, 9, 10)),
    "adaptive_avg_pool2d-5": (lambda f, x: f.adaptive_avg_pool2d(x, 5), (2, 40, 11, 11)),
    "adaptive_avg_pool2d-1": (lambda f, x: f.adaptive_avg_pool2d(x, 1), (2, 72, 9, 9)),
    "cat": (lambda f, x: getattr(f, "cat", torch.cat)([x, 2 * x[:, :24]], dim=1), (2, 40, 6, 6)),
}


@pytest.mark.parametrize("name", list(POOL_CASES))
def test_pooling_and_cat_at_every_gpu_config(name):
    op, shape = POOL_CASES[name]
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float16).to(memory_format=torch.channels_last).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y64 = op(F, x64)
    dy = torch.randn(y64.shape, dtype=torch.float16)
    (ref_dx,) = torch.autograd.grad(y64, x64, dy.double())
    for index in range(3):
        seen: list = []
        with gpu_config(index, seen):
            y = op(CF, x)
            (dx,) = torch.autograd.grad(y, x, dy)
        assert seen, "no autotuned launch was intercepted"
        assert_close(y, y64, torch.float16, name=f"output at GPU config {index}: {seen}")
        assert_close(dx, ref_dx, torch.float16, name=f"grad_input at GPU config {index}: {seen}")
        if index + 1 >= max(count for _, count, _ in seen):
            break


@pytest.mark.parametrize(
    "pool,c", [(3, 32), (2, 32), (3, 3)], ids=["3x3s2-tap-loop", "2x2s2-tap-rows", "3x3s2-span-nine-taps"]
)
def test_conv_relu_max_pool_at_every_gpu_config(pool, c):
    """Overlapping windows (a GEMM per tap, a running max; over a 3-channel span-form conv, one
    GEMM into nine accumulators) and disjoint ones (the tile's rows are (tap, pixel), the max in
    the epilogue: the conv forward's configs). fp32: in fp16 two conv outputs of a window can
    round to a tie that float64 breaks the other way, moving the gradient to another pixel."""
    torch.manual_seed(0)
    x = torch.randn(2, c, 12, 12, dtype=torch.float32).to(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(64, c, 3, 3, dtype=torch.float32) / 17).to(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(64, dtype=torch.float32, requires_grad=True)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = F.max_pool2d(F.relu(F.conv2d(x64, w64, b64, 1, 1)), pool, 2)
    dy = torch.randn(y64.shape, dtype=torch.float32)
    refs = (y64, *torch.autograd.grad(y64, (x64, w64, b64), dy.double()))
    for index in range(3):
        seen: list = []
        with gpu_config(index, seen):
            y = CF.conv2d_relu_max_pool2d(x, w, b, 1, 1, kernel_size=pool, pool_stride=2)
            grads = torch.autograd.grad(y, (x, w, b), dy)
        assert any("pool" in kernel for kernel, _, _ in seen), seen
        for got, ref, what in zip((y, *grads), refs, ("output", "grad_input", "grad_weight", "grad_bias")):
            assert_close(got, ref, torch.float32, name=f"{what} at GPU config {index}: {seen}")
        if index + 1 >= max(count for _, count, _ in seen):
            break


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_max_pool_conv1x1_at_every_gpu_config(channels_last):
    """The Inception pool branch's kernel (pool on load): 40 channels (a partial channel block at
    every config), an odd height (the last pair's lower pixel outside the image), more pixel pairs
    than one program holds, NaN at an edge; NCHW inputs are copied channels_last first."""
    torch.manual_seed(0)
    x = torch.randn(2, 40, 9, 7, dtype=torch.float16)
    x[1, 3, 0, 6] = float("nan")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(80, 40, 1, 1, dtype=torch.float16) / 7
    b = torch.randn(80, dtype=torch.float16)
    ref = F.relu(F.conv2d(F.max_pool2d(x.double(), 3, 1, 1), w.double(), b.double()))
    for index in range(3):
        seen: list = []
        with gpu_config(index, seen):
            y = kcp.max_pool_conv1x1_forward(x, w, b, (3, 3), (1, 1), "relu")
        assert [kernel for kernel, _, _ in seen] == ["_max_pool_conv1x1_fwd_kernel"], seen
        assert_close(y, ref, torch.float16, name=f"output at GPU config {index}: {seen}")
        if index + 1 >= seen[0][1]:
            break
