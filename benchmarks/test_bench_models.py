"""Whole models on the seed's (batch, 1, 224, 224) input: model x batch {1, 32, 128} x mode
{forward (eval, no grad), backward (all parameter gradients, train mode), train (+ cross-entropy
and an SGD step)} x dtype x provider; cudnn and torch.compile run the ``torch.nn`` twin with the
same weights. ``test_model_cudagraph``: the bf16 forward replayed from a CUDA graph, where launch
cost decides (torch.compile: ``mode="reduce-overhead"``). FLOPs, bytes and floors are
``cnnkernels.roofline.model_totals``. ``test_model_accuracy``: each model against its twin.
"""

import pytest

from cnnkernels import roofline
from cnnkernels.timing import peak_memory_bytes

from _common import (
    DEVICE,
    DTYPES,
    MODEL_BATCHES,
    MODES,
    PROVIDERS,
    measure,
    model_callable,
    model_cudagraph_callable,
    record,
)

MODELS = [pytest.param(m, id=m) for m in roofline.MODELS]
ACCURACY_BATCH = 32
BOUND = "cnnkernels.testing.model_verdict: error vs the float64 twin <= 2 x torch's own + the dtype's rtol"
CUDAGRAPH_PROVIDERS = [pytest.param(p, id=p) for p in ("cudnn", "cnnkernels", "torch.compile")]

FLOPS_FORMULA = "sum over layers: conv 2*N*K*P*Q*C*R*S, linear 2*N*IN*OUT, pools 1 per element read; backward 2x conv/linear (1x the first layer); train adds 2 per parameter (SGD)"
BYTES_FORMULA = "sum over layers of each input, weight and output once (ReLU fused, concatenation in place); train adds 3 per parameter (SGD) * bytes"


def _bench_model(benchmark, kind, model, batch, dtype, mode, provider, build, **extra):
    """Time ``build(provider)`` (a zero-argument step), record it with the model's roofline totals
    and the peak memory the step allocates; ``build("cudnn")`` gives the speedup's reference."""
    benchmark.group = f"{kind}:{model}:batch{batch}:{dtype}:{mode}"
    fn = build(provider)
    median = measure(benchmark, fn)
    t = roofline.model_totals(model, batch=batch, dtype=dtype)
    extra.update(provider=provider, dtype=dtype, shape=f"{batch}x1x224x224", mode=mode, model=model, batch=batch)
    extra.update(params=t.params, unfused_extra_bytes=t.unfused_extra_bytes(mode), flops=t.flops(mode))
    extra.update(nbytes=t.nbytes(mode), flops_formula=FLOPS_FORMULA, bytes_formula=BYTES_FORMULA)
    floor = {g: t.floor_s(g, mode) for g in roofline.GPU_CEILINGS}
    peak_mb = peak_memory_bytes(fn) / 2**20
    record(benchmark, median_s=median, floor=floor, build_cudnn=lambda: build("cudnn"), peak_memory_mb=peak_mb, **extra)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", MODEL_BATCHES)
@pytest.mark.parametrize("model", MODELS)
def test_model(benchmark, model, batch, mode, dtype, provider):
    def build(p):
        return model_callable(model, p, dtype, mode, batch)

    _bench_model(benchmark, "model", model, batch, dtype, mode, provider, build)


@pytest.mark.parametrize("provider", CUDAGRAPH_PROVIDERS)
@pytest.mark.parametrize("batch", [1, 32], ids=["batch1", "batch32"])
@pytest.mark.parametrize("model", MODELS)
def test_model_cudagraph(benchmark, model, batch, provider):
    def build(p):
        return model_cudagraph_callable(model, p, "bfloat16", batch)

    _bench_model(benchmark, "model-cudagraph", model, batch, "bfloat16", "forward", provider, build, cuda_graph=True)


@pytest.mark.parametrize("model", MODELS)
def test_model_accuracy(benchmark, model, batch=ACCURACY_BATCH, size=224):
    """``cnnkernels check``'s comparison (``cnnkernels.cli.check_model``), bf16: every tensor of the
    model within the model rule (``cnnkernels.testing.model_verdict``) against its twin in fp64."""
    import math

    import torch

    from cnnkernels.cli import check_model

    args = (model.lower(), batch, size, torch.bfloat16, DEVICE)
    verdicts = benchmark.pedantic(check_model, args=args, rounds=1, iterations=1)
    worst = max(verdicts, key=lambda v: v.err / v.bound if v.bound > 0 else math.inf)
    failed = [v.name for v in verdicts if not v.ok]
    logits = verdicts[0]
    benchmark.extra_info.update(
        model=model, batch=batch, dtype="bfloat16", status=f"failed: {failed}" if failed else "ok", failed=failed
    )
    benchmark.extra_info.update(logits_err=logits.err, torch_logits_err=logits.torch_err, worst=worst.name)
    benchmark.extra_info.update(worst_err=worst.err, worst_torch_err=worst.torch_err, bound=BOUND)
    benchmark.extra_info["worst_fraction_of_bound"] = worst.err / worst.bound if worst.bound > 0 else math.inf
    assert not failed, f"{model}: outside the model rule (model_verdict): {failed}"
