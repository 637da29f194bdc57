"""Static, sm_90: every kernel at each of its GPU configs compiles for Hopper on the CPU (triton's
own ``GPUTarget("cuda", 90, 32)``, ``cuobjdump`` from the triton wheel) with no register spills,
and every bf16/fp16 dot lowers to HGMMA (wgmma). Compiling needs a process without
TRITON_INTERPRET, so the report runs in a subprocess once for the whole module."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cnnkernels.report import StaticResult


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnkernels.report", "--json"], env=env, capture_output=True, text=True, timeout=1500
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, rows


FAMILIES = [
    "conv_fwd",
    "conv_bwd_input",
    "conv_bwd_weight",
    "conv_bwd_reduce",
    "conv1x1_fwd",
    "conv1x1_bwd_input",
    "conv1x1_bwd_weight",
    "max_pool2d_fwd",
    "max_pool2d_bwd",
    "adaptive_avg_pool2d",
    "global_avg_pool2d",
    "cat",
]


def test_report_exits_zero(report):
    proc, rows = report
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(rows) > 50


@pytest.mark.parametrize("family", FAMILIES)
def test_every_kernel_family_compiles(report, family):
    _, rows = report
    assert any(r["name"].startswith(family) for r in rows), f"no sm_90 compile of {family}"


def test_no_config_spills(report):
    _, rows = report
    spilling = [f"{r['name']} {r['dtype']} {r['config']}" for r in rows if r["spills"]]
    assert not spilling


def test_half_precision_dots_use_hgmma(report):
    _, rows = report
    dots = [r for r in rows if r["has_dot"] and r["dtype"] in ("bf16", "fp16")]
    assert dots and all(r["hgmma"] for r in dots), [r["name"] for r in dots if not r["hgmma"]]
    assert all(not r["hgmma"] for r in rows if not r["has_dot"])


def test_shared_memory_fits_hopper(report):
    _, rows = report
    assert all(r["shared"] <= 227 * 1024 for r in rows)


def test_ok_flags_spills_and_missing_hgmma():
    base = dict(name="k", dtype="bf16", config="c", registers=128, shared=0, has_dot=True)
    assert StaticResult(**base, spills=0, hgmma=True).ok
    assert not StaticResult(**base, spills=4, hgmma=True).ok
    assert not StaticResult(**base, spills=0, hgmma=False).ok
    assert StaticResult(**{**base, "dtype": "fp32"}, spills=0, hgmma=False).ok
