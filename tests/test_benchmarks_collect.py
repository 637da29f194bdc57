"""The benchmark suites collect everywhere and skip without a GPU; gpu_check refuses to run
without one and formats its report. Nothing here measures speed."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SKIP_REASON = "needs a CUDA GPU: the interpreter measures nothing about speed"
BENCH_FILES = (
    "test_bench_ceilings.py",
    "test_bench_layers.py",
    "test_bench_models.py",
    "test_bench_memory.py",
)
no_gpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="with a CUDA GPU a plain run would run the benchmarks"
)


def _pytest(*args, timeout=120):
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def collected():
    proc = _pytest("--collect-only", "-q")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    m = re.search(r"(\d+) tests? collected", proc.stdout)
    assert m, proc.stdout[-2000:]
    return int(m.group(1)), ids


def test_collect_only_lists_every_suite(collected):
    count, ids = collected
    assert count == len(ids) > 1000
    for name in BENCH_FILES:
        assert any(i.startswith(f"benchmarks/{name}::") for i in ids), name
    for provider in ("cnnkernels", "cudnn", "torch.compile", "torch.compile-max-autotune"):
        assert any(i.endswith(f"-{provider}]") for i in ids), provider


def test_model_grid_is_complete(collected):
    _, ids = collected
    models = [i for i in ids if "::test_model[" in i]
    assert len(models) == 4 * 3 * 3 * 3 * 4  # model x batch x mode x dtype x provider
    assert "benchmarks/test_bench_models.py::test_model[GoogLeNet-batch128-train-bf16-cnnkernels]" in ids
    assert sum("::test_model_cudagraph[" in i for i in ids) == 4 * 2 * 3  # model x batch {1, 32} x provider


def test_layer_grids(collected):
    _, ids = collected
    # per-layer: bf16 forward/backward/train, fp16/fp32 forward only
    assert "benchmarks/test_bench_layers.py::test_layer[conv-AlexNet.net.0-bf16-train-cudnn]" in ids
    assert "benchmarks/test_bench_layers.py::test_layer[conv1x1-GoogLeNet.net.1.0-fp32-forward-cnnkernels]" in ids
    assert not any("fp16-backward" in i or "fp32-train" in i for i in ids)
    assert not any("::test_layer[pool-" in i and "-train-" in i for i in ids)
    assert all("-forward-" in i for i in ids if "::test_layer[cat-" in i)
    cats = sum("::test_layer[cat-" in i for i in ids)
    assert cats == 9 * 3 * 4  # Inception blocks x dtypes x providers


@no_gpu_only
def test_plain_run_skips_everything(collected):
    """Without a GPU every benchmark but the host-cost and saved-bytes ones (marked host and
    memory: they run anywhere) skips."""
    count, _ = collected
    proc = _pytest("-q", "-rs", "-m", "not host and not memory")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    skipped, deselected = (int(re.search(rf"(\d+) {w}", summary).group(1)) for w in ("skipped", "deselected"))
    assert skipped + deselected == count and skipped > 1000, summary
    assert not re.search(r"\b(passed|failed|error)", summary), summary
    assert SKIP_REASON in proc.stdout


def test_benchmarks_run_without_pytest_benchmark(tmp_path):
    """Where pytest-benchmark is missing (a bare GPU machine), each item runs once through the
    suites' stand-in fixture and still records its extra_info, which reaches gpu_check's rows
    (the host-cost items here: they run on any machine)."""
    import os

    rows = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark"]
    cmd += ["-m", "host", "-k", "test_host_op"]
    env = dict(os.environ, GPU_CHECK_ROWS=str(rows))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = [json.loads(line) for line in rows.read_text().splitlines()]
    assert got and all(r["outcome"] == "passed" and r["python_calls"] > 0 for r in got)


@no_gpu_only
def test_gpu_check_without_gpu_exits_2_with_one_line(tmp_path):
    import os

    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], lines
    assert not any(tmp_path.iterdir())


def _load_gpu_check():
    if str(BENCH) not in sys.path:  # gpu_check imports the suites' _common, as it does run from its folder
        sys.path.append(str(BENCH))
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_markdown_reports_failures_and_ends_with_models_table():
    gc = _load_gpu_check()
    assert gc.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    res = {
        "meta": {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-01-01", "torch": "t", "triton": "x", "cuda": "c"},
        "ceilings": [
            {"ceiling": "matmul", "tflops": 700.0, "shape": "8192x8192x8192"},
            {"ceiling": "copy", "gbps": 2900.0},
        ],
        "tests": {"status": "failed", "summary": "1 failed, 10 passed", "elapsed_s": 12.0},
        "conv": [],
        "pool": [],
        "accuracy": [],
        "models": [
            {
                "model": "VGG",
                "mode": "train",
                "provider": "cnnkernels",
                "median_ms": 10.0,
                "speedup_vs_cudnn": 1.5,
                "roofline_fraction": 0.5,
                "peak_memory_mb": 2048.0,
            },
            {"model": "VGG", "mode": "train", "provider": "cudnn", "median_ms": 15.0},
        ],
        "failures": [
            {"section": "compile", "item": "(section)", "kind": "timeout", "message": "time budget of 10 s spent"}
        ],
        "skipped": [{"section": "compile", "item": "VGG torch.compile-max-autotune", "reason": "not run by default"}],
    }
    md = gc.markdown(res)
    assert "**failed**: 1 failed, 10 passed" in md
    assert "bf16 matmul 700 TFLOP/s (8192x8192x8192), device-to-device copy 2900 GB/s" in md
    assert "FAILED (timeout) compile" in md and "skipped compile: VGG torch.compile-max-autotune" in md
    last_heading = md[md.rindex("\n## ") :]
    assert last_heading.startswith("\n## Models")
    assert "| VGG | train | 10.0 | 15.0 | – | – | 1.50x | – | 50% | 2048 |" in md


def test_gpu_check_selects_collected_benchmarks(collected):
    """Every item the GPU check runs is a benchmark of the suites (it measures nothing itself)."""
    gc = _load_gpu_check()
    _, ids = collected
    sections = ("conv", "pool", "models", "compile")
    selected = [i for s in sections for i in gc.node_ids(s, max_autotune=True)]
    assert len(selected) == 20 + 16 + 16 + 16 and set(selected) <= set(ids)
    assert all("-bf16-" in i for i in selected)
    graphs = gc.node_ids("graphs")  # bf16 forwards from CUDA graphs, batch 1 and 32
    assert len(graphs) == 4 * 2 * 2 and set(graphs) <= set(ids)
    accuracy = gc.node_ids("accuracy")  # each model against its twin, as cnnkernels check compares them
    assert len(accuracy) == 4 and set(accuracy) <= set(ids)
    assert sum("::test_ceiling" in i or "test_bench_ceilings.py::" in i for i in ids) == 2


@no_gpu_only
def test_gpu_check_section_runs_the_benchmarks_and_records_each_item(tmp_path, monkeypatch):
    """A section is a pytest run of the benchmarks; every item's outcome comes back through the
    benchmarks' conftest (here, without a GPU, each is skipped with the reason)."""
    gc = _load_gpu_check()
    monkeypatch.setenv("OUT", str(tmp_path))

    class Args:
        budget, max_autotune = 120.0, False

    check = gc.Check(Args)
    check.section("ceilings")
    skipped = [s for s in check.results["skipped"] if s["section"] == "ceilings"]
    assert [s["item"].split("::")[1] for s in skipped] == ["test_matmul_peak", "test_copy_bandwidth"]
    assert all(SKIP_REASON in s["reason"] for s in skipped)
    assert check.results["failures"] == [] and check.results["ceilings"] == []
    assert check.results["sections"]["ceilings"]["status"] == "ok"
    assert (tmp_path / "results.json").exists() and not list(tmp_path.glob(".*rows*"))


