"""The ceilings the layer benchmarks are judged against, measured on the GPU at hand: a bf16
``torch.matmul`` of 8192^3 (TFLOP/s = 2 n^3 / median) and a 1 GiB device-to-device copy
(GB/s = 2 x bytes / median: read + write). ``gpu_check.py`` divides the conv layers' TFLOP/s and
the pools' GB/s by them."""

from cnnkernels.roofline import GPU_CEILINGS

from _common import DEVICE, measure, record

N, COPY_BYTES = 8192, 1 << 30


def _ceiling(benchmark, name, fn, **info):
    benchmark.group = f"ceiling:{name}"
    median = measure(benchmark, fn)
    floor = {g: c.floor_s(info["flops"], info["nbytes"]) for g, c in GPU_CEILINGS.items()}
    info.update(provider="torch", dtype="bfloat16", mode="forward", ceiling=name)
    record(benchmark, median_s=median, floor=floor, build_cudnn=None, **info)


def test_matmul_peak(benchmark):
    import torch

    a, b, c = (torch.randn(N, N, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    info = dict(shape=f"{N}x{N}x{N}", flops_formula="2*n^3", bytes_formula="3*n^2 * 2")
    _ceiling(benchmark, "matmul", lambda: torch.matmul(a, b, out=c), flops=2 * N**3, nbytes=3 * N * N * 2, **info)


def test_copy_bandwidth(benchmark):
    import torch

    src = torch.randn(COPY_BYTES // 2, device=DEVICE, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    info = dict(shape=f"{COPY_BYTES} bytes", flops_formula="0", bytes_formula="2 * bytes (read + write)")
    _ceiling(benchmark, "copy", lambda: dst.copy_(src), flops=0, nbytes=2 * COPY_BYTES, **info)
