"""Shared pieces of every kernel file: the interpreter switch, config selection and the one
matrix-multiply helper that every kernel's dot goes through.

Triton decides at decoration time whether ``@triton.jit`` functions run compiled or under the
interpreter (``TRITON_INTERPRET=1``), so ``INTERPRET`` is read once, at import, exactly as
triton reads it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# The interpreter's fp32 -> bf16 cast truncates (a GPU rounds to nearest even); see ``to_dtype``.
_ROUND_BF16 = tl.constexpr(INTERPRET)


def pick_configs(gpu: list[triton.Config], interpreter: list[triton.Config]) -> list[triton.Config]:
    """The GPU autotuning list, or the interpreter's single large-block config.

    Under the interpreter autotuning cannot benchmark (no GPU driver) and the cost grows with
    programs x loop steps, so it gets exactly one config with large blocks.
    """
    if INTERPRET:
        if len(interpreter) != 1:
            raise AssertionError("the interpreter config list must have exactly one entry")
        return _InterpreterConfigs(interpreter, gpu)
    return gpu


class _InterpreterConfigs(list):
    """The interpreter's list, keeping the GPU list beside it (``.gpu``): the tests run each GPU
    config under the interpreter too (``tests/test_gpu_configs.py``)."""

    def __init__(self, configs, gpu):
        super().__init__(configs)
        self.gpu = gpu


def fit_to_dtype(configs: list[triton.Config], element_size: int) -> list[triton.Config]:
    """Halve BLOCK_K for 4- and 8-byte operands: a K-slice of fp32 takes twice the shared memory
    per pipeline stage, and the bf16 tiles would overflow Hopper's 228 KB or spill."""
    if element_size < 4 or INTERPRET:
        return configs
    out = []
    for cfg in configs:
        kw = dict(cfg.kwargs)
        kw["BLOCK_K"] = max(16, kw["BLOCK_K"] // 2)
        out.append(triton.Config(kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    return out


def prune_by_dtype(first_ptr: str):
    """An autotune ``early_config_prune`` applying ``fit_to_dtype`` for the launch's dtype."""

    def prune(configs, named_args, **kwargs):
        t = named_args.get(first_ptr, kwargs.get(first_ptr))
        return fit_to_dtype(list(configs), t.element_size())

    return prune


def check_runnable(name: str, t: torch.Tensor) -> None:
    """Raise unless ``t`` lives where the kernels can run: a CUDA device, or the CPU under the
    interpreter. Never falls back to another implementation. Fake and meta tensors (shape-only
    tracing by ``torch.compile`` or ``opcheck``) pass: no kernel runs for them."""
    _refuse_compile_under_interpreter(t)
    if t.device.type == "meta" or _is_fake(t):
        return
    if t.device.type == "cuda":
        if INTERPRET:
            raise RuntimeError(
                f"{name} is a CUDA tensor but TRITON_INTERPRET=1 is set: the interpreter runs on "
                "CPU tensors only; unset TRITON_INTERPRET to use the GPU"
            )
        return
    if t.device.type == "cpu":
        if not INTERPRET:
            raise RuntimeError(
                f"{name} is a CPU tensor: cnnkernels needs a CUDA device, or TRITON_INTERPRET=1 "
                "set before triton is imported to run its kernels under Triton's interpreter"
            )
        return
    raise RuntimeError(f"{name} is on device {t.device}: cnnkernels runs on CUDA (or CPU under TRITON_INTERPRET=1)")


def shape_only(t: torch.Tensor) -> bool:
    """True for a fake or meta tensor under the interpreter: the launcher allocates its outputs
    (so shapes propagate) but launches nothing, since the interpreter would read the data.
    Without the interpreter the launch goes through ``wrap_triton``, which records it for
    ``torch.compile`` under fake tensors and runs nothing itself."""
    _refuse_compile_under_interpreter(t)
    return INTERPRET and (t.device.type == "meta" or _is_fake(t))


def _refuse_compile_under_interpreter(t: torch.Tensor) -> None:
    """Under the interpreter ``wrap_triton`` cannot record a kernel into a graph (it hands back
    the interpreted function), so what ``torch.compile`` traces (fake tensors inside a tracing
    context, functional tensors) would be a graph without the kernel: refuse, in one line."""
    if INTERPRET and (
        isinstance(t, FunctionalTensor) or (_is_fake(t) and torch._guards.TracingContext.try_get() is not None)
    ):
        raise RuntimeError(
            "torch.compile of cnnkernels ops needs a CUDA GPU: under TRITON_INTERPRET=1 Triton kernels "
            "cannot be captured into a compiled graph; call the model without torch.compile"
        )


def _is_fake(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor)


def nchw_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """(n, c, h, w) strides of a 4-D tensor, whatever its memory format."""
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def channels_last_copy(t: torch.Tensor) -> torch.Tensor:
    """``t`` copied channels_last, for a launcher whose kernel needs contiguous channels. The copy
    is a torch op, not a launch, so it is marked: an eager fast-path plan (``cnnkernels._fast``)
    replays launches only and must not take it for an allocation."""
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last).copy_(t)
    out.replay_derived = True
    return out


def vector_factor(*values: int, cap: int = 16) -> int:
    """The largest power of two, at most ``cap``, dividing every value. A kernel given it as a
    constexpr writes a stride or size as ``v // F * F``, so Triton's analysis knows the factor
    (it marks only arguments divisible by 16) and keeps loads of F contiguous elements whole."""
    return math.gcd(cap, *values)


def narrow_tiles(configs: list[triton.Config], size: int, block: str) -> list[triton.Config]:
    """The configs whose ``block`` is at most 64 when the dimension it tiles has at most 64
    elements (NiN's 10-class layer): a 128-wide tile would be mostly idle, and it spills
    (static, sm_90). Unchanged under the interpreter, or when none is that narrow."""
    if INTERPRET or size > 64:
        return configs
    return [cfg for cfg in configs if cfg.kwargs[block] <= 64] or configs


def short_reduction(configs: list[triton.Config], size: int) -> list[triton.Config]:
    """BLOCK_K cut to the reduction's length rounded up to a power of two (at least 16, the
    wgmma's K) when that is shorter (NiN's 10-channel 1x1 layers): a 64-wide K slice of 10 live
    channels is mostly masked lanes, and its tile spills (static, sm_90). Unchanged under the
    interpreter."""
    if INTERPRET:
        return configs
    k = max(16, triton.next_power_of_2(size))
    return [
        triton.Config({**cfg.kwargs, "BLOCK_K": k}, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        if cfg.kwargs["BLOCK_K"] > k
        else cfg
        for cfg in configs
    ]


def pixel_strides(*tensors: torch.Tensor) -> list[int]:
    """The n, h and w strides of 4-D tensors, in order (for ``vector_factor``)."""
    out = []
    for t in tensors:
        n, _, h, w = t.stride()
        out += (n, h, w)
    return out


def empty_padded_channels(n: int, c: int, h: int, w: int, device, dtype) -> torch.Tensor:
    """An (n, c, h, w) channels_last view of a buffer whose pixel stride is c rounded up to 16
    channels: a pixel stride Triton marks divisible by 16, so kernels reading the tensor (or a
    16-byte-aligned channel slice of it) keep their loads 16 bytes wide."""
    buf = torch.empty((n, -(-c // 16) * 16, h, w), device=device, dtype=dtype, memory_format=torch.channels_last)
    return buf[:, :c]


def on_tensor_device(launcher):
    """Run a launcher with its first tensor argument's GPU as the current device: triton
    launches on the current device, which need not be the tensors' (``cuda:1`` while device 0
    is current)."""

    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        t = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if t is None and args and isinstance(args[0], (list, tuple)):
            t = next((a for a in args[0] if isinstance(a, torch.Tensor)), None)
        if t is not None and t.device.type == "cuda" and t.device.index != torch.cuda.current_device():
            guard = torch.cuda.device(t.device)
        else:
            guard = contextlib.nullcontext()
        with guard:
            return launcher(*args, **kwargs)

    return wrapper


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot``: TF32 for fp32 exactly when cuDNN would use it."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not INTERPRET:
        return "tf32"
    return "ieee"


def dot_upcast(dtype: torch.dtype) -> bool:
    """bf16 ``tl.dot`` is wrong under the interpreter (it multiplies raw bit patterns), so there
    the operands are upcast to fp32 first; exact, since a bf16 x bf16 product fits in fp32."""
    return INTERPRET and dtype == torch.bfloat16


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulator dtype: fp64 for fp64 inputs (gradcheck), fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    return {
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
        torch.float32: tl.float32,
        torch.float64: tl.float64,
    }[dtype]


@triton.jit
def mma(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b. Every kernel's dot goes through here (see ``dot_upcast``)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)  # fp64: Triton 3.6 needs it


@triton.jit
def as_multiples(a, b, c, F: tl.constexpr):
    """a, b, c, which the launcher found to be multiples of F (``vector_factor``), written as
    such for Triton's analysis: it marks only arguments divisible by 16, and a stride known to
    divide by F keeps loads of F contiguous channels whole vectors."""
    return a // F * F, b // F * F, c // F * F


@triton.jit
def tile_of(pid, n_tiles):
    """(pid_m, pid_n) of program ``pid`` in a one-axis grid of (M tiles) x ``n_tiles``, the N
    tiles of one M tile consecutive. Hardware dispatches programs in order, so the N tiles that
    read one A tile (a block of activation pixels, the large operand of every conv GEMM) run
    together and read it once from HBM; the weights (at most a few MB) stay in L2 for every M
    tile. With M fastest, a layer whose activations exceed L2 read A once per N tile."""
    return pid // n_tiles, pid % n_tiles


@triton.jit
def nonfinite(x):
    """Elementwise: x is NaN or +-inf."""
    return (x != x) | (tl.abs(x) == float("inf"))


@triton.jit
def to_dtype(x, dtype: tl.constexpr):
    """``x.to(dtype)`` rounding to nearest even, as a GPU's fp32 -> bf16 conversion does. Under
    the interpreter that cast truncates (whatever rounding is asked for), which biases every bf16
    result towards zero and compounds over a model's layers; there the fp32 bits are rounded
    first, so the truncating cast lands on the nearest bf16. Compiled kernels cast directly."""
    if _ROUND_BF16:
        if dtype == tl.bfloat16:
            x = x.to(tl.float32)
            bits = x.to(tl.uint32, bitcast=True)
            rounded = bits + 0x7FFF + ((bits >> 16) & 1)
            # NaN stays NaN; zeros and subnormals are left to the cast (rounding their bits
            # would turn an exact 0, a ReLU's output, into a subnormal the cast mishandles).
            keep = (x != x) | ((bits & 0x7F800000) == 0)
            x = tl.where(keep, x, rounded.to(tl.float32, bitcast=True))
    return x.to(dtype)


# Open launch records (``cnnkernels._fast.planned``), per thread (replicas of a model may run on
# threads, one per GPU): each launch is appended to the innermost record of its own thread.
RECORDING = threading.local()


def launch(kernel, grid, *args, **kwargs) -> None:
    """Every launcher starts its kernel here: through ``torch.library.wrap_triton`` (looked up at
    call time), so ``torch.compile`` records the launch and the static report can intercept it.
    While a record is open the launch (and the config the autotuner chose) is also recorded, from
    which the eager fast path replays later calls."""
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)
    records = getattr(RECORDING, "stack", None)
    if records:
        records[-1].append((kernel, grid, args, kwargs, getattr(kernel, "best_config", None)))
