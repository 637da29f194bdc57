"""1x1 convolution + bias + ReLU at every distinct 1x1 layer geometry: the grid of ``test_bench_conv.py``."""

import pytest

from _common import LAYER_CASES, PROVIDERS, bench_layer, conv_callable, layer_params

CONV1X1_LAYERS = layer_params(lambda r: r.is_1x1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype,mode", LAYER_CASES)
@pytest.mark.parametrize("case", CONV1X1_LAYERS)
def test_conv1x1(benchmark, case, dtype, mode, provider):
    bench_layer(benchmark, "conv1x1", case, dtype, mode, provider, conv_callable)
