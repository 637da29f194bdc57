"""One-shot GPU check: the GPU tests, then a compact selection of the benchmarks, in < 10 min.

    python benchmarks/gpu_check.py [--budget 540] [--tests-timeout 200] [--max-autotune] [--skip-tests]

A thin driver (the README's ``make gpu-check`` lists its sections): each section is a pytest run of
the project's tests or benchmarks on the compiled kernels, within its own time budget clipped to
what is left of ``--budget``; items past it are skipped and recorded, finished ones kept. Exit
status: 0 when everything that ran passed (a benchmark section cut short is a timeout, not a
failure), 1 on a failure or a tests timeout, 2 without a CUDA GPU. After every section it writes
``results.json`` (schema "cnnkernels.gpu_check/2"; each benchmark row its ``extra_info`` and node
id) and the same as ``<gpu-slug>-<date>.json`` and ``.md`` into ``$OUT`` or ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from itertools import product
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SCHEMA = "cnnkernels.gpu_check/2"
MODELS = ("AlexNet", "VGG", "NiN", "GoogLeNet")
BATCH = 128
ACCURACY_BATCH = 32
DTYPE = "bfloat16"
SECTION_BUDGETS_S = dict(ceilings=20, conv=50, pool=25, models=150, graphs=45, accuracy=60, compile=600)
RESERVE_S = 8  # kept back for writing the results
GRACE_S = 15  # a pytest section may run this long past its budget (one item finishing) before it is stopped


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def pytest_run(args: list[str], timeout: float, env: dict | None = None) -> dict:
    """``python -m pytest -q ARGS`` in the repository, without ``TRITON_INTERPRET``, stopped (its
    whole process group) after ``timeout`` seconds. Returns status, summary line and output tail."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | (env or {})
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        status = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the pytest process group started just above
        out, status = proc.communicate()[0], "timeout"
    lines = [ln for ln in (out or "").splitlines() if ln.strip()]
    summary = [ln for ln in lines if re.search(r"\b(passed|failed|errors?|skipped|deselected|no tests ran)\b", ln)]
    return {
        "command": " ".join(["pytest", *args]) if len(args) < 8 else f"pytest ({len(args)} items)",
        "status": status,
        "returncode": proc.returncode,
        "summary": summary[-1].strip("= ") if summary else (lines[-1] if lines else ""),
        "elapsed_s": round(time.perf_counter() - start, 1),
        "output_tail": "\n".join(lines[-60:]),
    }


def node_ids(section: str, max_autotune: bool = False) -> list[str]:
    """The benchmark items of a section, as pytest node ids (cudnn first in each group, so the
    others' speedups use this session's cudnn median)."""
    from _common import LAYER_OPS, layer_cases

    def ids(op, cases):
        grid = product(cases, ("forward", "backward"), ("cudnn", "cnnkernels"))
        return [f"benchmarks/test_bench_layers.py::test_layer[{op}-{c.id}-bf16-{m}-{p}]" for c, m, p in grid]

    def largest(predicate, key, k):
        return sorted(layer_cases(predicate), key=lambda c: getattr(c.layer(DTYPE, BATCH), key), reverse=True)[:k]

    pair = ("cudnn", "cnnkernels")
    if section == "ceilings":
        return ["benchmarks/test_bench_ceilings.py"]
    if section == "conv":
        convs = largest(LAYER_OPS["conv"][0], "flops_fwd", 4)
        return ids("conv", convs) + ids("conv1x1", largest(LAYER_OPS["conv1x1"][0], "flops_fwd", 1))
    if section == "pool":
        maxpools = largest(lambda r: r.kind == "maxpool", "bytes_fwd", 3)
        return ids("pool", maxpools + largest(lambda r: r.kind == "avgpool", "bytes_fwd", 1))
    if section == "accuracy":
        return [f"benchmarks/test_bench_models.py::test_model_accuracy[{m}]" for m in MODELS]
    if section == "graphs":  # whole forwards replayed from CUDA graphs, where launch cost decides
        graphs = product(MODELS, (1, 32), pair)
        return [f"benchmarks/test_bench_models.py::test_model_cudagraph[{m}-batch{b}-{p}]" for m, b, p in graphs]
    providers = pair if section == "models" else ("torch.compile",) + ("torch.compile-max-autotune",) * max_autotune
    grid = product(MODELS, ("forward", "train"), providers)  # model-major: each model's comparison complete first
    return [f"benchmarks/test_bench_models.py::test_model[{m}-batch{BATCH}-{mode}-bf16-{p}]" for m, mode, p in grid]


