"""Channel concatenation of each Inception block's four branch outputs, as a standalone op.

Inside the fused GoogLeNet the concatenation costs nothing (each branch writes its channel
slice of the block output); this measures the copy that ``torch.cat`` makes in an unfused
network and ``cnnkernels.functional.cat`` against it: 2 x the block output's bytes. Forward
only (bf16, fp16, fp32): the backward of a concatenation only slices the incoming gradient.
"""

import pytest

from _common import FORWARD_CASES, PROVIDERS, bench_layer, cat_callable, layer_params

CAT_LAYERS = layer_params(lambda r: r.kind == "cat")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype,mode", FORWARD_CASES)
@pytest.mark.parametrize("case", CAT_LAYERS)
def test_cat(benchmark, case, dtype, mode, provider):
    bench_layer(benchmark, "cat", case, dtype, mode, provider, cat_callable)
