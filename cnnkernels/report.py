"""Static sm_90 report: every kernel, at each of its GPU configs, compiled for Hopper on the CPU.

``python -m cnnkernels.report`` prints kernel, config, registers, spills, shared memory and whether
the dot lowered to HGMMA (wgmma), and exits 1 if any config spills or a bf16/fp16 dot kernel lacks
HGMMA. No GPU is needed: triton compiles for ``GPUTarget("cuda", 90, 32)`` with the ``ptxas``,
``cuobjdump`` and ``nvdisasm`` shipped in its wheel. Figures are static, sm_90.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import triton
import triton.language as tl


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One kernel specialisation to compile: pointer dtypes by argument name, constexprs."""

    name: str
    kernel: object  # a triton Autotuner or JITFunction
    ptr_dtypes: dict[str, str]
    constexprs: dict[str, object]
    has_dot: bool = True
    dtype: str = "bf16"
    config_list: tuple = ()
    # Mirrors how triton specialises a real launch on channels_last tensors: these strides are
    # 1 (constexpr), other pointers and integers are divisible by 16 except the listed sizes.
    unit: tuple[str, ...] = ()
    odd: tuple[str, ...] = ("N", "H", "W", "P", "Q", "E", "SPLITS", "G", "CHUNK")

    @property
    def jit_fn(self):
        return getattr(self.kernel, "fn", self.kernel)

    @property
    def configs(self) -> list[triton.Config]:
        """The configs autotuning may pick for this dtype (after the kernels' dtype pruning)."""
        from cnnkernels.kernels._common import fit_to_dtype

        configs = list(self.config_list) or list(getattr(self.kernel, "configs", [triton.Config({})]))
        if self.has_dot:
            configs = fit_to_dtype(configs, 4 if self.dtype == "fp32" else 2)
        return configs


@dataclasses.dataclass(frozen=True)
class StaticResult:
    name: str
    dtype: str
    config: str
    registers: int
    spills: int
    shared: int
    hgmma: bool
    has_dot: bool

    @property
    def ok(self) -> bool:
        needs_hgmma = self.has_dot and self.dtype in ("bf16", "fp16")
        return self.spills == 0 and (self.hgmma or not needs_hgmma)


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _config_label(cfg: triton.Config) -> str:
    kw = ",".join(f"{k[6:] if k.startswith('BLOCK_') else k}={v}" for k, v in cfg.kwargs.items())
    return f"{kw} w{cfg.num_warps} s{cfg.num_stages}"


