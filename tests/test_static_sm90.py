"""Static, sm_90: the quick report (one representative layer per kernel family, bf16/fp16/fp32,
every config its autotuner keeps) compiled as a launch compiles, held to ``report.LIMITS``.

The report runs in a subprocess with ``TRITON_INTERPRET=1`` still set (this suite sets it): the
report must re-run itself without the interpreter. When the Triton 3.6 side venv exists
(``make venv36``), the same quick report runs under Triton 3.6 and is held to the same limits.
Every row must hold every limit: no row is excused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnkernels import report

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = {"3.9": sys.executable, "3.6": str(ROOT / ".venv" / "triton36" / "bin" / "python")}


def _run(python: str, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run(
        [python, "-m", "cnnkernels.report", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _parse(stdout: str) -> tuple[list[dict], list[dict]]:
    objs = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [o for o in objs if "kernel" in o], [o for o in objs if "model" in o]


@pytest.fixture(scope="module", params=sorted(PYTHONS))
def quick(request):
    python = PYTHONS[request.param]
    if not os.path.exists(python):
        pytest.skip(f"no Triton {request.param} side venv: `make venv36` builds it")
    proc = _run(python, "--quick", "--json")
    rows, models = _parse(proc.stdout)
    if not rows:
        pytest.fail(f"the report printed no rows (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return request.param, proc, rows, models


def _key(version: str, row: dict) -> tuple[str, str, str, str]:
    return (version, row["kernel"], row["dtype"], row["config"])


def _kernel_families() -> set[str]:
    """Every ``*_kernel`` of the kernel modules: each must show up in the quick report."""
    import importlib
    import pkgutil

    import cnnkernels.kernels as pkg

    out = set()
    for mod in pkgutil.iter_modules(pkg.__path__):
        m = importlib.import_module(f"cnnkernels.kernels.{mod.name}")
        for name, obj in vars(m).items():
            if name.endswith("_kernel") and (hasattr(obj, "fn") or hasattr(obj, "arg_names")):
                out.add(name.strip("_").removesuffix("_kernel"))
    return out


def test_exit_status_matches_rows(quick):
    _, proc, rows, _ = quick
    assert proc.returncode == (1 if any(not r["ok"] for r in rows) else 0), proc.stderr[-3000:]


def test_schema(quick):
    _, _, rows, models = quick
    for r in rows:
        assert set(report.JSON_KEYS) <= set(r), sorted(set(report.JSON_KEYS) - set(r))
        assert r["operands"] in ("SS", "RS", None)
        assert (r["hgmma"] is None) == (r["operands"] is None)
        assert isinstance(r["loop_loads"], dict) and isinstance(r["warnings"], list)
    assert [m["model"] for m in models] == list(report.MODELS)
    for m in models:
        assert 0 < m["launches_forward"] < m["launches_train_step"]
        assert m["torch_ops_forward"] >= 0


def test_every_kernel_family_compiles(quick):
    _, _, rows, _ = quick
    missing = _kernel_families() - {r["kernel"] for r in rows}
    assert not missing, f"no sm_90 compile of {sorted(missing)}"


def test_anchors_first_and_ratios(quick):
    _, _, rows, _ = quick
    anchors = [r for r in rows if r["anchor"]]
    assert rows[: len(anchors)] == anchors
    assert {r["kernel"] for r in anchors} == {"anchor_pointer_gemm", "anchor_tma_gemm"}
    pointer = next(r for r in anchors if r["kernel"] == "anchor_pointer_gemm" and r["dtype"] == "bf16")
    assert pointer["hgmma"] and pointer["operands"] == "SS" and pointer["loop_ratio"] == 1.0
    tma = next(r for r in anchors if r["kernel"] == "anchor_tma_gemm")
    assert tma["loop_loads"].get("UTMALDG", 0) > 0
    for r in rows:
        if r["hgmma"]:
            assert r["loop_hgmma"] and r["loop_ratio"] is not None, r


def test_half_precision_dots_use_hgmma(quick):
    _, _, rows, _ = quick
    families = (
        "conv_fwd",
        "conv_bwd_input",
        "conv_bwd_weight",
        "conv_bwd_weight_rows",
        "conv1x1_fwd",
        "conv1x1_bwd_input",
        "conv1x1_bwd_weight",
        "conv_relu_max_pool_fwd",
        "max_pool_conv1x1_fwd",
    )
    for family in families:
        assert any(r["kernel"] == family and r["dtype"] == "bf16" and r["hgmma"] for r in rows), family


def test_every_row_holds_the_limits(quick):
    version, _, rows, _ = quick
    bad = {_key(version, r): r["failures"] for r in rows if not r["ok"]}
    assert not bad, "\n".join(f"{k}: {v}" for k, v in bad.items())


# ---------------------------------------------------------------------------------------------
# The rules and the SASS reading, on synthetic input (no compile)
# ---------------------------------------------------------------------------------------------


def _row(**kw) -> report.Row:
    base = dict(
        kernel="k",
        layer="l",
        dtype="bf16",
        config="c",
        regs=128,
        spills=0,
        smem=0,
        ctas_per_sm=1,
        hgmma="64x128x16",
        operands="SS",
        loop_instr=100,
        loop_hgmma=4,
        loop_ratio=1.0,
        loop_loads={"LDGSTS.128": 8},
        loop_wait0=0,
        warnings=[],
        anchor=False,
        has_dot=True,
        vector_layout=True,
    )
    return report.Row(**{**base, **kw})


def test_rules():
    assert report.check(_row()) == []
    assert report.check(_row(spills=4))
    assert report.check(_row(hgmma=None, operands=None))
    assert report.check(_row(hgmma=None, operands=None, dtype="fp32")) == []
    assert report.check(_row(warnings=["C7515"]))
    assert report.check(_row(loop_loads={"LDGSTS.128": 8, "LDG.16": 16}))
    assert report.check(_row(loop_loads={"LDG.32": 16}, dtype="fp32", hgmma=None, has_dot=False))
    # the layout does not allow 16-byte loads: scalar loads are shown, not failed
    assert report.check(_row(loop_loads={"LDG.16": 16}, vector_layout=False)) == []
    # a TF32 wgmma's MN-major operand is copied 4 bytes at a time; any other narrow load fails
    assert report.check(_row(dtype="fp32", hgmma="64x128x8", loop_loads={"LDGSTS.32": 16})) == []
    assert report.check(_row(dtype="fp32", hgmma="64x128x8", loop_loads={"LDG.32": 16}))
    # the wgmma reads both operands from shared memory and is never waited to zero inside the loop
    assert report.check(_row(operands="RS")) == ["wgmma operands RS"]
    assert report.check(_row(loop_wait0=1)) == ["1 wgmma waits to zero per iteration"]
    assert report.check(_row(dtype="fp32", hgmma="64x128x8", loop_wait0=2))


SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64] ;
        /*0020*/                   LDG.E.U16 R5, desc[UR4][R6.64] ;
        /*0030*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ;
        /*0040*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0050*/               @P0 BRA 0x10 ;
        /*0060*/                   STG.E.128 desc[UR4][R8.64], R12 ;
        /*0070*/                   EXIT ;
        /*0080*/                   BRA 0x80;
"""


