"""One-shot GPU check: the GPU correctness tests against cuDNN, then a compact benchmark, in < 8 min.

    python benchmarks/gpu_check.py [--budget 450] [--tests-timeout 180] [--max-autotune] [--skip-tests]

Needs a CUDA GPU, torch and triton installed, cnnkernels installed (``pip install -e .``), no
network. Sections run in this order, each inside try/except and its own time budget (clipped to
what is left of ``--budget``); a failure, timeout or skip is recorded, never hidden:

  tests     ``pytest -m gpu tests -q`` in a subprocess with a timeout
  ceilings  measured bf16 peak (8192^3 ``torch.matmul``) and copy bandwidth (1 GiB device-to-device)
  conv      the largest conv layers of the four models, batch 128, bf16: fused conv+bias+ReLU vs
            cuDNN conv+bias then ReLU, forward and backward; TFLOP/s and fraction of measured peak
  pool      the largest max pools and global average pool, batch 128, bf16: GB/s vs copy bandwidth
  models    each model's bf16 forward and training step at batch 128: cnnkernels and cudnn
  accuracy  each model vs its ``torch.nn`` reference twin, bf16, batch 32: logits, input and
            parameter gradients against the twin in float64, judged by the one model rule
            (``cnnkernels.testing.model_verdict``: within 2 x torch's own bf16 error + the bf16 rtol)
  compile   the same model runs under ``torch.compile`` (default mode); with ``--max-autotune``
            also mode="max-autotune" while the budget lasts (off by default: compiling four
            models with max-autotune takes minutes and would not fit in the 8 minutes)

Exit status: 0 when everything that ran passed (a benchmark section cut short by its time budget
is reported as a timeout but is not a failure), 1 when a test, measurement or accuracy check
failed or the tests timed out, 2 without a CUDA GPU.

Writes ``results.json``, ``<gpu-slug>-<YYYY-MM-DD>.json`` (the same content) and
``<gpu-slug>-<YYYY-MM-DD>.md`` into ``$OUT`` when set, else ``benchmarks/results/``, after every
section, and prints the Markdown tables last. ``python -m cnnkernels.plot results.json -o
speedup.png`` draws the model speedups.

results.json (schema "cnnkernels.gpu_check/1"):
  meta         gpu, gpu_slug, capability, torch, triton, cuda, date, budget_s, elapsed_s, roofline_gpu
  ceilings     matmul_bf16_tflops, matmul_shape, copy_gbps, copy_bytes
  tests        status (passed|failed|timeout|error|skipped), returncode, summary, elapsed_s, command, output_tail
  conv, pool   rows: layer, same_shape_layers, shape, mode, dtype, batch, provider, status, median_ms,
               tflops, gbps, fraction_of_peak | fraction_of_copy_bw, roofline_fraction, speedup_vs_cudnn, formula
  models       rows: model, mode, batch, dtype, provider, status, median_ms, tflops, gbps,
               floor_ms, roofline_fraction, speedup_vs_cudnn, speedup_vs_torch_compile, note
  accuracy     rows: model, batch, dtype, status, logits_err, torch_logits_err, logits_err_vs_torch,
               grad_err, torch_grad_err, worst_grad_param, worst_fraction_of_bound, failed, bound
  sections     name -> status, elapsed_s, budget_s
  failures     rows: section, item, kind (error|timeout|failed), message
  skipped      rows: section, item, reason
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SCHEMA = "cnnkernels.gpu_check/1"
MODELS = ("AlexNet", "VGG", "NiN", "GoogLeNet")
BATCH = 128
ACCURACY_BATCH = 32
DTYPE = "bfloat16"
SECTION_BUDGETS_S = {"ceilings": 20, "conv": 45, "pool": 25, "models": 120, "accuracy": 60, "compile": 600}
RESERVE_S = 8  # kept back for writing the results


class SectionTimeout(BaseException):
    """Raised by SIGALRM when a section outlives its budget (BaseException: item-level
    ``except Exception`` handlers must not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def handler(signum, frame):
        raise SectionTimeout(f"time budget of {seconds:.0f} s spent")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.5))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def _fmt(v, spec: str | None = None) -> str:
    """Numbers for the tables: 3 significant digits without exponents for the usual ranges."""
    if v is None:
        return "–"
    if isinstance(v, float):
        if spec:
            return format(v, spec)
        a = abs(v)
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01 or a == 0:
            return f"{v:.3g}"
        return f"{v:.2e}"
    return str(v)


