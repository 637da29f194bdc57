"""Static sm_90 report: what a launch compiles, measured against Triton's own GEMM.

``python -m cnnkernels.report`` (or ``cnnkernels report``) needs no GPU: it captures, at
``torch.library.wrap_triton``, the launches of the models and the functional API's documented cases
(forward and backward, ``meta`` device), compiles each distinct one at every config its autotuner
keeps through ``JITFunction.warmup`` for ``GPUTarget("cuda", 90, 32)``, and reads the cubins with the
wheel's ``cuobjdump`` and ``ptxas``, next to Triton's tutorial pointer GEMM and a TMA GEMM as anchors.
It exits 1 when a row breaks ``LIMITS``; under ``TRITON_INTERPRET`` it re-runs itself without it.
The README's "Static report" section describes the columns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter, namedtuple
from collections.abc import Callable, Iterator

TARGET = ("cuda", 90, 32)

# The rules every compiled row is held to (``None``: shown, not enforced yet).
LIMITS: dict[str, object] = {
    "max_spills": 0,  # spill instructions + stack + local bytes
    "hgmma_dtypes": ("bf16", "fp16"),  # a dot kernel in these dtypes must lower to HGMMA (wgmma)
    "forbidden_warnings": ("C7515",),  # ptxas: wgmma.mma_async serialised
    # a main-loop global load of at most this many bits is scalar: none where every tensor allows 16-byte loads
    "scalar_load_bits": 32,
    # except this one: a TF32 wgmma reads both operands K-major, so an M- or N-contiguous fp32
    # operand is copied 4 bytes at a time (the fp32 tutorial anchor does the same)
    "tf32_mn_major_copy": "LDGSTS.32",
    "max_smem": 227 * 1024,  # shared memory per CTA (Hopper: 227 KB)
    # main-loop instructions per HGMMA over the same-dtype pointer anchor's, for these dtypes
    "max_loop_ratio": 1.3,
    "loop_ratio_dtypes": ("bf16", "fp16"),
    "max_loop_wait0": 0,  # wgmma waits to zero per main-loop iteration
    "hgmma_operands": "SS",  # both wgmma operands from shared memory (RS: A from registers)
}

# Hopper (H100/H200) per-SM resources for CTAs per SM.
SM90 = dict(regs=65536, reg_unit=256, max_warps=64, max_ctas=32, smem=228 * 1024, smem_reserved=1024)

DTYPES = ("bf16", "fp16", "fp32")
BATCHES = (1, 128)
MODELS = ("AlexNet", "VGG", "NiN", "GoogLeNet")
IMAGE = (1, 224, 224)  # the course's Fashion-MNIST images resized to 224


# Capturing launches on the meta device


@dataclasses.dataclass
class Launch:
    """One Triton launch as a launcher made it (kernel: an Autotuner or a JITFunction)."""

    kernel: object
    args: tuple
    kwargs: dict
    grid: object
    layer: str

    @property
    def jit_fn(self):
        from triton.runtime.jit import JITFunction

        fn = self.kernel
        while not isinstance(fn, JITFunction):
            fn = fn.fn
        return fn

    @property
    def family(self) -> str:
        return self.jit_fn.__name__.strip("_").removesuffix("_kernel")

    @property
    def dtype(self) -> str:
        import torch

        t = next(a for a in (*self.args, *self.kwargs.values()) if isinstance(a, torch.Tensor))
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}[t.dtype]


@contextlib.contextmanager
def capturing() -> Iterator[types.SimpleNamespace]:
    """Replaces ``torch.library.wrap_triton``: ``wrap_triton(k)[grid](...)`` appends the launch to
    ``launches`` instead of running it, labelled by the top of ``stack``, else ``backward_label``."""
    from unittest import mock

    rec = types.SimpleNamespace(launches=[], stack=[], backward_label="?")

    @dataclasses.dataclass
    class _Wrapped:
        kernel: object

        def __getitem__(self, grid):
            return lambda *args, **kwargs: rec.launches.append(
                Launch(self.kernel, args, kwargs, grid, rec.stack[-1] if rec.stack else rec.backward_label)
            )

    with mock.patch("torch.library.wrap_triton", _Wrapped):
        yield rec


def _torch_dtype(dtype: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def _meta_model(name: str, batch: int, dtype: str):
    """The model in train mode and an input batch, both on the meta device."""
    import torch

    from cnnkernels import models

    model = getattr(models, name)()
    model.materialize((batch, *IMAGE))
    x = torch.empty((batch, *IMAGE), device="meta", dtype=_torch_dtype(dtype))
    return model.to(x.dtype).to("meta").train(), x


@contextlib.contextmanager
def _labelled(model, prefix: str, rec) -> Iterator[None]:
    """Hooks, removed on exit, that tell the recorder which module a launch belongs to (an Inception
    block as a whole: it runs its branches itself)."""
    from cnnkernels.nn import Inception

    handles = []
    fused = [name for name, mod in model.named_modules() if isinstance(mod, Inception)]
    for name, mod in model.named_modules():
        if any(name.startswith(f + ".") for f in fused):
            continue
        label = f"{prefix} {name}" if name else prefix

        def pre(m, a, label=label):
            rec.stack.append(label)

        def post(m, a, o):
            rec.stack.pop()

        def bwd(m, g, label=label):
            rec.backward_label = f"{label} (backward)"

        handles += [
            mod.register_forward_pre_hook(pre),
            mod.register_forward_hook(post),
            mod.register_full_backward_pre_hook(bwd),
        ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


ModelCounts = namedtuple("ModelCounts", "model launches_forward launches_train_step torch_ops_forward")


def model_launches(name: str, batch: int, dtype: str) -> list[Launch]:
    """Every launch of one training step (forward and backward) of a model, labelled by layer."""
    model, x = _meta_model(name, batch, dtype)
    with capturing() as rec, _labelled(model, f"{name} b{batch}", rec):
        model(x).float().sum().backward()
    return rec.launches


def model_counts(name: str, batch: int = 128, dtype: str = "bf16") -> ModelCounts:
    """Triton launches per forward and per training step, other torch ops per forward (meta, train mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops: Counter = Counter()

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops[func.namespace] += 1
            return func(*args, **(kwargs or {}))

    model, x = _meta_model(name, batch, dtype)
    model(x)  # first call: weights to channels_last, once
    with capturing() as rec:
        with _Count():
            y = model(x)
        forward = len(rec.launches)
        y.float().sum().backward()
    other = sum(n for ns, n in ops.items() if ns != "cnnkernels")
    return ModelCounts(name, forward, len(rec.launches), other)


def functional_launches(batch: int, dtype: str) -> list[Launch]:
    """The functional API's documented cases (README), forward and backward, channels_last."""
    import torch

    import cnnkernels.functional as CF

    def t(*shape):  # 4-D tensors channels_last
        x = torch.empty(shape, device="meta", dtype=_torch_dtype(dtype))
        return (x.to(memory_format=torch.channels_last) if len(shape) == 4 else x).requires_grad_()

    x, w, wg = t(batch, 64, 56, 56), t(128, 64, 3, 3), t(128, 32, 3, 3)
    cases: list[tuple[str, Callable]] = [
        ("conv2d_relu 3x3 same", lambda: CF.conv2d_relu(x, w, t(128), stride=1, padding="same")),
        ("conv2d 3x3/2 pad (1,2) groups 2", lambda: CF.conv2d(x, wg, t(128), stride=2, padding=(1, 2), groups=2)),
        ("max_pool2d 3/2 ceil indices", lambda: CF.max_pool2d(x, 3, stride=2, ceil_mode=True, return_indices=True)[0]),
        ("adaptive_avg_pool2d 1", lambda: CF.adaptive_avg_pool2d(x, 1)),
        ("adaptive_avg_pool2d 7", lambda: CF.adaptive_avg_pool2d(x, 7)),
        ("cat dim 1", lambda: CF.cat([x, t(batch, 32, 56, 56)], dim=1)),
    ]
    launches = []
    for label, case in cases:
        with capturing() as rec:
            rec.stack.append(f"functional {label} b{batch}")
            y = case()
            rec.backward_label = f"{rec.stack.pop()} (backward)"
            # A dense dY laid out like y, as a following layer's dX would be (the gradient of a
            # sum is a stride-0 broadcast, which no layer inside a network receives).
            y.backward(torch.empty_like(y))
        launches += rec.launches
    return launches


# Anchors: Triton's tutorial pointer GEMM (03) and a descriptor (TMA) GEMM


def _anchor_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def grouped_pid(M, N, BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, GROUP_SIZE_M: tl.constexpr):
        """The tutorial's grouped program order (for L2 reuse): this program's (pid_m, pid_n)."""
        pid = tl.program_id(axis=0)
        num_pid_m = tl.cdiv(M, BLOCK_SIZE_M)
        num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
        num_pid_in_group = GROUP_SIZE_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_SIZE_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
        return first_pid_m + ((pid % num_pid_in_group) % group_size_m), (pid % num_pid_in_group) // group_size_m

    @triton.jit
    def anchor_pointer_gemm(
        a_ptr, b_ptr, c_ptr, M, N, K,
        stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
        BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
        GROUP_SIZE_M: tl.constexpr,
    ):  # fmt: skip
        """Triton's tutorial 03 matmul: pointer loads, grouped program order."""
        pid_m, pid_n = grouped_pid(M, N, BLOCK_SIZE_M, BLOCK_SIZE_N, GROUP_SIZE_M)
        offs_am = (pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)) % M
        offs_bn = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)) % N
        offs_k = tl.arange(0, BLOCK_SIZE_K)
        a_ptrs = a_ptr + (offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak)
        b_ptrs = b_ptr + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)
        accumulator = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
            a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_SIZE_K, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_SIZE_K, other=0.0)
            accumulator = tl.dot(a, b, accumulator)
            a_ptrs += BLOCK_SIZE_K * stride_ak
            b_ptrs += BLOCK_SIZE_K * stride_bk
        c = accumulator.to(c_ptr.dtype.element_ty)
        offs_cm = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
        offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
        c_ptrs = c_ptr + stride_cm * offs_cm[:, None] + stride_cn * offs_cn[None, :]
        c_mask = (offs_cm[:, None] < M) & (offs_cn[None, :] < N)
        tl.store(c_ptrs, c, mask=c_mask)

    @triton.jit
    def anchor_tma_gemm(
        a_ptr, b_ptr, c_ptr, M, N, K,
        BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
        GROUP_SIZE_M: tl.constexpr,
    ):  # fmt: skip
        """The same GEMM with tensor descriptors (TMA loads and store)."""
        pid_m, pid_n = grouped_pid(M, N, BLOCK_SIZE_M, BLOCK_SIZE_N, GROUP_SIZE_M)
        a_desc = tl.make_tensor_descriptor(
            a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_SIZE_M, BLOCK_SIZE_K]
        )
        b_desc = tl.make_tensor_descriptor(
            b_ptr, shape=[K, N], strides=[N, 1], block_shape=[BLOCK_SIZE_K, BLOCK_SIZE_N]
        )
        c_desc = tl.make_tensor_descriptor(
            c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_SIZE_M, BLOCK_SIZE_N]
        )
        accumulator = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
            a = a_desc.load([pid_m * BLOCK_SIZE_M, k * BLOCK_SIZE_K])
            b = b_desc.load([k * BLOCK_SIZE_K, pid_n * BLOCK_SIZE_N])
            accumulator = tl.dot(a, b, accumulator)
        c_desc.store([pid_m * BLOCK_SIZE_M, pid_n * BLOCK_SIZE_N], accumulator.to(c_desc.dtype))

    return anchor_pointer_gemm, anchor_tma_gemm


