"""Convolution + bias + ReLU (kernels larger than 1x1) at every such layer of the four models.

Shapes: the layers of ``cnnkernels.roofline.layer_table`` at batch 128 on the seed's 1x224x224
input, one benchmark per distinct geometry. Grid: provider (cnnkernels fused conv+ReLU, cuDNN
conv then ReLU, ``torch.compile`` of the latter with and without max-autotune) x {bf16 forward,
backward, train (fwd + bwd + SGD on weight and bias); fp16 and fp32 forward}. Backward is dX
(except the first layer, whose input needs no gradient) + dW + db through the ReLU mask.
"""

import pytest

from _common import LAYER_CASES, PROVIDERS, bench_layer, conv_callable, layer_params

CONV_LAYERS = layer_params(lambda r: r.kind == "conv" and not r.is_1x1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype,mode", LAYER_CASES)
@pytest.mark.parametrize("case", CONV_LAYERS)
def test_conv(benchmark, case, dtype, mode, provider):
    bench_layer(benchmark, "conv", case, dtype, mode, provider, conv_callable)