def test_sass_reading():
    a = report.analyse_sass(SASS)
    assert a["hgmma"] == "64x128x16" and a["operands"] == "SS"
    assert a["loop_instr"] == 5 and a["loop_hgmma"] == 1 and a["loop_wait0"] == 1
    assert a["loop_loads"] == {"LDG.16": 1, "LDGSTS.128": 1}
    rs = report.analyse_sass(SASS.replace("R24, gdesc[UR8]", "R24, R88, gdesc[UR8]"))
    assert rs["operands"] == "RS"
    assert report.analyse_sass(SASS.replace("@P0 BRA 0x10", "NOP"))["loop_instr"] is None


def test_ctas_per_sm():
    assert report.ctas_per_sm(regs=122, smem=98304, warps=8) == 2
    assert report.ctas_per_sm(regs=255, smem=0, warps=4) == 2
    assert report.ctas_per_sm(regs=32, smem=0, warps=4) == 16


def test_layout_allows_16_byte_loads():
    import torch

    def launch(*tensors):
        return report.Launch(None, tensors, {}, (1,), "l")

    cl = torch.channels_last
    x = torch.empty(8, 64, 7, 7, device="meta", dtype=torch.bfloat16).to(memory_format=cl)
    assert report.allows_16_byte_loads(launch(x))
    assert not report.allows_16_byte_loads(launch(torch.empty(8, 3, 7, 7, device="meta").to(memory_format=cl)))
    assert not report.allows_16_byte_loads(launch(torch.empty(8, 64, 7, 7, device="meta")))  # NCHW
    assert not report.allows_16_byte_loads(launch(torch.empty(100, device="meta", dtype=torch.bfloat16)[3:]))


def test_reexecs_without_the_interpreter():
    """With TRITON_INTERPRET=1 in the environment the report still compiles for sm_90."""
    proc = _run(sys.executable, "--quick", "--kernel", "conv_bwd_reduce", "--dtype", "fp32", "--json", timeout=600)
    rows, _ = _parse(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(r["kernel"] == "conv_bwd_reduce" for r in rows)


def test_googlenet_4c_channel_slices_keep_16_byte_loads():
    """GoogLeNet's 4c reads channel slices whose counts or pixel strides are multiples of 8 only
    (a 24-channel 5x5 input in a 152-channel reduce output, a 280-channel stacked dY'): every
    conv-family launch of the block, forward and backward, keeps 16-byte loads in its main loop
    and spills nothing (static, sm_90, bf16, Triton 3.9). 4b (136 and 24 channels) takes the
    same specialisations but for its sizes."""
    layer = "GoogLeNet b128 net.3.2"
    rows, _ = _parse(_run(sys.executable, "--dtype", "bf16", "--kernel", "conv", f"--layer={layer}", "--json").stdout)
    rows = [r for r in rows if not r["anchor"]]
    families = {r["kernel"] for r in rows}
    assert {"conv_fwd", "conv_bwd_input", "conv1x1_bwd_input", "conv_bwd_prep", "conv_bwd_reduce"} <= families, families
    assert all(r["layer"].startswith(layer) for r in rows)
    bad = [r for r in rows if r["spills"] or any(not kind.endswith(".128") for kind in r["loop_loads"])]
    assert not bad, "\n".join(f"{r['kernel']} {r['config']} {r['layer']}: {r['loop_loads']} {r['spills']}" for r in bad)
