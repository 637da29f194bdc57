"""Shared pieces of the benchmark suites: parameter grids, the callables each provider runs, and
the ``extra_info`` every result carries (``gpu_check.py`` runs a selection of them).

Providers: ``cnnkernels`` (the fused kernels), ``cudnn`` (``torch.nn`` eager, channels_last,
``cudnn.benchmark`` on), ``torch.compile`` and ``torch.compile-max-autotune`` (of the ``torch.nn``
code). Shapes: ``cnnkernels.roofline.layer_table`` at 1x224x224, batch 128, each geometry once
(``extra_info["same_shape_layers"]`` lists the others). Times: ``measure``. The speedup divides
this session's cudnn median for the same group by the result's own (timed on the spot when the
cudnn case has not run; ``cudnn_median_source`` says which).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from cnnkernels import roofline
from cnnkernels.cli import shape_str
from cnnkernels.timing import gpu_time_s

_param = pytest.param

DEVICE = "cuda"  # the benchmarks time GPU work only

SKIP_REASON = "needs a CUDA GPU: the interpreter measures nothing about speed"

PROVIDERS = [_param(p, id=p) for p in ("cudnn", "cnnkernels", "torch.compile", "torch.compile-max-autotune")]

IMAGE = (1, 224, 224)  # the seed's (C, H, W)
LAYER_BATCH = 128
MODEL_BATCHES = [_param(b, id=f"batch{b}") for b in (1, 32, 128)]
DTYPE_IDS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
MODES = [_param(m, id=m) for m in roofline.MODES]
DTYPES = [_param(d, id=DTYPE_IDS[d]) for d in DTYPE_IDS]

# Per-layer grid: bf16 in every mode, fp16 and fp32 forward only.
_LAYER_GRID = [("bfloat16", m) for m in roofline.MODES] + [("float16", "forward"), ("float32", "forward")]
LAYER_CASES = [_param(d, m, id=f"{DTYPE_IDS[d]}-{m}") for d, m in _LAYER_GRID]
NO_PARAM_CASES = [c for c in LAYER_CASES if c.values[1] != "train"]  # pooling: train = forward + backward
FORWARD_CASES = [c for c in LAYER_CASES if c.values[1] == "forward"]  # cat's backward only slices the gradient


# Layer cases from the roofline tables


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """One benchmarked layer geometry: the first layer (of ``model``) that has it, and the rest."""

    model: str
    name: str
    same_shape_layers: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.model}.{self.name}"

    def layer(self, dtype: str = "bfloat16", batch: int = LAYER_BATCH) -> roofline.Layer:
        return _table(self.model, dtype, batch)[self.name]


@functools.cache
def _table(model: str, dtype: str, batch: int) -> dict[str, roofline.Layer]:
    rows = roofline.layer_table(model, (batch, *IMAGE), dtype=dtype, pools_in_convs=False)  # each layer alone
    return {r.name: r for r in rows}


def layer_cases(predicate: Callable[[roofline.Layer], bool]) -> list[LayerCase]:
    """Distinct geometries of the layers (of all four models, batch 128) for which ``predicate`` holds."""
    seen: dict[roofline.Layer, list] = {}  # a row without its name: the geometry and what it moves
    for model in roofline.MODELS:
        for r in _table(model, "bfloat16", LAYER_BATCH).values():
            if predicate(r):
                seen.setdefault(dataclasses.replace(r, name=""), []).append((model, r.name))
    return [LayerCase(*names[0], tuple(f"{m}.{n}" for m, n in names[1:])) for names in seen.values()]


# Environment


@functools.cache
def gpu_info() -> dict:
    import triton

    props, name = torch.cuda.get_device_properties(0), torch.cuda.get_device_name(0)
    return {
        "gpu": name,
        "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "roofline_gpu": roofline.ceiling_for(name),
    }


# Timing


def measure(benchmark, fn: Callable[[], object]) -> float:
    """The median seconds of ``fn`` by ``cnnkernels.timing.gpu_time_s``, what every result reports;
    then pytest-benchmark's own rounds of ``fn`` (synchronised, ~0.5 s, 5..100) for its table."""
    median = gpu_time_s(fn)
    rounds = max(5, min(100, int(0.5 / max(median, 1e-7))))
    benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=rounds, warmup_rounds=1, iterations=1)
    return median


