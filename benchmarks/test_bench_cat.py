"""Channel concatenation of each Inception block's four branch outputs as a standalone copy
(``torch.cat`` in an unfused network; free inside the fused GoogLeNet), forward only."""

import pytest

from _common import FORWARD_CASES, PROVIDERS, bench_layer, cat_callable, layer_params

CAT_LAYERS = layer_params(lambda r: r.kind == "cat")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype,mode", FORWARD_CASES)
@pytest.mark.parametrize("case", CAT_LAYERS)
def test_cat(benchmark, case, dtype, mode, provider):
    bench_layer(benchmark, "cat", case, dtype, mode, provider, cat_callable)