ANCHOR_CONFIG = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, GROUP_SIZE_M=8, num_warps=8, num_stages=3)


def anchor_launches(dtypes=DTYPES) -> list[Launch]:
    """The pointer GEMM per dtype and the descriptor GEMM in bf16, 4096^3, row-major operands."""
    import torch

    pointer, descriptor = _anchor_kernels()
    size = 4096
    out = []
    for dtype in dtypes:
        a, b, c = (torch.empty(size, size, device="meta", dtype=_torch_dtype(dtype)) for _ in range(3))
        args = (a, b, c, size, size, size, *a.stride(), *b.stride(), *c.stride())
        out.append(Launch(pointer, args, dict(ANCHOR_CONFIG), (1,), "anchor: tutorial pointer GEMM 4096^3"))
        if dtype == "bf16":  # the descriptor GEMM takes (a, b, c, M, N, K) alone
            out.append(Launch(descriptor, args[:6], dict(ANCHOR_CONFIG), (1,), "anchor: TMA GEMM 4096^3"))
    return out


# Compiling through Triton's own binder for sm_90


@contextlib.contextmanager
def sm90_driver():
    """The active driver replaced by one for sm_90 that answers what ``warmup`` asks: target, device, stream."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    saved, target = driver._active, GPUTarget(*TARGET)
    driver.set_active(
        types.SimpleNamespace(
            get_current_target=lambda: target,
            get_current_device=lambda: 0,
            get_current_stream=lambda device=None: 0,
            get_active_torch_device=lambda: torch.device("meta"),
        )
    )
    try:
        yield
    finally:
        driver._active = saved


def configs_kept(launch: Launch) -> list:
    """The configs the launch's autotuner keeps after its early prune (``[None]`` for a plain JIT launch)."""
    tuner = launch.kernel
    if not hasattr(tuner, "prune_configs"):
        return [None]
    tuner.nargs = dict(zip(tuner.arg_names, launch.args))
    try:
        return list(tuner.prune_configs(dict(launch.kwargs)))
    finally:
        tuner.nargs = None


