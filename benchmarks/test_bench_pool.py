"""Max pooling and global average pooling at every distinct pooling geometry of the four models,
batch 128: bf16 forward and backward, fp16 and fp32 forward; memory-bound, so GB/s."""

import pytest

from _common import NO_PARAM_CASES, PROVIDERS, bench_layer, layer_params, pool_callable

POOL_LAYERS = layer_params(lambda r: r.kind in ("maxpool", "avgpool"))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype,mode", NO_PARAM_CASES)
@pytest.mark.parametrize("case", POOL_LAYERS)
def test_pool(benchmark, case, dtype, mode, provider):
    bench_layer(benchmark, "pool", case, dtype, mode, provider, pool_callable)