_CUDNN_MEDIANS: dict[str, tuple[float, str]] = {}  # benchmark group -> (cudnn median s, where it came from)


def record(benchmark, *, median_s, flops, nbytes, flops_formula, bytes_formula, floor, build_cudnn, **extra) -> None:
    """Fill ``benchmark.extra_info`` for one result (``extra``: provider, dtype, shape, mode, ...);
    ``floor`` maps GPU_CEILINGS keys to floor seconds."""
    info = dict(gpu_info())
    key, gpu, provider = benchmark.group, info["roofline_gpu"], extra["provider"]
    info.update(
        median_ms=median_s * 1e3,
        tflops=flops / median_s / 1e12 if flops else None,
        tflops_formula=f"({flops_formula}) / median" if flops else None,
        gbps=nbytes / median_s / 1e9,
        gbps_formula=f"({bytes_formula}) / median",
        floor_ms=floor[gpu] * 1e3 if gpu else None,
        roofline_fraction=floor[gpu] / median_s if gpu else None,
        roofline_note=(
            f"floor = max(FLOPs / peak, bytes / bandwidth) with {roofline.GPU_CEILINGS[gpu].name} ceilings"
            if gpu
            else "no roofline ceilings for this GPU in cnnkernels.roofline.GPU_CEILINGS"
        ),
    )
    if provider == "cudnn":
        _CUDNN_MEDIANS[key] = (median_s, "this session's cudnn benchmark")
        info.update(speedup_vs_cudnn=1.0, cudnn_median_source="itself")
    elif build_cudnn is not None:
        if key not in _CUDNN_MEDIANS:  # the cudnn case has not run in this session: time it now
            _CUDNN_MEDIANS[key] = (gpu_time_s(build_cudnn()), "measured on the spot (triton.testing.do_bench)")
        ref, source = _CUDNN_MEDIANS[key]
        info.update(speedup_vs_cudnn=ref / median_s, cudnn_median_ms=ref * 1e3, cudnn_median_source=source)
    info.update(extra)
    benchmark.extra_info.update(info)


# Callables per provider: each builder returns a zero-argument step of ``mode`` (channels_last GPU tensors).


def _compile(fn, provider: str, mode: str | None = None):
    # A fresh dynamo cache per benchmark: every case compiles the same code object at a new
    # shape, and the per-code recompile limit would otherwise silently fall back to eager.
    torch._dynamo.reset()
    mode = mode or {"torch.compile": None, "torch.compile-max-autotune": "max-autotune"}[provider]
    return torch.compile(fn, mode=mode, dynamic=False)