class Check:
    def __init__(self, args):
        self.args = args
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.budget
        self.results: dict = {
            "schema": SCHEMA,
            "meta": {},
            "ceilings": {},
            "tests": {"status": "skipped"},
            "conv": [],
            "pool": [],
            "models": [],
            "accuracy": [],
            "sections": {},
            "failures": [],
            "skipped": [],
        }
        self.out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results"

    # -- bookkeeping ------------------------------------------------------------------------

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def fail(self, section: str, item: str, kind: str, message: str) -> None:
        log(f"{section}: {item}: {kind}: {message.splitlines()[-1] if message else ''}")
        self.results["failures"].append({"section": section, "item": item, "kind": kind, "message": message[-4000:]})

    def skip(self, section: str, item: str, reason: str) -> None:
        self.results["skipped"].append({"section": section, "item": item, "reason": reason})

    def item(self, section: str, label: str, func):
        """Run one measurement; an exception is recorded as a failure and yields None."""
        try:
            return func()
        except Exception as exc:  # noqa: BLE001 - every error is recorded, the check goes on
            self.fail(section, label, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
            _free()
            return None

    def section(self, name: str, func, budget: float) -> None:
        budget = min(budget, self.remaining() - RESERVE_S)
        start = time.perf_counter()
        if budget < 3:
            self.skip(name, "(whole section)", "no time left in the overall budget")
            self.results["sections"][name] = {"status": "skipped", "elapsed_s": 0.0, "budget_s": max(budget, 0.0)}
            self.write()
            return
        log(f"section {name} (budget {budget:.0f} s)")
        status = "ok"
        try:
            with time_limit(budget):
                func(start + budget)
        except SectionTimeout as exc:
            status = "timeout"
            self.fail(name, "(section)", "timeout", f"{exc}; the items finished before it are kept")
        except Exception as exc:  # noqa: BLE001
            status = "error"
            self.fail(name, "(section)", "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
        finally:
            _free()
        self.results["sections"][name] = {
            "status": status,
            "elapsed_s": round(time.perf_counter() - start, 1),
            "budget_s": round(budget, 1),
        }
        self.write()

    # -- sections ---------------------------------------------------------------------------

    test_args = ("-m", "gpu", "tests", "-q", "-p", "no:cacheprovider")

    def run_tests(self, timeout: float) -> None:
        cmd = [sys.executable, "-m", "pytest", *self.test_args]
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        start = time.perf_counter()
        rec = {"command": " ".join(cmd[2:]), "timeout_s": round(timeout)}
        log(f"tests: {rec['command']} (timeout {timeout:.0f} s)")
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
            rec["returncode"] = proc.returncode
            rec["status"] = "passed" if proc.returncode == 0 else ("failed" if proc.returncode == 1 else "error")
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the pytest process group started just above
            out, _ = proc.communicate()
            rec["returncode"] = None
            rec["status"] = "timeout"
        rec["elapsed_s"] = round(time.perf_counter() - start, 1)
        lines = [ln for ln in (out or "").splitlines() if ln.strip()]
        summary = [
            ln for ln in lines if re.search(r"\b(passed|failed|error|errors|skipped|deselected|no tests ran)\b", ln)
        ]
        rec["summary"] = summary[-1].strip("= ") if summary else (lines[-1] if lines else "")
        rec["output_tail"] = "\n".join(lines[-60:])
        self.results["tests"] = rec
        self.results["sections"]["tests"] = {
            "status": rec["status"],
            "elapsed_s": rec["elapsed_s"],
            "budget_s": round(timeout),
        }
        if rec["status"] != "passed":
            self.fail(
                "tests",
                rec["command"],
                "timeout" if rec["status"] == "timeout" else "failed",
                rec["summary"] + "\n" + rec["output_tail"][-3000:],
            )
        self.write()

    def ceilings(self, end: float) -> None:
        import torch

        from cnnkernels.timing import gpu_time_s

        def median_of(make):  # tensors live only inside make()'s closure
            return gpu_time_s(make())

        def matmul():
            a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
            return lambda: torch.matmul(a, b, out=c)

        def copy_fn():
            src = torch.empty(nbytes // 2, device="cuda", dtype=torch.bfloat16).normal_()
            dst = torch.empty_like(src)
            return lambda: dst.copy_(src)

        n, nbytes = 8192, 1 << 30
        t = median_of(matmul)
        self.results["ceilings"].update(matmul_bf16_tflops=2 * n**3 / t / 1e12, matmul_shape=f"{n}x{n}x{n}")
        _free()
        t = median_of(copy_fn)
        self.results["ceilings"].update(
            copy_gbps=2 * nbytes / t / 1e9, copy_bytes=nbytes, copy_note="GB/s = 2 * bytes (read + write) / median"
        )
        log(
            f"ceilings: {self.results['ceilings']['matmul_bf16_tflops']:.0f} TFLOP/s bf16, {self.results['ceilings']['copy_gbps']:.0f} GB/s copy"
        )

    def _peak_tflops(self) -> tuple[float, str]:
        if "matmul_bf16_tflops" in self.results["ceilings"]:
            return self.results["ceilings"]["matmul_bf16_tflops"], "measured matmul"
        gpu = self.results["meta"].get("roofline_gpu") or "H100"
        from cnnkernels.roofline import GPU_CEILINGS

        return GPU_CEILINGS[gpu].peak_flops(DTYPE) / 1e12, f"nominal {gpu} (matmul not measured)"

    def _copy_gbps(self) -> tuple[float, str]:
        if "copy_gbps" in self.results["ceilings"]:
            return self.results["ceilings"]["copy_gbps"], "measured copy"
        gpu = self.results["meta"].get("roofline_gpu") or "H100"
        from cnnkernels.roofline import GPU_CEILINGS

        return GPU_CEILINGS[gpu].bandwidth / 1e9, f"nominal {gpu} (copy not measured)"

    def _time(self, fn) -> float:
        from cnnkernels.timing import gpu_time_s

        return gpu_time_s(fn)

    def _layer_rows(self, section: str, cases, builder, modes, end: float) -> None:
        from _common import shape_str

        gpu = self.results["meta"].get("roofline_gpu")
        for case in cases:
            layer = case.layer(DTYPE, BATCH)
            for mode in modes:
                medians = {}
                for provider in ("cudnn", "cnnkernels"):
                    label = f"{case.id} {mode} {provider}"
                    if time.perf_counter() > end - 2:
                        self.skip(section, label, "section budget spent")
                        continue
                    median = self.item(
                        section,
                        label,
                        lambda layer=layer, mode=mode, provider=provider: self._time(builder(layer, provider, mode)),
                    )
                    _free()
                    row = {
                        "layer": case.id,
                        "same_shape_layers": list(case.same_shape_layers),
                        "shape": f"in {shape_str(layer.in_shape)} -> out {shape_str(layer.out_shape)}",
                        "kernel": list(layer.kernel),
                        "stride": list(layer.stride),
                        "mode": mode,
                        "dtype": DTYPE,
                        "batch": BATCH,
                        "provider": provider,
                        "status": "ok" if median is not None else "failed",
                        "median_ms": median * 1e3 if median else None,
                    }
                    if median:
                        medians[provider] = median
                        flops, nbytes = layer.flops(mode), layer.nbytes(mode)
                        row["tflops"] = flops / median / 1e12
                        row["gbps"] = nbytes / median / 1e9
                        row["flops_formula"] = layer.formula("flops", mode)
                        row["bytes_formula"] = layer.formula("bytes", mode)
                        if section == "conv":
                            peak, source = self._peak_tflops()
                            row["fraction_of_peak"] = row["tflops"] / peak
                            row["peak_source"] = source
                        else:
                            bw, source = self._copy_gbps()
                            row["fraction_of_copy_bw"] = row["gbps"] / bw
                            row["copy_bw_source"] = source
                        if gpu:
                            row["floor_ms"] = layer.floor_s(gpu, mode) * 1e3
                            row["roofline_fraction"] = layer.floor_s(gpu, mode) / median
                        if provider != "cudnn" and "cudnn" in medians:
                            row["speedup_vs_cudnn"] = medians["cudnn"] / median
                    self.results[section].append(row)
            self.write()

    def conv(self, end: float) -> None:
        from _common import conv_callable, layer_cases

        def fwd_flops(c):
            return c.layer(DTYPE, BATCH).flops_fwd

        big = sorted(layer_cases(lambda r: r.kind == "conv" and not r.is_1x1), key=fwd_flops, reverse=True)[:4]
        big += sorted(layer_cases(lambda r: r.is_1x1), key=fwd_flops, reverse=True)[:1]
        self._layer_rows("conv", big, conv_callable, ("forward", "backward"), end)

    def pool(self, end: float) -> None:
        from _common import layer_cases, pool_callable

        def fwd_bytes(c):
            return c.layer(DTYPE, BATCH).bytes_fwd

        cases = sorted(layer_cases(lambda r: r.kind == "maxpool"), key=fwd_bytes, reverse=True)[:3]
        cases += sorted(layer_cases(lambda r: r.kind == "avgpool"), key=fwd_bytes, reverse=True)[:1]
        self._layer_rows("pool", cases, pool_callable, ("forward", "backward"), end)

    def _model_row(self, model: str, mode: str, provider: str, median: float | None, note: str = "") -> dict:
        from cnnkernels import roofline

        t = roofline.model_totals(model, batch=BATCH, dtype=DTYPE)
        gpu = self.results["meta"].get("roofline_gpu")
        row = {
            "model": model,
            "mode": mode,
            "batch": BATCH,
            "dtype": DTYPE,
            "provider": provider,
            "status": "ok" if median else "failed",
            "median_ms": median * 1e3 if median else None,
            "note": note,
        }
        if median:
            row["tflops"] = t.flops(mode) / median / 1e12
            row["gbps"] = t.nbytes(mode) / median / 1e9
            if gpu:
                row["floor_ms"] = t.floor_s(gpu, mode) * 1e3
                row["roofline_fraction"] = t.floor_s(gpu, mode) / median
        return row

    def _model_runs(self, section: str, providers, end: float) -> None:
        from cnnkernels.timing import peak_memory_bytes

        from _common import model_callable

        for model in MODELS:  # model-major: each model gets its complete comparison first
            for mode in ("forward", "train"):
                for provider in providers:
                    label = f"{model} {mode} {provider}"
                    if time.perf_counter() > end - 2:
                        self.skip(section, label, "section budget spent")
                        continue
                    log(f"{section}: {label}")
                    peak = {}

                    def timed(model=model, mode=mode, provider=provider, peak=peak):
                        fn = model_callable(model, provider, DTYPE, mode, BATCH)
                        median = self._time(fn)
                        peak["bytes"] = peak_memory_bytes(fn)
                        return median

                    median = self.item(section, label, timed)
                    _free()
                    row = self._model_row(model, mode, provider, median)
                    if "bytes" in peak:
                        row["peak_memory_mb"] = peak["bytes"] / 2**20
                    self.results["models"].append(row)
                    self._speedups()
                    self.write()

    def _speedups(self) -> None:
        med = {(r["model"], r["mode"], r["provider"]): r["median_ms"] for r in self.results["models"] if r["median_ms"]}
        for r in self.results["models"]:
            if r["provider"] == "cnnkernels" and r["median_ms"]:
                for base, key in (
                    ("cudnn", "speedup_vs_cudnn"),
                    ("torch.compile", "speedup_vs_torch_compile"),
                    ("torch.compile-max-autotune", "speedup_vs_max_autotune"),
                ):
                    if (r["model"], r["mode"], base) in med:
                        r[key] = med[(r["model"], r["mode"], base)] / r["median_ms"]

    def models(self, end: float) -> None:
        self._model_runs("models", ("cudnn", "cnnkernels"), end)

    def compile(self, end: float) -> None:
        providers = ["torch.compile"] + (["torch.compile-max-autotune"] if self.args.max_autotune else [])
        if not self.args.max_autotune:
            for model in MODELS:
                self.skip(
                    "compile",
                    f"{model} torch.compile-max-autotune",
                    "not run by default: max-autotune compilation of four models would not fit the 8-minute budget (--max-autotune runs it while time lasts)",
                )
        self._model_runs("compile", providers, end)

    def accuracy(self, end: float) -> None:
        for model in MODELS:
            if time.perf_counter() > end - 2:
                self.skip("accuracy", model, "section budget spent")
                continue
            row = self.item("accuracy", model, lambda model=model: _accuracy(model))
            _free()
            if row is None:
                self.results["accuracy"].append(
                    {"model": model, "batch": ACCURACY_BATCH, "dtype": DTYPE, "status": "failed"}
                )
            else:
                self.results["accuracy"].append(row)
                if row["status"] != "ok":
                    self.fail("accuracy", model, "failed", f"outside the model rule (model_verdict): {row}")
            self.write()

    # -- output -----------------------------------------------------------------------------

    def write(self) -> None:
        self.results["meta"]["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        with contextlib.suppress(Exception):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.results, indent=1, default=str)
            (self.out_dir / "results.json").write_text(text)
            stem = f"{self.results['meta'].get('gpu_slug', 'gpu')}-{self.results['meta'].get('date', 'undated')}"
            (self.out_dir / f"{stem}.json").write_text(text)
            (self.out_dir / f"{stem}.md").write_text(markdown(self.results))


def _free() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        torch._dynamo.reset()
        torch.cuda.empty_cache()


def _accuracy(model: str) -> dict:
    """The fused model in bf16 against its reference twin, eval mode (no dropout), batch 32:
    logits, input gradient and every parameter gradient, each judged by the one model rule,
    ``cnnkernels.testing.model_verdict`` (error vs the twin in float64 within twice torch's own
    bf16 twin's error plus the bf16 tolerance)."""
    import torch

    from cnnkernels.testing import model_verdict

    from _common import DEVICE, IMAGE, make_models

    pair = make_models(model)
    cl = torch.channels_last
    dtype = getattr(torch, DTYPE)
    nets = {
        "ours": pair["cnnkernels"].to(device=DEVICE, dtype=dtype, memory_format=cl).eval(),
        "torch": copy.deepcopy(pair["reference"]).to(device=DEVICE, dtype=dtype, memory_format=cl).eval(),
        "fp64": pair["reference"].to(device=DEVICE, dtype=torch.float64, memory_format=cl).eval(),
    }
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(ACCURACY_BATCH, *IMAGE, device=DEVICE, generator=gen).to(dtype).contiguous(memory_format=cl)
    g = None
    results = {}
    for label, net in nets.items():
        leaf = x.to(next(net.parameters()).dtype).clone().requires_grad_()  # one leaf per net
        y = net(leaf)
        if g is None:
            g = torch.randn(y.shape, device=DEVICE, generator=gen, dtype=torch.float64)
        y.backward(g.to(y.dtype))
        grads = {"input": leaf.grad} | {n: p.grad for n, p in net.named_parameters()}
        results[label] = (y.detach(), grads)
    (y_ours, g_ours), (y_torch, g_torch), (y64, g64) = results["ours"], results["torch"], results["fp64"]
    missing = sorted(n for n, grad in g_ours.items() if grad is None)
    logits = model_verdict("logits", y_ours, y64, y_torch, dtype)
    grads = [model_verdict(f"grad {n}", g_ours[n], g64[n], g_torch[n], dtype) for n in g64 if n not in missing]
    worst = max(grads, key=lambda v: v.err / v.bound)
    failed = [v.name for v in (logits, *grads) if not v.ok]
    status = "ok" if not failed and not missing else f"no gradient for {missing}" if missing else f"failed: {failed}"
    return {
        "model": model,
        "batch": ACCURACY_BATCH,
        "dtype": DTYPE,
        "status": status,
        "logits_err": logits.err,
        "torch_logits_err": logits.torch_err,
        "logits_err_vs_torch": float((y_ours.double() - y_torch.double()).norm() / y_torch.double().norm()),
        "grad_err": worst.err,
        "torch_grad_err": worst.torch_err,
        "worst_grad_param": worst.name,
        "worst_fraction_of_bound": worst.err / worst.bound,
        "failed": failed,
        "bound": "cnnkernels.testing.model_verdict: error vs the float64 twin <= 2 x torch bf16's own + the bf16 rtol",
    }


# -- Markdown --------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def markdown(res: dict) -> str:
    m, c, t = res.get("meta", {}), res.get("ceilings", {}), res.get("tests", {})
    lines = [
        f"# cnnkernels GPU check: {m.get('gpu', '?')}, {m.get('date', '?')}",
        "",
        f"torch {m.get('torch', '?')}, triton {m.get('triton', '?')}, CUDA {m.get('cuda', '?')}; "
        f"ran {m.get('elapsed_s', '?')} s of a {m.get('budget_s', '?')} s budget. Roofline ceilings: {m.get('roofline_gpu') or 'none for this GPU'}.",
        "",
        f"Measured: bf16 matmul {_fmt(c.get('matmul_bf16_tflops'), '.0f')} TFLOP/s ({c.get('matmul_shape', '–')}), "
        f"device-to-device copy {_fmt(c.get('copy_gbps'), '.0f')} GB/s (1 GiB, read + write).",
        "",
        "## Correctness: `pytest -m gpu tests -q`",
        "",
        f"**{t.get('status', 'skipped')}**: {t.get('summary', '')} ({_fmt(t.get('elapsed_s'))} s)",
        "",
    ]
    if res.get("accuracy"):
        lines += [
            f"## Models vs their torch.nn twins (bf16, batch {ACCURACY_BATCH}, relative error vs the twin in fp64)",
            "",
        ]
        lines += _table(
            [
                "model",
                "logits: cnnkernels",
                "logits: torch bf16",
                "cnnkernels vs torch",
                "worst grad: cnnkernels",
                "torch bf16",
                "param",
                "status",
            ],
            [
                [
                    r.get("model"),
                    r.get("logits_err"),
                    r.get("torch_logits_err"),
                    r.get("logits_err_vs_torch"),
                    r.get("grad_err"),
                    r.get("torch_grad_err"),
                    r.get("worst_grad_param"),
                    r.get("status"),
                ]
                for r in res["accuracy"]
            ],
        )
        lines.append("")
    for section, title, metric, frac_key, frac_title in (
        ("conv", "Largest conv layers (conv + bias + ReLU)", "tflops", "fraction_of_peak", "of measured peak"),
        ("pool", "Pooling", "gbps", "fraction_of_copy_bw", "of copy bandwidth"),
    ):
        if res.get(section):
            lines += [f"## {title}, batch {BATCH}, bf16", ""]
            lines += _table(
                [
                    "layer",
                    "shape",
                    "mode",
                    "provider",
                    "ms",
                    "TFLOP/s" if metric == "tflops" else "GB/s",
                    frac_title,
                    "roofline",
                    "vs cudnn",
                ],
                [
                    [
                        r["layer"],
                        r["shape"],
                        r["mode"],
                        r["provider"],
                        r.get("median_ms"),
                        r.get(metric),
                        _pct(r.get(frac_key)),
                        _pct(r.get("roofline_fraction")),
                        _x(r.get("speedup_vs_cudnn")),
                    ]
                    for r in res[section]
                ],
            )
            lines.append("")
    if res.get("failures") or res.get("skipped"):
        lines += ["## Failures and skips", ""]
        lines += [
            f"- FAILED ({f['kind']}) {f['section']}: {f['item']}: {(f['message'].splitlines() or [''])[0][:300]}"
            for f in res.get("failures", [])
        ]
        lines += [f"- skipped {s['section']}: {s['item']}: {s['reason']}" for s in res.get("skipped", [])]
        lines.append("")
    lines += [f"## Models, batch {BATCH}, bf16 (median ms; speedup of cnnkernels)", ""]
    med = {(r["model"], r["mode"], r["provider"]): r for r in res.get("models", [])}
    rows = []
    for model in MODELS:
        for mode in ("forward", "train"):
            ours = med.get((model, mode, "cnnkernels"), {})
            rows.append(
                [
                    model,
                    mode,
                    *(
                        med.get((model, mode, p), {}).get("median_ms")
                        for p in ("cnnkernels", "cudnn", "torch.compile", "torch.compile-max-autotune")
                    ),
                    _x(ours.get("speedup_vs_cudnn")),
                    _x(ours.get("speedup_vs_torch_compile")),
                    _pct(ours.get("roofline_fraction")),
                ]
            )
    lines += _table(
        [
            "model",
            "mode",
            "cnnkernels",
            "cudnn",
            "torch.compile",
            "max-autotune",
            "vs cudnn",
            "vs torch.compile",
            "roofline (cnnkernels)",
        ],
        rows,
    )
    lines.append("")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=450.0, help="overall time budget in seconds (default 450)")
    ap.add_argument("--tests-timeout", type=float, default=180.0, help="timeout of the pytest run (default 180)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the GPU correctness tests")
    ap.add_argument(
        "--max-autotune", action="store_true", help="also time torch.compile(mode='max-autotune') while time lasts"
    )
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the real compiled kernels, never the interpreter
    try:
        import torch
    except ImportError as exc:
        print(f"gpu-check: torch is not importable ({exc}); nothing measured", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA GPU (torch.cuda.is_available() is False): nothing measured; run it on a machine with an NVIDIA GPU",
            file=sys.stderr,
        )
        return 2

    check = Check(args)
    meta = check.results["meta"]
    meta.update(date=datetime.date.today().isoformat(), budget_s=args.budget)
    try:
        from _common import gpu_info

        meta.update(gpu_info())
    except Exception as exc:  # noqa: BLE001
        meta.update(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, roofline_gpu=None)
        check.fail("meta", "gpu_info", "error", f"{type(exc).__name__}: {exc}")
    meta["gpu_slug"] = slug(meta["gpu"])
    torch.backends.cudnn.benchmark = True
    log(f"{meta['gpu']}, torch {meta.get('torch')}, triton {meta.get('triton')}; writing to {check.out_dir}")

    if args.skip_tests:
        check.skip("tests", "pytest -m gpu tests -q", "--skip-tests")
    else:
        try:
            check.run_tests(max(10.0, min(args.tests_timeout, check.remaining() - 150)))
        except Exception as exc:  # noqa: BLE001
            check.results["tests"] = {"status": "error", "summary": f"{type(exc).__name__}: {exc}"}
            check.fail("tests", "pytest", "error", traceback.format_exc(limit=6))
    for name, func in (
        ("ceilings", check.ceilings),
        ("conv", check.conv),
        ("pool", check.pool),
        ("models", check.models),
        ("accuracy", check.accuracy),
        ("compile", check.compile),
    ):
        check.section(name, func, SECTION_BUDGETS_S[name])
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
