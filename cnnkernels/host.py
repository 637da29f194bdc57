"""Host overhead: what an op call or a model call costs the CPU on the way to its launches.

``launches_stubbed()`` replaces Triton's launch (``JITFunction.run`` and the interpreter's) with a
counter, so everything above it (checks, autograd, ``torch.library`` dispatch, the autotuner's
per-call work, the launchers) runs as on a GPU while nothing computes; torch's eager op on a
one-element CPU problem is measured in the same run for comparison. Used by
``benchmarks/test_bench_host.py`` and ``cnnkernels bench --host``.
"""

from __future__ import annotations

import contextlib
import sys
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from unittest import mock

import torch

from cnnkernels.cli import MODELS


@dataclass
class HostCost:
    """One measured callable: microseconds (best round), Python calls and Triton launches per call."""

    name: str
    us: float
    python_calls: int
    launches: int


@contextlib.contextmanager
def launches_stubbed() -> Iterator[list]:
    """Within the block every Triton launch appends its kernel's name to the yielded list and
    returns without running: the host path above the launch is measured, not the kernel."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launched: list[str] = []

    def run(self, *args, grid, warmup, **kwargs):
        launched.append(getattr(self, "__name__", "?"))

    with mock.patch.object(JITFunction, "run", run), mock.patch.object(InterpretedFunction, "run", run):
        yield launched


def count_python_calls(fn: Callable[[], object]) -> int:
    """Python function calls (not C calls) made by one ``fn()``."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls - 1  # fn itself


def measure(name: str, fn: Callable[[], object], *, repeats: int = 5, min_time: float = 0.05) -> HostCost:
    """Host cost of ``fn()`` with launches stubbed: warmed up (first calls settle caches and the
    autotuner), then the best of ``repeats`` rounds of at least ``min_time`` seconds each."""
    with single_thread(), launches_stubbed() as launched:
        for _ in range(3):
            fn()
        launched.clear()
        fn()
        launches, calls = len(launched), count_python_calls(fn)
        timer = timeit.Timer(fn)  # (with the garbage collector paused while it times)
        loops = next((n for n in (1 << k for k in range(17)) if timer.timeit(n) >= min_time / 4), 1 << 16)
        best = min(timer.repeat(repeats, loops)) / loops
    return HostCost(name, best * 1e6, calls, launches)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one CPU thread: no thread-pool wake-ups in a one-element torch reference."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _device() -> str:
    from cnnkernels.kernels._common import INTERPRET

    return "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"


def op_cases() -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """(name, ours, torch's) per op: ``cnnkernels.functional`` at a GoogLeNet-sized layer (64 -> 128
    channels, 14x14, channels_last), torch's eager op with the same arguments on one element."""
    import torch.nn.functional as tF

    from cnnkernels import functional as F

    dev = _device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    x, w, w1x1 = (
        torch.randn(*shape, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
        for shape in ((1, 64, 14, 14), (128, 64, 3, 3), (128, 64, 1, 1))
    )
    b = torch.randn(128, device=dev, dtype=dtype)
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    x1, t1, b1 = torch.randn(1, 1, 1, 1), torch.randn(1, 1, 3, 3), torch.randn(1)
    o1 = torch.randn(1, 1, 1, 1)
    t1g, b1g = t1.clone().requires_grad_(), b1.clone().requires_grad_()
    return [
        (
            "conv2d_relu 3x3",
            lambda: F.conv2d_relu(x, w, b, padding=1),
            lambda: tF.relu(tF.conv2d(x1, t1, b1, padding=1)),
        ),
        ("conv2d_relu 1x1", lambda: F.conv2d_relu(x, w1x1, b), lambda: tF.relu(tF.conv2d(x1, o1, b1))),
        (
            "conv2d_relu 3x3, params require grad",
            lambda: F.conv2d_relu(x, wg, bg, padding=1),
            lambda: tF.relu(tF.conv2d(x1, t1g, b1g, padding=1)),
        ),
        ("max_pool2d 3x3/2", lambda: F.max_pool2d(x, 3, 2, 1), lambda: tF.max_pool2d(x1, 3, 2, 1)),
        ("adaptive_avg_pool2d 1", lambda: F.adaptive_avg_pool2d(x, 1), lambda: tF.adaptive_avg_pool2d(x1, 1)),
    ]


def op_costs(repeats: int = 5) -> list[tuple[HostCost, HostCost]]:
    """(ours, torch's) host cost of every ``op_cases`` entry, calls after the first, grad mode on."""
    with torch.enable_grad():
        return [
            (measure(n, ours, repeats=repeats), measure("torch " + n, theirs, repeats=repeats))
            for n, ours, theirs in op_cases()
        ]


def model_case(name: str, train: bool = False) -> Callable[[], object]:
    """One forward (eval, no grad) or training step (forward + backward) of the fused model ``name``
    at batch 1, 1x224x224."""
    from cnnkernels.cli import _build

    dev = _device()
    model = _build(name).to(dev)
    x = torch.randn(1, 1, 224, 224, device=dev)
    with torch.no_grad(), launches_stubbed():
        model(x)
    if train:
        model.train()
        return lambda: model(x).sum().backward()
    model.eval()
    return torch.no_grad()(lambda: model(x))


def model_costs(names=MODELS, *, train: bool = False, repeats: int = 3) -> list[HostCost]:
    """Host cost of ``model_case`` per model: launches stubbed, nothing computes."""
    kind = "training step" if train else "forward"
    return [measure(f"{name} {kind}", model_case(name, train), repeats=repeats) for name in names]
