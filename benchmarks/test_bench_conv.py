"""Convolution + bias + ReLU (kernels larger than 1x1) at every distinct such layer geometry of the
four models, batch 128: bf16 forward, backward and train (+ SGD), fp16 and fp32 forward."""

import pytest

from _common import LAYER_CASES, PROVIDERS, bench_layer, conv_callable, layer_params

CONV_LAYERS = layer_params(lambda r: r.kind == "conv" and not r.is_1x1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype,mode", LAYER_CASES)
@pytest.mark.parametrize("case", CONV_LAYERS)
def test_conv(benchmark, case, dtype, mode, provider):
    bench_layer(benchmark, "conv", case, dtype, mode, provider, conv_callable)