def _launch_kwargs(launch: Launch, cfg) -> dict:
    return {**launch.kwargs, **(cfg.all_kwargs() if cfg is not None else {})}


def compile_launch(launch: Launch, cfg):
    """Compile one launch at one config exactly as ``JITFunction.run`` would, for sm_90."""
    with sm90_driver():
        return launch.jit_fn.warmup(*launch.args, grid=launch.grid, **_launch_kwargs(launch, cfg))


def config_label(launch: Launch, cfg) -> str:
    opts = cfg.all_kwargs() if cfg is not None else launch.kwargs
    kw = dict(cfg.kwargs) if cfg is not None else {k: v for k, v in opts.items() if k.startswith("BLOCK")}
    short = ",".join(f"{re.sub(r'^BLOCK_(SIZE_)?', '', k)}={v}" for k, v in kw.items())
    return f"{short} w{opts.get('num_warps', 4)} s{opts.get('num_stages', 3)}"


# Reading the compiled code


def _tool(name: str) -> str:
    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    if name == "ptxas":  # the ptxas Triton itself runs for this architecture
        return get_ptxas(TARGET[1]).path
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_run = functools.partial(subprocess.run, capture_output=True, text=True)


def _opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0]


def main_loop(instrs: list[tuple[int, str]]) -> list[str] | None:
    """The main loop's instructions: of the loops closed by a backward branch, the innermost with
    the most HGMMAs; without HGMMA, the longest."""
    loops = []
    for addr, ins in instrs:
        m = re.search(r"0x([0-9a-f]+)", ins) if _opcode(ins).startswith("BRA") else None
        if m and (start := int(m.group(1), 16)) < addr:
            loops.append([i for a, i in instrs if start <= a <= addr])
    if not loops:
        return None
    hg = [sum(_opcode(i).startswith("HGMMA") for i in body) for body in loops]
    if max(hg) > 0:
        return min((b for b, n in zip(loops, hg) if n == max(hg)), key=len)
    return max(loops, key=len)