def test_gpu_check_gathers_rows_failures_and_skips(tmp_path, monkeypatch):
    """What each section's pytest run reports (here written by a stand-in for the run) lands in the
    results: passed rows with the fractions of the measured ceilings and the speedups between
    providers, failed items as failures, items past the budget as skips."""
    gc = _load_gpu_check()
    monkeypatch.setenv("OUT", str(tmp_path))
    budget_skip = "the gpu check's time budget for this section is spent"
    model = {"outcome": "passed", "model": "NiN", "mode": "train", "batch": 128, "dtype": "bfloat16"}
    rows = {
        "ceilings": [
            {"test": "mm", "outcome": "passed", "ceiling": "matmul", "tflops": 800.0},
            {"test": "cp", "outcome": "passed", "ceiling": "copy", "gbps": 4000.0},
        ],
        "conv": [
            {"test": "c1", "outcome": "passed", "tflops": 400.0, "provider": "cnnkernels"},
            {"test": "c2", "outcome": "failed", "message": "E   AssertionError: boom"},
        ],
        "pool": [
            {"test": "p1", "outcome": "passed", "gbps": 3000.0},
            {"test": "p2", "outcome": "skipped", "message": budget_skip},
        ],
        "models": [model | {"test": "m1", "provider": "cnnkernels", "median_ms": 4.0}],
        "compile": [model | {"test": "m2", "provider": "torch.compile", "median_ms": 5.0}],
    }
    runs = []

    def fake_pytest_run(args, timeout, env=None):
        name = Path(env["GPU_CHECK_ROWS"]).name.split("-")[0].lstrip(".")
        runs.append((name, args))
        Path(env["GPU_CHECK_ROWS"]).write_text("".join(json.dumps(r) + "\n" for r in rows[name]))
        return {"status": "failed" if name == "conv" else "passed", "summary": "", "output_tail": ""}

    monkeypatch.setattr(gc, "pytest_run", fake_pytest_run)

    class Args:
        budget, max_autotune = 600.0, False

    check = gc.Check(Args)
    for name in rows:
        check.section(name)
    assert [n for n, _ in runs] == list(rows) and all(a[0] == "--benchmark-only" for _, a in runs)
    res = check.results
    assert res["conv"][0]["fraction_of_peak"] == pytest.approx(0.5) and len(res["conv"]) == 1
    assert res["pool"][0]["fraction_of_copy_bw"] == pytest.approx(0.75)
    assert [(f["section"], f["item"]) for f in res["failures"]] == [("conv", "c2")]
    assert {"section": "pool", "item": "p2", "reason": "the gpu check's time budget for this section is spent"} in res[
        "skipped"
    ]
    ours = next(r for r in res["models"] if r["provider"] == "cnnkernels")
    assert ours["speedup_vs_torch_compile"] == pytest.approx(1.25) and len(res["models"]) == 2
    assert all(res["sections"][n]["status"] == "ok" for n in rows)
    assert json.loads((tmp_path / "results.json").read_text())["pool"] == res["pool"]


