"""The ceilings the layer benchmarks are judged against, measured on the GPU at hand: a bf16
``torch.matmul`` of 8192^3 (the tensor-core rate cuBLAS reaches: TFLOP/s = 2 n^3 / median) and a
1 GiB device-to-device copy (GB/s = 2 x bytes / median: read + write). ``gpu_check.py`` divides
the conv layers' TFLOP/s and the pools' GB/s by them; the roofline fraction of each is the
measured rate over the nominal one in ``cnnkernels.roofline.GPU_CEILINGS``."""

from cnnkernels.roofline import GPU_CEILINGS

from _common import DEVICE, measure, record

N, COPY_BYTES = 8192, 1 << 30


def _ceiling(benchmark, name, fn, *, flops, nbytes, shape, flops_formula, bytes_formula):
    benchmark.group = f"ceiling:{name}"
    median = measure(benchmark, fn)
    record(
        benchmark,
        provider="torch",
        median_s=median,
        dtype="bfloat16",
        shape=shape,
        mode="forward",
        flops=flops,
        nbytes=nbytes,
        flops_formula=flops_formula,
        bytes_formula=bytes_formula,
        floor={g: c.floor_s(flops, nbytes) for g, c in GPU_CEILINGS.items()},
        build_cudnn=None,
        ceiling=name,
    )


def test_matmul_peak(benchmark):
    import torch

    a, b, c = (torch.randn(N, N, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    fn = lambda: torch.matmul(a, b, out=c)  # noqa: E731
    _ceiling(
        benchmark,
        "matmul",
        fn,
        flops=2 * N**3,
        nbytes=3 * N * N * 2,
        shape=f"{N}x{N}x{N}",
        flops_formula="2*n^3",
        bytes_formula="3*n^2 * 2",
    )


def test_copy_bandwidth(benchmark):
    import torch

    src = torch.randn(COPY_BYTES // 2, device=DEVICE, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    _ceiling(
        benchmark,
        "copy",
        lambda: dst.copy_(src),
        flops=0,
        nbytes=2 * COPY_BYTES,
        shape=f"{COPY_BYTES} bytes",
        flops_formula="0",
        bytes_formula="2 * bytes (read + write)",
    )