def _mode_callable(op, inputs, params, mode: str):
    """forward (no grad), backward (autograd.grad of a retained graph) or train (fwd + bwd + SGD)."""
    if mode == "forward":
        return torch.no_grad()(lambda: op(*inputs))
    wants = [t for t in (*inputs, *params) if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode == "backward":
        y = op(*inputs)
        g = torch.randn_like(y)
        return lambda: torch.autograd.grad(y, wants, g, retain_graph=True)
    if mode == "train":
        opt = torch.optim.SGD([p for p in params if p.requires_grad], lr=1e-4, foreach=True)
        g = torch.randn_like(op(*inputs).detach())
        grad_inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

        def train():
            opt.zero_grad(set_to_none=True)
            for t in grad_inputs:  # as in a network: dX is a fresh tensor, not accumulated
                t.grad = None
            op(*inputs).backward(g)
            opt.step()

        return train
    raise ValueError(f"mode must be forward, backward or train, got {mode!r}")


def _activation(shape, dtype, requires_grad: bool):
    x = torch.randn(shape, device=DEVICE, dtype=getattr(torch, dtype))  # NCHW-shaped, channels_last
    return x.contiguous(memory_format=torch.channels_last).requires_grad_(requires_grad)


def _provider_op(provider: str, make):
    """``make(lib)``, the op with ``lib`` the functional API of ``provider``: ``cnnkernels.functional``
    for cnnkernels, ``torch.nn.functional`` for the others (compiled for the torch.compile ones)."""
    import cnnkernels.functional as CF

    op = make(CF if provider == "cnnkernels" else F)
    return op if provider in ("cnnkernels", "cudnn") else _compile(op, provider)


def conv_callable(layer: roofline.Layer, provider: str, mode: str):
    """Conv (+ bias + ReLU when the layer has it; one fused op for cnnkernels) of ``layer``'s geometry."""
    c, k, (r, s) = layer.in_shape[1], layer.out_shape[1], layer.kernel
    grad = mode != "forward"
    x = _activation(layer.in_shape, layer.dtype, grad and layer.needs_input_grad)
    weight = (torch.randn(k, c, r, s, device=DEVICE) * (c * r * s) ** -0.5).to(getattr(torch, layer.dtype))
    weight = weight.contiguous(memory_format=torch.channels_last).requires_grad_(grad)
    bias = (0.1 * torch.randn(k, device=DEVICE)).to(getattr(torch, layer.dtype)).requires_grad_(grad)
    stride, padding, relu = layer.stride, layer.padding, layer.relu

    def make(lib):
        if relu and lib is not F:
            return lambda x, w, b: lib.conv2d_relu(x, w, b, stride, padding)
        if relu:
            return lambda x, w, b: F.relu(F.conv2d(x, w, b, stride, padding))
        return lambda x, w, b: lib.conv2d(x, w, b, stride, padding)

    return _mode_callable(_provider_op(provider, make), (x, weight, bias), (weight, bias), mode)


def pool_callable(layer: roofline.Layer, provider: str, mode: str):
    """Max pooling or global average pooling of ``layer``'s geometry."""
    x = _activation(layer.in_shape, layer.dtype, mode != "forward")
    kernel, stride, padding = layer.kernel, layer.stride, layer.padding

    def make(lib):
        if layer.kind == "maxpool":
            return lambda x: lib.max_pool2d(x, kernel, stride, padding)
        return lambda x: lib.adaptive_avg_pool2d(x, (1, 1))

    return _mode_callable(_provider_op(provider, make), (x,), (), mode)


def cat_callable(layer: roofline.Layer, provider: str, mode: str):
    """Channel concatenation of an Inception block's four branch outputs (standalone: a copy)."""
    n, _, h, w = layer.out_shape
    branches = [_activation((n, ci, h, w), layer.dtype, mode != "forward") for ci in layer.branch_channels]

    def make(lib):
        cat = getattr(lib, "cat", torch.cat)  # torch.nn.functional has none: torch.cat
        return lambda *xs: cat(xs, dim=1)

    return _mode_callable(_provider_op(provider, make), branches, (), mode)


# The per-layer suites: op -> (which layers, its dtype/mode grid, the callable of a provider and mode).
LAYER_OPS = {
    "conv": (lambda r: r.kind == "conv" and not r.is_1x1, LAYER_CASES, conv_callable),
    "conv1x1": (lambda r: r.is_1x1, LAYER_CASES, conv_callable),
    "pool": (lambda r: r.kind in ("maxpool", "avgpool"), NO_PARAM_CASES, pool_callable),
    "cat": (lambda r: r.kind == "cat", FORWARD_CASES, cat_callable),
}


def bench_layer(benchmark, op: str, case: LayerCase, dtype: str, mode: str, provider: str, builder) -> None:
    """Every per-layer benchmark: time ``builder(layer, provider, mode)`` and record its FLOPs, bytes
    and roofline floor (concatenation, forward only: the standalone copy, each branch read and written)."""
    layer = case.layer(dtype)
    benchmark.group = f"{op}:{case.id}:{dtype}:{mode}"
    median = measure(benchmark, builder(layer, provider, mode))
    if layer.kind == "cat":
        moved, formula = layer.unfused_extra_bytes_fwd, "2*N*sum(C_i)*H*W * bytes"
        floor = {g: moved / c.bandwidth for g, c in roofline.GPU_CEILINGS.items()}
    else:
        moved, formula = layer.nbytes(mode), layer.formula("bytes", mode)
        floor = {g: layer.floor_s(g, mode) for g in roofline.GPU_CEILINGS}
    shape = f"in {shape_str(layer.in_shape)} -> out {shape_str(layer.out_shape)}"
    info = dict(provider=provider, dtype=dtype, shape=shape, mode=mode, flops=layer.flops(mode), nbytes=moved)
    info.update(flops_formula=layer.formula("flops", mode), bytes_formula=formula, floor=floor, layer=case.id)
    info.update(kernel=layer.kernel, stride=layer.stride, padding=layer.padding)
    if op == "conv" and mode == "backward":
        info["backward_parts_ms"] = conv_backward_parts_ms(layer, provider)
    build_cudnn = lambda: builder(layer, "cudnn", mode)  # noqa: E731
    record(benchmark, median_s=median, build_cudnn=build_cudnn, same_shape_layers=list(case.same_shape_layers), **info)


def conv_backward_parts_ms(layer: roofline.Layer, provider: str) -> dict | None:
    """Where a conv layer's backward time goes, each part timed alone (ms): for cnnkernels the
    masking pass (dY' and db), dX and dW on their ops; for cuDNN the ReLU mask, dX and dW of
    ``aten.convolution_backward``. None for other providers."""
    if provider not in ("cnnkernels", "cudnn"):
        return None
    c, k, (r, s) = layer.in_shape[1], layer.out_shape[1], layer.kernel
    x = _activation(layer.in_shape, layer.dtype, False)
    w = torch.randn(k, c, r, s, device=DEVICE).to(x.dtype).contiguous(memory_format=torch.channels_last)
    y = torch.relu(F.conv2d(x, w, None, layer.stride, layer.padding))
    dy = torch.randn_like(y)
    act = "relu" if layer.relu else "none"
    if provider == "cnnkernels":
        from cnnkernels.conv import conv2d_args

        geo = conv2d_args(x, w, None, layer.stride, layer.padding, 1, 1)[2:]  # as the ops take it
        ops = torch.ops.cnnkernels
        parts = {
            "prep": lambda: ops.conv2d_backward_prep(dy, y, act, True),
            "dx": lambda: ops.conv2d_backward_input(dy, dy, w, list(x.shape), *geo, "none", True),
            "dw": lambda: ops.conv2d_backward_weight(x, dy, dy, w, *geo, "none", False),
        }
    else:
        conv_bwd = torch.ops.aten.convolution_backward
        args = (dy, x, w, None, layer.stride, layer.padding, [1, 1], False, [0, 0], 1)
        parts = {
            "dx": lambda: conv_bwd(*args, [True, False, False]),
            "dw": lambda: conv_bwd(*args, [False, True, True]),
        }
        if layer.relu:  # the ReLU's own backward pass (without one, db comes with dW)
            parts["prep"] = lambda: torch.ops.aten.threshold_backward(dy, y, 0)
    return {name: gpu_time_s(fn) * 1e3 for name, fn in parts.items()}


# Models


def model_on_gpu(name: str, provider: str, dtype: str):
    """The model ``provider`` runs, on the GPU in ``dtype``, channels_last (not compiled): fused for
    cnnkernels, the ``torch.nn`` twin otherwise, with the same weights (seed 0)."""
    from cnnkernels import models

    torch.manual_seed(0)
    model = getattr(models.reference, name)(num_classes=10)
    model.materialize((1, *IMAGE))
    if provider == "cnnkernels":
        model = models.from_reference(model)
    return model.to(device=DEVICE, dtype=getattr(torch, dtype), memory_format=torch.channels_last)


def model_callable(name: str, provider: str, dtype: str, mode: str, batch: int):
    """forward (eval, no grad), backward (grads of all parameters) or train (fwd + cross-entropy +
    bwd + SGD step) of a whole model on a (batch, 1, 224, 224) input."""
    model = model_on_gpu(name, provider, dtype)
    model.train(mode != "forward")
    net = model if provider in ("cnnkernels", "cudnn") else _compile(model, provider)
    x = _activation((batch, *IMAGE), dtype, False)
    if mode == "train":
        labels = torch.randint(0, 10, (batch,), device=DEVICE)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, foreach=True)

        def train():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x).float(), labels).backward()
            opt.step()

        return train
    return _mode_callable(net, (x,), tuple(model.parameters()), mode)


def model_cudagraph_callable(name: str, provider: str, dtype: str, batch: int):
    """Forward (eval, no grad) replayed from a CUDA graph (``cnnkernels.graphs.capture_forward``);
    torch.compile uses its own ``mode="reduce-overhead"`` (CUDA graphs) instead."""
    from cnnkernels.graphs import capture_forward

    model = model_on_gpu(name, provider, dtype).eval()
    x = _activation((batch, *IMAGE), dtype, False)
    if provider == "torch.compile":
        net = _compile(model, provider, mode="reduce-overhead")

        def forward():
            torch.compiler.cudagraph_mark_step_begin()  # a new inference step: replay, not re-record
            with torch.no_grad():
                return net(x)

        return forward
    return capture_forward(model, x).graph.replay  # warmed up first: autotuning and cuDNN's search