def compile_sm90(spec: KernelSpec, cfg: triton.Config) -> StaticResult:
    """Compile one (kernel, config) for sm_90 and read its resource usage from the cubin."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = spec.jit_fn
    constexprs = {**spec.constexprs, **cfg.kwargs, **dict.fromkeys(spec.unit, 1)}
    signature = {}
    attrs = {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            signature[name] = "*" + spec.ptr_dtypes.get(name, spec.dtype)
        else:
            signature[name] = "i32"
        if name not in spec.odd:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        res = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    stack = int(re.search(r"STACK:(\d+)", res).group(1))
    local = int(re.search(r"LOCAL:(\d+)", res).group(1))
    spill_ops = len(re.findall(r"\b(?:LDL|STL)\b", sass))
    return StaticResult(
        name=spec.name,
        dtype=spec.dtype,
        config=_config_label(cfg),
        registers=regs,
        spills=spill_ops + stack + local,
        shared=int(compiled.metadata.shared),
        hgmma="HGMMA" in sass,
        has_dot=spec.has_dot,
    )


def kernel_specs() -> list[KernelSpec]:
    """One representative specialisation of every kernel, per dtype that matters."""
    return _conv_specs() + _conv1x1_specs() + _pool_specs()


def _conv1x1_specs() -> list[KernelSpec]:
    from cnnkernels.kernels import conv1x1

    specs = []
    for dt in ("bf16", "fp16", "fp32"):
        dot = dict(INPUT_PRECISION="tf32" if dt == "fp32" else "ieee", UPCAST=False, ACC_DTYPE=tl.float32)
        odd = KernelSpec.odd + ("M", "HW", "SPLIT")
        specs += [
            KernelSpec(
                "conv1x1_fwd two-way",
                conv1x1._conv1x1_fwd_kernel,
                {},
                dict(HAS_BIAS=True, ACTIVATION="relu", TWO_WAY=True, **dot),
                dtype=dt,
                unit=("stride_xc", "stride_wc", "stride_b", "stride_y0c", "stride_y1c"),
                odd=odd,
            ),
            KernelSpec(
                "conv1x1_bwd_input two-way",
                conv1x1._conv1x1_bwd_input_kernel,
                {},
                dict(ACTIVATION="relu", TWO_WAY=True, **dot),
                dtype=dt,
                unit=("stride_dy0c", "stride_dy1c", "stride_y0c", "stride_y1c", "stride_wc", "stride_dxc"),
                odd=odd,
            ),
            KernelSpec(
                "conv1x1_bwd_weight two-way",
                conv1x1._conv1x1_bwd_weight_kernel,
                {"dw_part_ptr": "fp32", "db_part_ptr": "fp32"},
                dict(ACTIVATION="relu", TWO_WAY=True, NEED_DB=True, **dot),
                dtype=dt,
                unit=("stride_xc", "stride_dy0c", "stride_dy1c", "stride_y0c", "stride_y1c"),
                odd=odd,
            ),
        ]
    return specs


def _conv_specs() -> list[KernelSpec]:
    from cnnkernels.kernels import conv

    specs = []
    geo3 = dict(R=3, S=3, STRIDE_H=1, STRIDE_W=1, PAD_H=1, PAD_W=1, DIL_H=1, DIL_W=1)
    geo11 = dict(R=11, S=11, STRIDE_H=4, STRIDE_W=4, PAD_H=1, PAD_W=1, DIL_H=1, DIL_W=1)
    for dt in ("bf16", "fp16", "fp32"):
        dot = dict(INPUT_PRECISION="tf32" if dt == "fp32" else "ieee", UPCAST=False, ACC_DTYPE=tl.float32)
        for flat, geo, tag in ((False, geo3, "3x3"), (True, geo11, "11x11/4 C=1")):
            odd = KernelSpec.odd + (("C",) if flat else ())
            cl = tuple(conv.conv_configs(flat))
            specs.append(
                KernelSpec(
                    f"conv_fwd {tag}",
                    conv._conv_fwd_kernel,
                    {},
                    dict(**geo, FLAT=flat, HAS_BIAS=True, ACTIVATION="relu", **dot),
                    dtype=dt,
                    unit=("stride_xc", "stride_wc", "stride_yc", "stride_b"),
                    odd=odd,
                    config_list=cl,
                )
            )
            specs.append(
                KernelSpec(
                    f"conv_bwd_input {tag}",
                    conv._conv_bwd_input_kernel,
                    {},
                    dict(**geo, FLAT=flat, RESIDUE=not flat, ACTIVATION="relu", **dot),
                    dtype=dt,
                    unit=("stride_dyc", "stride_yc", "stride_wc", "stride_dxc"),
                    odd=odd,
                    config_list=cl,
                )
            )
            specs.append(
                KernelSpec(
                    f"conv_bwd_weight {tag}",
                    conv._conv_bwd_weight_kernel,
                    {"dw_part_ptr": "fp32", "db_part_ptr": "fp32"},
                    dict(**geo, FLAT=flat, ACTIVATION="relu", NEED_DB=True, **dot),
                    dtype=dt,
                    unit=("stride_xc", "stride_dyc", "stride_yc"),
                    odd=odd,
                    config_list=cl,
                )
            )
        specs.append(  # tap-wise dX of a strided layer: the stride's residue classes
            KernelSpec(
                "conv_bwd_input 11x11/4 K>=32",
                conv._conv_bwd_input_kernel,
                {},
                dict(**geo11, FLAT=False, RESIDUE=True, ACTIVATION="relu", **dot),
                dtype=dt,
                unit=("stride_dyc", "stride_yc", "stride_wc", "stride_dxc"),
                config_list=tuple(conv.conv_configs(False)),
            )
        )
        specs.append(
            KernelSpec(
                "conv_bwd_reduce",
                conv._conv_bwd_reduce_kernel,
                {"part_ptr": "fp32"},
                dict(R=3, S=3),
                has_dot=False,
                dtype=dt,
                unit=("stride_oc",),
            )
        )
    return specs


def _pool_specs() -> list[KernelSpec]:
    """Max pooling (3x3 stride 2 pad 1: AlexNet/GoogLeNet), adaptive and global average
    pooling, and the concatenation copy, on channels_last tensors (channel stride 1)."""
    from cnnkernels.kernels import avgpool, cat, pool

    specs = []
    geo = dict(R=3, S=3, STRIDE_H=2, STRIDE_W=2, PAD_H=1, PAD_W=1, DIL_H=1, DIL_W=1)
    acc = dict(ACC_DTYPE=tl.float32)
    for dt in ("bf16", "fp16", "fp32"):
        specs.append(
            KernelSpec(
                "max_pool2d_fwd 3x3/2",
                pool._max_pool2d_fwd_kernel,
                {"arg_ptr": "i8", "idx_ptr": "i8"},
                dict(**geo, RETURN_INDICES=False, **acc),
                has_dot=False,
                dtype=dt,
                unit=("stride_xc", "stride_yc"),
            )
        )
        specs.append(
            KernelSpec(
                "max_pool2d_bwd 3x3/2",
                pool._max_pool2d_bwd_kernel,
                {"arg_ptr": "i8"},
                dict(**geo, **acc),
                has_dot=False,
                dtype=dt,
                unit=("stride_dyc", "stride_ac", "stride_dxc"),
            )
        )
    for dt in ("bf16", "fp32"):
        specs += [
            KernelSpec(
                "adaptive_avg_pool2d_fwd",
                avgpool._adaptive_avg_pool2d_fwd_kernel,
                {},
                acc,
                has_dot=False,
                dtype=dt,
                unit=("stride_xc", "stride_yc"),
                odd=KernelSpec.odd + ("KH_MAX", "KW_MAX"),
            ),
            KernelSpec(
                "adaptive_avg_pool2d_bwd",
                avgpool._adaptive_avg_pool2d_bwd_kernel,
                {},
                acc,
                has_dot=False,
                dtype=dt,
                unit=("stride_dyc", "stride_dxc"),
                odd=KernelSpec.odd + ("PH_MAX", "QW_MAX"),
            ),
            KernelSpec(
                "global_avg_pool2d_fwd",
                avgpool._global_avg_pool2d_fwd_kernel,
                {},
                acc,
                has_dot=False,
                dtype=dt,
                unit=("stride_xc", "stride_yc"),
            ),
            KernelSpec(
                "global_avg_pool2d_bwd",
                avgpool._global_avg_pool2d_bwd_kernel,
                {},
                acc,
                has_dot=False,
                dtype=dt,
                unit=("stride_dyc", "stride_dxc"),
            ),
            KernelSpec(
                "cat_copy",
                cat._cat_copy_kernel,
                {},
                {},
                has_dot=False,
                dtype=dt,
                unit=("stride_x3", "stride_y3"),
                odd=("D0", "D1", "D2", "D3"),
            ),
        ]
    return specs


def run_report(specs: list[KernelSpec] | None = None) -> Iterator[StaticResult]:
    for spec in specs if specs is not None else kernel_specs():
        for cfg in spec.configs:
            yield compile_sm90(spec, cfg)


def format_table(results: list[StaticResult]) -> str:
    head = f"{'kernel':<30} {'dtype':<5} {'config':<28} {'regs':>4} {'spills':>6} {'smem':>7} {'HGMMA':>5}  ok"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.name:<30} {r.dtype:<5} {r.config:<28} {r.registers:>4} {r.spills:>6} {r.shared:>7} "
            f"{('yes' if r.hgmma else 'no'):>5}  {'ok' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m cnnkernels.report", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per compiled config instead of a table")
    parser.add_argument("--kernel", default="", help="only the kernels whose name starts with this")
    args = parser.parse_args(argv)
    specs = [s for s in kernel_specs() if s.name.startswith(args.kernel)]
    if not specs:
        print(f"no kernel name starts with {args.kernel!r}", file=sys.stderr)
        return 2
    results = list(run_report(specs))
    if args.json:
        for r in results:
            print(json.dumps({**dataclasses.asdict(r), "ok": r.ok}))
    else:
        print("Static, sm_90 (compiled on the CPU for GPUTarget('cuda', 90, 32)):")
        print(format_table(results))
    bad = [r for r in results if not r.ok]
    if bad:
        print(f"{len(bad)} config(s) spill or lack HGMMA", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