def test_timing_is_triton_do_bench_median(monkeypatch):
    """Benchmarks and ``cnnkernels bench`` time through one function (gpu_check through the
    benchmarks), which is ``triton.testing.do_bench``'s median converted to seconds."""
    import triton.testing

    from cnnkernels import timing

    calls = []

    def fake_do_bench(fn, warmup, rep, return_mode):
        calls.append((warmup, rep, return_mode))
        fn()
        return 2.5  # milliseconds

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    ran = []
    assert timing.gpu_time_s(lambda: ran.append(1), warmup_ms=7, rep_ms=11) == pytest.approx(2.5e-3)
    assert calls == [(7, 11, "median")] and ran == [1]
    for path in (BENCH / "_common.py", REPO / "cnnkernels" / "cli.py"):
        text = path.read_text(encoding="utf-8")
        assert "gpu_time_s" in text and "elapsed_time" not in text, path
    check = (BENCH / "gpu_check.py").read_text(encoding="utf-8")  # a driver: it times nothing itself
    assert not any(call in check for call in ("gpu_time_s(", "do_bench(", "elapsed_time(", "synchronize(", "Event("))


def test_benchmarks_edit_no_sys_path():
    for path in sorted(BENCH.glob("*.py")):
        assert "sys.path" not in path.read_text(encoding="utf-8"), path


def test_gpu_check_tests_keep_each_failure_reason_when_stopped(tmp_path, monkeypatch):
    """The GPU test run logs each item as it ends (``cnnkernels.testing.log_report``): stopped at
    its time limit, the check still records which items failed and why, and the timeout."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (suite / "test_a.py").write_text(
        "import time\n\ndef test_ok():\n    pass\n\n"
        "def test_wrong():\n    assert 1 + 1 == 3, 'the-reason-marker'\n\n"
        "def test_slow():\n    time.sleep(600)\n"
    )
    gc = _load_gpu_check()
    monkeypatch.setenv("OUT", str(tmp_path / "out"))

    class Args:
        budget, max_autotune = 120.0, False

    check = gc.Check(Args)
    check.run_tests(15.0, args=(str(suite),))
    assert check.results["tests"]["status"] == "timeout"
    items = {r["test"].split("::")[-1]: r for r in check.results["tests"]["items"]}
    assert items["test_ok"]["outcome"] == "passed" and items["test_wrong"]["outcome"] == "failed"
    failures = {f["item"].split("::")[-1]: f for f in check.results["failures"]}
    assert "the-reason-marker" in failures["test_wrong"]["message"]
    assert failures[check.results["tests"]["command"].split("::")[-1]]["kind"] == "timeout"