def _load_kind(ins: str) -> str | None:
    """``LDG.<bits>`` or ``LDGSTS.<bits>`` (the last size suffix, else 32 bits), ``UTMALDG``, or None."""
    base, *parts = _opcode(ins).split(".")
    if base not in ("LDG", "LDGSTS"):
        return "UTMALDG" if base == "UTMALDG" else None
    bits = [p.lstrip("US") for p in parts if p in ("128", "64", "U16", "S16", "U8", "S8")]
    return f"{base}.{bits[-1] if bits else 32}"


def analyse_sass(sass: str) -> dict:
    """The first HGMMA's shape and operand source, spill instructions and the main loop of a kernel's SASS."""
    # (address, instruction) for every SASS instruction of the (single) kernel
    instrs = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.+?)\s*;", sass)]
    hgmma = [i for _, i in instrs if _opcode(i).startswith("HGMMA")]
    out = dict(hgmma=None, operands=None, loop_instr=None, loop_hgmma=None, loop_loads={}, loop_wait0=None)
    out["spill_ops"] = sum(_opcode(i).split(".")[0] in ("LDL", "STL") for _, i in instrs)
    if hgmma:
        _, op, args = hgmma[0].partition(_opcode(hgmma[0]))
        m = re.match(r"HGMMA\.(\d+x\d+x\d+)", op)
        out["hgmma"] = m.group(1) if m else op
        # after the accumulator: a descriptor (SS, A in shared memory) or A's registers (RS)
        out["operands"] = "SS" if re.match(r"[^,]*,\s*gdesc", args) else "RS"
    loop = main_loop(instrs)
    if loop is not None:
        loads = Counter(k for k in map(_load_kind, loop) if k)
        out.update(
            loop_instr=len(loop),
            loop_hgmma=sum(_opcode(i).startswith("HGMMA") for i in loop),
            loop_loads=dict(sorted(loads.items())),
            loop_wait0=sum(bool(re.search(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x0\b", i)) for i in loop),
        )
    return out


def _ptxas_warnings(ptx: str, fp_fusion: bool) -> list[str]:
    """ptxas warning codes for this PTX, compiled as Triton compiles it, warnings on."""
    import inspect

    from triton.backends.nvidia import compiler as nv

    extra = ["--regAllocOptLevel=2"] if "regAllocOptLevel" in inspect.getsource(nv.CUDABackend.make_cubin) else []
    with tempfile.TemporaryDirectory() as d:
        src = pathlib.Path(d, "k.ptx")
        src.write_text(ptx)
        cmd = [_tool("ptxas"), "-lineinfo", "-v", "--warn-on-spills", *(["--fmad=false"] if not fp_fusion else [])]
        cmd += [*extra, "--gpu-name=sm_90a", src, "-o", os.path.join(d, "k.o")]
        log = _run(cmd).stderr
    # C7515 and its kin come as "info : (C7515) Potential Performance Loss: ..."
    spill = {"spill"} if re.search(r"warning\s*:.*spill", log, re.IGNORECASE) else set()
    return sorted(set(re.findall(r"\((C\d{4})\)", log)) | spill)


_ANALYSIS_VERSION = 2  # bump when ``analyse`` changes what it stores


def analyse(kernel) -> dict:
    """Everything the report reads from one compiled kernel, cached on disk by its code."""
    ptx, cubin = kernel.asm["ptx"], kernel.asm["cubin"]
    key = hashlib.sha256(cubin + ptx.encode() + f"{_tool('ptxas')} {_ANALYSIS_VERSION}".encode()).hexdigest()[:32]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = pathlib.Path(base, "cnnkernels", "static-sm90", key + ".json")
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as d:
        fbin = pathlib.Path(d, "k.cubin")
        fbin.write_bytes(cubin)
        res, sass = (_run([_tool("cuobjdump"), flag, fbin], check=True).stdout for flag in ("-res-usage", "-sass"))
    out = analyse_sass(sass)
    regs, stack, local = (int(re.search(rf"{k}:(\d+)", res).group(1)) for k in ("REG", "STACK", "LOCAL"))
    out.update(regs=regs, spills=out.pop("spill_ops") + stack + local)
    out["warnings"] = _ptxas_warnings(ptx, getattr(kernel.metadata, "enable_fp_fusion", True))
    out["has_dot"] = bool(re.search(r"\btt\.dot(_scaled)?\b", kernel.asm.get("ttir", "")))
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
    return out


def ctas_per_sm(regs: int, smem: int, warps: int) -> int:
    """Resident CTAs per SM on sm_90 from registers, shared memory and warps."""
    per_warp = math.ceil(max(regs, 1) * 32 / SM90["reg_unit"]) * SM90["reg_unit"]
    by_regs = (SM90["regs"] // per_warp) // warps
    by_smem = SM90["smem"] // (smem + SM90["smem_reserved"]) if smem else SM90["max_ctas"]
    return max(0, min(by_regs, by_smem, SM90["max_warps"] // warps, SM90["max_ctas"]))


def allows_16_byte_loads(launch: Launch) -> bool:
    """Every tensor of the launch 16-byte aligned, unit-stride along its channels (4-D) or last dim
    with a multiple of 16 bytes there, and every other stride a multiple of 16 bytes."""
    import torch

    tensors = [a for a in (*launch.args, *launch.kwargs.values()) if isinstance(a, torch.Tensor)]
    for t in tensors:
        es, dim = t.element_size(), 1 if t.dim() == 4 else t.dim() - 1
        other = any((st * es) % 16 for d, (st, n) in enumerate(zip(t.stride(), t.shape)) if d != dim and n > 1)
        if t.data_ptr() % 16 or t.stride(dim) != 1 or (t.shape[dim] * es) % 16 or other:
            return False
    return bool(tensors)


# Rows


@dataclasses.dataclass
class Row:
    kernel: str
    layer: str
    dtype: str
    config: str
    regs: int
    spills: int
    smem: int
    ctas_per_sm: int
    hgmma: str | None
    operands: str | None
    loop_instr: int | None
    loop_hgmma: int | None
    loop_ratio: float | None
    loop_loads: dict
    loop_wait0: int | None
    warnings: list
    anchor: bool
    ok: bool = True
    has_dot: bool = False
    vector_layout: bool = False
    layers: int = 1
    failures: list = dataclasses.field(default_factory=list)

    @property
    def instr_per_hgmma(self) -> float | None:
        return self.loop_instr / self.loop_hgmma if self.loop_hgmma else None


def check(row: Row) -> list[str]:
    """The rules of ``LIMITS`` that ``row`` breaks."""
    bad = []
    if row.spills > LIMITS["max_spills"]:
        bad.append(f"spills {row.spills}")
    if row.has_dot and row.dtype in LIMITS["hgmma_dtypes"] and not row.hgmma:
        bad.append("dot without HGMMA")
    bad += [f"ptxas {w}" for w in row.warnings if w in LIMITS["forbidden_warnings"]]
    if row.vector_layout:
        tf32_copy = LIMITS["tf32_mn_major_copy"] if row.dtype == "fp32" and row.hgmma is not None else None
        narrow = [k for k in row.loop_loads if k != "UTMALDG" and int(k.split(".")[1]) <= LIMITS["scalar_load_bits"]]
        scalar = ",".join(f"{k}x{row.loop_loads[k]}" for k in narrow if k != tf32_copy)
        if scalar:
            bad.append("scalar loads in main loop " + scalar)
    if row.smem > LIMITS["max_smem"]:
        bad.append(f"smem {row.smem}")
    ratio = row.loop_ratio if row.dtype in LIMITS["loop_ratio_dtypes"] else None
    if LIMITS["max_loop_ratio"] is not None and ratio is not None and ratio > LIMITS["max_loop_ratio"]:
        bad.append(f"loop ratio {ratio:.2f}")
    if LIMITS["max_loop_wait0"] is not None and (row.loop_wait0 or 0) > LIMITS["max_loop_wait0"]:
        bad.append(f"{row.loop_wait0} wgmma waits to zero per iteration")
    if LIMITS["hgmma_operands"] is not None and row.hgmma and row.operands != LIMITS["hgmma_operands"]:
        bad.append(f"wgmma operands {row.operands}")
    return bad


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def collect_launches(quick: bool, dtypes=DTYPES, layer_prefixes: tuple[str, ...] = ("",)) -> list[Launch]:
    """Every launch of the four models (batch 1 and 128) and the functional cases, per dtype, in
    layers starting with one of ``layer_prefixes``; with ``quick``, GoogLeNet and the functional
    cases at batch 128, one specialisation per family (picked among those layers)."""
    launches = []
    for dtype in dtypes:
        if quick:
            group = model_launches("GoogLeNet", 128, dtype) + functional_launches(128, dtype)
            launches += _most_common_per_family([lc for lc in group if lc.layer.startswith(layer_prefixes)])
        else:
            for batch in BATCHES:
                for name in MODELS:
                    launches += model_launches(name, batch, dtype)
                launches += functional_launches(batch, dtype)
    return [lc for lc in launches if lc.layer.startswith(layer_prefixes)]


def _most_common_per_family(launches: list[Launch]) -> list[Launch]:
    """Per kernel family, a launch of the specialisation the most launches share."""
    keys = [specialisation_key(lc, configs_kept(lc)[0]) for lc in launches]
    by_key = Counter(keys)
    best: dict[str, tuple[Launch, str]] = {}
    for lc, key in zip(launches, keys):
        if lc.family not in best or by_key[key] > by_key[best[lc.family][1]]:
            best[lc.family] = (lc, key)
    return [lc for lc, _ in best.values()]


def run_report(
    quick: bool = False,
    kernel_prefix: str = "",
    dtypes=DTYPES,
    jobs: int = 1,
    layer_prefixes: tuple[str, ...] = ("",),
) -> tuple[list[Row], list[ModelCounts]]:
    """Compile and read every row (of the kernel families starting with ``kernel_prefix``, in
    layers starting with one of ``layer_prefixes``); progress (one line per kernel family, a
    totals line) to stderr."""
    import warnings

    with warnings.catch_warnings():
        # Triton 3.9 warns once that TRITON_DEFAULT_FP_FUSION is unset (a launch compiles with the
        # same default); the backward hooks that label layers warn on the first layer's input.
        warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
        warnings.filterwarnings("ignore", message="Full backward hook is firing.*")
        t_all = time.perf_counter()
        anchors = anchor_launches(dtypes)
        launches = [
            lc for lc in collect_launches(quick, dtypes, tuple(layer_prefixes)) if lc.family.startswith(kernel_prefix)
        ]
        counts = [model_counts(name) for name in MODELS]
        # One job per distinct (specialisation, config); the launches sharing it are its layers.
        groups: dict[str, list] = {}
        for lc in [*anchors, *launches]:
            for cfg in configs_kept(lc):
                groups.setdefault(specialisation_key(lc, cfg), [lc, cfg, 0])[2] += 1

        _JOBS[:] = groups.values()
        _progress(
            f"{'captured launches':<28} {len(launches):>5} launches, {len(_JOBS)} distinct compiles "
            f"{time.perf_counter() - t_all:7.1f} s"
        )

        families: dict[str, list[int]] = {}
        for i, (lc, *_) in enumerate(_JOBS):
            families.setdefault("anchor" if lc.layer.startswith("anchor") else lc.family, []).append(i)

        results: dict[int, tuple] = {}
        # fork: the workers inherit the captured launches (nothing but job numbers is pickled)
        pool = multiprocessing.get_context("fork").Pool(jobs) if jobs > 1 else None
        with pool or contextlib.nullcontext():
            for family, idx in families.items():
                t0 = time.perf_counter()
                results.update({i: res for i, *res in (pool.imap_unordered if pool else map)(_compile_job, idx)})
                _progress(f"{family:<28} {len(idx):>5} compiles {time.perf_counter() - t0:7.1f} s")

        rows: dict[tuple, Row] = {}
        for i, (lc, cfg, layers) in enumerate(_JOBS):
            khash, smem, a = results[i]
            key = (khash, lc.dtype)
            if key in rows:
                rows[key].layers += layers
                continue
            opts = cfg.all_kwargs() if cfg is not None else lc.kwargs
            rows[key] = Row(
                **a,  # what ``analyse`` read: regs, spills, hgmma, operands, loop_*, warnings, has_dot
                kernel=lc.family,
                layer=lc.layer,
                dtype=lc.dtype,
                config=config_label(lc, cfg),
                smem=smem,
                ctas_per_sm=ctas_per_sm(a["regs"], smem, opts.get("num_warps", 4)),
                loop_ratio=None,
                anchor=lc.layer.startswith("anchor"),
                vector_layout=allows_16_byte_loads(lc),
                layers=layers,
            )

        out = list(rows.values())
        pointer = {r.dtype: r.instr_per_hgmma for r in out if r.kernel == "anchor_pointer_gemm" and r.instr_per_hgmma}
        for row in out:
            base = pointer.get(row.dtype)  # the same-dtype pointer anchor's instructions per HGMMA
            if base and row.instr_per_hgmma:
                row.loop_ratio = round(row.instr_per_hgmma / base, 2)
            row.failures = check(row)
            row.ok = not row.failures
        _progress(
            f"{'total':<28} {len(out):>5} rows {time.perf_counter() - t_all:7.1f} s: {len(launches)} launches, "
            f"{len(_JOBS)} compiles, {sum(not r.ok for r in out)} row(s) failing LIMITS"
        )
        return out, counts


def specialisation_key(launch: Launch, cfg) -> str:
    """Triton's own cache key (binder specialisation and options) of this launch at ``cfg`` on sm_90."""
    fn = launch.jit_fn
    with sm90_driver():
        binder = fn.device_caches[0][-1]
        _, specialization, options = binder(*launch.args, **_launch_kwargs(launch, cfg))
    return f"{fn.__name__}|{specialization}|{sorted(options.items())}"


_JOBS: list[list] = []  # [launch, config, layers sharing it]; read by forked workers


def _compile_job(i: int) -> tuple[int, str, int, dict]:
    kernel = compile_launch(*_JOBS[i][:2])  # launch, config
    return i, kernel.hash, int(kernel.metadata.shared), analyse(kernel)


# Output

JSON_KEYS = (
    "kernel layer dtype config regs spills smem ctas_per_sm hgmma operands loop_instr loop_hgmma loop_ratio "
    "loop_loads loop_wait0 warnings anchor ok"
).split()


def row_json(row: Row) -> dict:
    return {k: getattr(row, k) for k in (*JSON_KEYS, "layers", "failures", "vector_layout", "has_dot")}


def _loads(loads: dict) -> str:
    return " ".join(f"{k}x{n}" for k, n in loads.items()) or "-"


def format_table(rows: list[Row], counts: list[ModelCounts]) -> str:
    head = (
        f"{'kernel':<22} {'dtype':<5} {'config':<22} {'regs':>4} {'spl':>3} {'smem':>6} {'cta':>3} "
        f"{'HGMMA':<11} {'op':<2} {'loop':>4} {'hg':>3} {'/hg':>5} {'xanc':>5} {'w0':>2} {'loads':<26} "
        f"{'warn':<6} {'ok':<4} layer"
    )
    lines = ["static, sm_90 (GPUTarget('cuda', 90, 32), compiled as a launch compiles)", head, "-" * len(head)]

    def fmt(v, spec=""):
        return "-" if v is None else format(v, spec)

    for r in sorted(rows, key=lambda r: (not r.anchor, r.kernel, r.dtype, r.layer, r.config)):
        layer = r.layer + (f" (+{r.layers - 1} more)" if r.layers > 1 else "")
        lines.append(
            f"{r.kernel:<22} {r.dtype:<5} {r.config:<22} {r.regs:>4} {r.spills:>3} {r.smem:>6} {r.ctas_per_sm:>3} "
            f"{fmt(r.hgmma):<11} {fmt(r.operands):<2} {fmt(r.loop_instr):>4} {fmt(r.loop_hgmma):>3} "
            f"{fmt(r.instr_per_hgmma, '.1f'):>5} {fmt(r.loop_ratio, '.2f'):>5} {fmt(r.loop_wait0):>2} "
            f"{_loads(r.loop_loads):<26} {','.join(r.warnings) or '-':<6} {'ok' if r.ok else 'FAIL':<4} {layer}"
        )
    lines += ["", "per model (static counts, meta device, batch 128, train mode):"]
    lines.append(f"{'model':<10} {'launches/forward':>16} {'launches/train step':>19} {'other torch ops/forward':>23}")
    for c in counts:
        lines.append(f"{c.model:<10} {c.launches_forward:>16} {c.launches_train_step:>19} {c.torch_ops_forward:>23}")
    failing = [r for r in rows if not r.ok]
    if failing:
        lines += ["", f"{len(failing)} row(s) break LIMITS:"]
        lines += [f"  {r.kernel} {r.dtype} {r.config} [{r.layer}]: {'; '.join(r.failures)}" for r in failing]
    return "\n".join(lines)


def _reexec_without_interpreter(argv: list[str]) -> int | None:
    """Under ``TRITON_INTERPRET`` jit functions are interpreter objects: run again without it."""
    if os.environ.get("TRITON_INTERPRET", "") in ("", "0"):
        return None
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "cnnkernels.report", *argv], env=env).returncode


def add_options(parser) -> None:
    """The report's options, shared by ``cnnkernels report``."""
    from cnnkernels.cli import positive_int

    parser.add_argument("--json", action="store_true", help="one JSON object per row, then one per model")
    parser.add_argument("--quick", action="store_true", help="one representative layer per kernel family")
    parser.add_argument("--kernel", default="", help="only the kernel families whose name starts with this")
    parser.add_argument(
        "--layer",
        action="append",
        help="only the launches whose layer starts with this, e.g. 'GoogLeNet b128 net.3.' (repeatable)",
    )
    parser.add_argument("--dtype", choices=DTYPES, action="append", help="only these dtypes (repeatable)")
    parser.add_argument("--jobs", type=positive_int, default=2, help="compile in this many processes (default: 2)")


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    rc = _reexec_without_interpreter(argv)
    if rc is not None:
        return rc
    parser = argparse.ArgumentParser(prog="python -m cnnkernels.report", description=__doc__.splitlines()[0])
    add_options(parser)
    args = parser.parse_args(argv)
    rows, counts = run_report(
        quick=args.quick,
        kernel_prefix=args.kernel,
        dtypes=tuple(args.dtype or DTYPES),
        jobs=args.jobs,
        layer_prefixes=tuple(args.layer or [""]),
    )
    if all(r.anchor for r in rows):
        print(
            f"no launch of a kernel family starting with {args.kernel!r} in layers {args.layer or 'any'}",
            file=sys.stderr,
        )
        return 2
    if args.json:
        for obj in [*map(row_json, rows), *(c._asdict() for c in counts)]:
            print(json.dumps(obj))
    else:
        print(format_table(rows, counts))
    return 1 if any(not r.ok for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