class Check:
    def __init__(self, args):
        self.args = args
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.budget
        self.results: dict = {"schema": SCHEMA, "meta": {}, "tests": {"status": "skipped"}, "sections": {}}
        self.results |= {k: [] for k in (*SECTION_BUDGETS_S, "failures", "skipped") if k != "compile"}
        self.out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results"

    def fail(self, section: str, item: str, kind: str, message: str) -> None:
        log(f"{section}: {item}: {kind}: {message.splitlines()[-1] if message else ''}")
        self.results["failures"].append({"section": section, "item": item, "kind": kind, "message": message[-4000:]})

    def skip(self, section: str, item: str, reason: str) -> None:
        self.results["skipped"].append({"section": section, "item": item, "reason": reason})

    def pytest_rows(self, name: str, args: list[str], timeout: float, env: dict | None = None) -> tuple[dict, list]:
        """``pytest_run(args)`` and the rows its items wrote through ``GPU_CHECK_ROWS`` as each ended."""
        rows_path = self.out_dir / f".{name}-rows.jsonl"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows_path.unlink(missing_ok=True)
        rec = pytest_run(args, timeout, {"GPU_CHECK_ROWS": str(rows_path)} | (env or {}))
        rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
        rows_path.unlink(missing_ok=True)
        return rec, rows

    def run_tests(self, timeout: float, args: tuple = ("-m", "gpu", "tests")) -> None:
        log(f"tests: pytest {' '.join(args)} (timeout {timeout:.0f} s)")
        rec, rows = self.pytest_rows("tests", ["--continue-on-collection-errors", *args], timeout)
        self.results["tests"] = rec | {"items": rows}
        self.results["sections"]["tests"] = {k: rec[k] for k in ("status", "elapsed_s")} | {"budget_s": round(timeout)}
        failed = [r for r in rows if r["outcome"] == "failed"]
        for row in failed:  # each failed item with its own reason, even when the run was cut short
            self.fail("tests", row["test"], "failed", row.get("message", ""))
        # The run's own record too when no item explains it, or when some did not run (collection errors).
        errors = re.search(r"\berrors?\b", rec["summary"])
        if rec["status"] == "timeout" or (rec["status"] != "passed" and (not failed or errors)):
            kind = "timeout" if rec["status"] == "timeout" else "failed"
            self.fail("tests", rec["command"], kind, rec["summary"] + "\n" + rec["output_tail"][-3000:])
        self.write()

    def section(self, name: str) -> None:
        budget = min(SECTION_BUDGETS_S[name], self.remaining() - RESERVE_S)
        if budget < 3:
            self.skip(name, "(whole section)", "no time left in the overall budget")
            self.results["sections"][name] = {"status": "skipped", "elapsed_s": 0.0, "budget_s": max(budget, 0.0)}
            return self.write()
        log(f"section {name} (budget {budget:.0f} s)")
        start = time.perf_counter()
        try:
            status = self.benchmarks(name, budget)
        except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
            status = "error"
            self.fail(name, "(section)", "error", f"{exc!r}\n{traceback.format_exc(limit=8)}")
        elapsed = round(time.perf_counter() - start, 1)
        self.results["sections"][name] = {"status": status, "elapsed_s": elapsed, "budget_s": round(budget, 1)}
        self.write()

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def benchmarks(self, name: str, budget: float) -> str:
        ids = node_ids(name, self.args.max_autotune)
        if name == "compile" and not self.args.max_autotune:
            self.skip(name, "torch.compile-max-autotune", "not run by default: it would not fit (--max-autotune)")
        only = ["--benchmark-only"] if importlib.util.find_spec("pytest_benchmark") else []  # else conftest's stand-in
        deadline = {"GPU_CHECK_DEADLINE": str(time.time() + budget)}
        rec, rows = self.pytest_rows(name, [*only, *ids], budget + GRACE_S, deadline)
        for row in rows:
            if row["outcome"] == "failed":
                self.fail(name, row["test"], "failed", row.get("message", ""))
            elif row["outcome"] == "skipped":
                self.skip(name, row["test"], row.get("message", ""))
        kept = [r for r in rows if r["outcome"] == "passed" or name == "accuracy" and "status" in r]
        self.results["models" if name == "compile" else name] += kept
        self._derived()
        done = {r["test"] for r in rows}
        if rec["status"] == "timeout":
            self.fail(name, "(section)", "timeout", f"stopped after {budget + GRACE_S:.0f} s; finished items kept")
        elif rec["status"] == "error" or not done:
            self.fail(name, "(section)", "error", rec["summary"] + "\n" + rec["output_tail"][-3000:])
        return "ok" if rec["status"] in ("passed", "failed") else rec["status"]

    def _derived(self) -> None:
        """Fractions of the measured ceilings and the model speedups between providers."""
        ceil = {r["ceiling"]: r for r in self.results["ceilings"]}
        for section, key, ceiling, metric in (
            ("conv", "fraction_of_peak", "matmul", "tflops"),
            ("pool", "fraction_of_copy_bw", "copy", "gbps"),
        ):
            for r in self.results[section]:
                if ceiling in ceil and r.get(metric):
                    r[key] = r[metric] / ceil[ceiling][metric]
        med = {(r["model"], r["mode"], r["provider"]): r["median_ms"] for r in self.results["models"]}
        bases = {"torch.compile": "speedup_vs_torch_compile", "torch.compile-max-autotune": "speedup_vs_max_autotune"}
        for r in self.results["models"]:
            if r["provider"] == "cnnkernels":
                for base, key in bases.items():
                    if (r["model"], r["mode"], base) in med:
                        r[key] = med[(r["model"], r["mode"], base)] / r["median_ms"]

    def write(self) -> None:
        self.results["meta"]["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        with contextlib.suppress(Exception):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.results, indent=1, default=str)
            (self.out_dir / "results.json").write_text(text)
            stem = f"{self.results['meta'].get('gpu_slug', 'gpu')}-{self.results['meta'].get('date', 'undated')}"
            (self.out_dir / f"{stem}.json").write_text(text)
            (self.out_dir / f"{stem}.md").write_text(markdown(self.results))


# Markdown


def _parts(parts: dict | None) -> str:
    """A conv backward's mask / dX / dW times (ms), "–" for a part it does not have."""
    return " / ".join(_fmt(parts.get(k)) for k in ("prep", "dx", "dw")) if parts else "–"


def _fmt(v, spec: str | None = None) -> str:
    """Numbers for the tables: 3 significant digits without exponents for the usual ranges."""
    if not isinstance(v, float):
        return "–" if v is None else str(v)
    a = abs(v)
    if spec:
        return format(v, spec)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.3g}" if a >= 0.01 or a == 0 else f"{v:.2e}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows] + [""]


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def markdown(res: dict) -> str:
    m, t = res.get("meta", {}), res.get("tests", {})
    ceil = {r.get("ceiling"): r for r in res.get("ceilings", [])}
    lines = [
        f"# cnnkernels GPU check: {m.get('gpu', '?')}, {m.get('date', '?')}",
        "",
        f"torch {m.get('torch', '?')}, triton {m.get('triton', '?')}, CUDA {m.get('cuda', '?')}; "
        f"ran {m.get('elapsed_s', '?')} s of a {m.get('budget_s', '?')} s budget. "
        f"Roofline ceilings: {m.get('roofline_gpu') or 'none for this GPU'}.",
        "",
        f"Measured: bf16 matmul {_fmt(ceil.get('matmul', {}).get('tflops'), '.0f')} TFLOP/s "
        f"({ceil.get('matmul', {}).get('shape', '–')}), device-to-device copy "
        f"{_fmt(ceil.get('copy', {}).get('gbps'), '.0f')} GB/s (1 GiB, read + write).",
        "",
        "## Correctness: `pytest -m gpu tests`",
        "",
        f"**{t.get('status', 'skipped')}**: {t.get('summary', '')} ({_fmt(t.get('elapsed_s'))} s)",
        "",
    ]
    if res.get("accuracy"):
        lines += [f"## Models vs their torch.nn twins (bf16, batch {ACCURACY_BATCH}, error vs the fp64 twin)", ""]
        keys = ("model", "logits_err", "torch_logits_err", "worst", "worst_err", "worst_torch_err", "status")
        head = ["model", "logits: cnnkernels", "logits: torch bf16", "worst tensor", "its error", "torch bf16"]
        lines += _table([*head, "status"], [[r.get(k) for k in keys] for r in res["accuracy"]])
    for section, title, metric, frac, frac_title in (
        ("conv", "Largest conv layers (conv + bias + ReLU)", "tflops", "fraction_of_peak", "of measured peak"),
        ("pool", "Pooling", "gbps", "fraction_of_copy_bw", "of copy bandwidth"),
    ):
        if res.get(section):
            lines += [f"## {title}, batch {BATCH}, bf16", ""]
            head = ["layer", "shape", "mode", "provider", "ms", "TFLOP/s" if metric == "tflops" else "GB/s"]
            rows = [
                [r.get(k) for k in ("layer", "shape", "mode", "provider", "median_ms", metric)]
                + [_pct(r.get(frac)), _pct(r.get("roofline_fraction")), _x(r.get("speedup_vs_cudnn"))]
                + [_parts(r.get("backward_parts_ms"))]
                for r in res[section]
            ]
            lines += _table(head + [frac_title, "roofline", "vs cudnn", "mask / dX / dW ms"], rows)
    if res.get("failures") or res.get("skipped"):
        lines += ["## Failures and skips", ""]
        lines += [
            f"- FAILED ({f['kind']}) {f['section']}: {f['item']}: {(f['message'].splitlines() or [''])[0][:300]}"
            for f in res.get("failures", [])
        ]
        lines += [f"- skipped {s['section']}: {s['item']}: {s['reason']}" for s in res.get("skipped", [])] + [""]
    lines += [f"## Models, batch {BATCH}, bf16 (median ms; speedup and peak memory of cnnkernels)", ""]
    med = {(r["model"], r["mode"], r["provider"]): r for r in res.get("models", [])}
    providers = ("cnnkernels", "cudnn", "torch.compile", "torch.compile-max-autotune")
    rows = []
    for model in MODELS:
        for mode in ("forward", "train"):
            ours = med.get((model, mode, "cnnkernels"), {})
            rows.append(
                [model, mode, *(med.get((model, mode, p), {}).get("median_ms") for p in providers)]
                + [_x(ours.get("speedup_vs_cudnn")), _x(ours.get("speedup_vs_torch_compile"))]
                + [_pct(ours.get("roofline_fraction")), ours.get("peak_memory_mb")]
            )
    head = ["model", "mode", *providers[:3], "max-autotune", "vs cudnn", "vs torch.compile", "roofline", "peak MiB"]
    lines += _table(head, rows)
    if res.get("graphs"):
        lines += ["", "## Forward replayed from a CUDA graph, bf16 (median ms)", ""]
        rows = [
            [r.get(k) for k in ("model", "batch", "provider", "median_ms")] + [_x(r.get("speedup_vs_cudnn"))]
            for r in res["graphs"]
        ]
        lines += _table(["model", "batch", "provider", "ms", "vs cudnn"], rows)
    return "\n".join(lines)


# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=540.0, help="overall time budget in seconds (default 540)")
    ap.add_argument("--tests-timeout", type=float, default=200.0, help="timeout of the pytest run (default 200)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the GPU correctness tests")
    ap.add_argument("--max-autotune", action="store_true", help="also time torch.compile(mode='max-autotune')")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the real compiled kernels, never the interpreter
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU (torch.cuda.is_available() is False): nothing measured", file=sys.stderr)
        return 2
    from _common import gpu_info

    check = Check(args)
    meta = check.results["meta"]
    meta.update(gpu_info(), date=datetime.date.today().isoformat(), budget_s=args.budget)
    meta["gpu_slug"] = slug(meta["gpu"])
    log(f"{meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}; writing to {check.out_dir}")
    if args.skip_tests:
        check.skip("tests", "pytest -m gpu tests", "--skip-tests")
    else:
        check.run_tests(max(10.0, min(args.tests_timeout, check.remaining() - 150)))
    for name in SECTION_BUDGETS_S:  # in this order
        check.section(name)
    check.write()
    failures = check.results["failures"]
    hard = [f for f in failures if f["kind"] != "timeout" or f["section"] == "tests"]
    log(
        f"done in {time.perf_counter() - check.t0:.0f} s: {len(hard)} failure(s), "
        f"{len(failures) - len(hard)} section timeout(s), {len(check.results['skipped'])} skip(s); results in {check.out_dir}"
    )
    print(markdown(check.results))
    return 1 if hard else 0


if __name__ == "__main__":
    sys.exit(main())
