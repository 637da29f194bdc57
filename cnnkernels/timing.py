"""GPU timing and peak memory, one way for the benchmarks, ``cnnkernels bench`` and the GPU check."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["gpu_time_s", "peak_memory_bytes"]


def gpu_time_s(fn: Callable[[], object], *, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median seconds per call of ``fn`` on the current CUDA device by ``triton.testing.do_bench``
    (warm-up calls first, the L2 cache flushed before every call)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """``torch.cuda.max_memory_allocated`` over one call of ``fn`` (what was allocated before counts too)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()
