"""Every distinct layer geometry of the four models at batch 128, per provider: convolution + bias +
ReLU (``conv``: kernels larger than 1x1; ``conv1x1``), max and global average pooling (``pool``:
memory-bound, so GB/s; no train mode, it has no parameters) and an Inception block's channel
concatenation (``cat``: forward only, the standalone copy ``torch.cat`` makes in an unfused network;
free inside the fused GoogLeNet). bf16 forward, backward and train (+ SGD), fp16 and fp32 forward."""

import pytest

from _common import LAYER_OPS, PROVIDERS, bench_layer, layer_cases

GRID = [
    pytest.param(op, case, *dm.values, id=f"{op}-{case.id}-{dm.id}")
    for op, (keep, grid, _) in LAYER_OPS.items()
    for case in layer_cases(keep)
    for dm in grid
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op,case,dtype,mode", GRID)
def test_layer(benchmark, op, case, dtype, mode, provider):
    bench_layer(benchmark, op, case, dtype, mode, provider, LAYER_OPS[op][2])
