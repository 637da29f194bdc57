"""Max pooling and global average pooling at every pooling layer of the four models.

Every distinct pooling geometry at batch 128 (the Inception branches' 3x3 stride-1 pools
included); providers cnnkernels / cudnn (``torch.nn.functional``) / torch.compile /
torch.compile-max-autotune; bf16 forward and backward, fp16 and fp32 forward. No "train" mode:
pooling has no parameters, so a training step is forward + backward. Pooling is memory-bound:
read GB/s and the roofline fraction (bytes / bandwidth floor) rather than TFLOP/s.
"""

import pytest

from _common import NO_PARAM_CASES, PROVIDERS, bench_layer, layer_params, pool_callable

POOL_LAYERS = layer_params(lambda r: r.kind in ("maxpool", "avgpool"))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype,mode", NO_PARAM_CASES)
@pytest.mark.parametrize("case", POOL_LAYERS)
def test_pool(benchmark, case, dtype, mode, provider):
    bench_layer(benchmark, "pool", case, dtype, mode, provider, pool_callable)
