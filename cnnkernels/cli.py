"""The ``cnnkernels`` command line: summary, check, bench, report, train, demo.

Without a GPU the kernels run under Triton's interpreter: the CLI switches it on before triton
is imported, and says so. Bad input (an unknown model, an input too small for the
architecture) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

MODELS = ("alexnet", "vgg", "nin", "googlenet")
ALIASES = {"vgg11": "vgg", "vgg-11": "vgg", "inception": "googlenet"}
# Default image side per model for ``check`` and ``train`` on the CPU (interpreter): about the
# smallest size the architecture admits, so each model finishes in about a minute.
CPU_SIZE = {"alexnet": 67, "vgg": 32, "nin": 67, "googlenet": 32}


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _backend() -> str:
    """'cuda' with a usable GPU; else switch on the interpreter before triton is imported."""
    import torch

    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "cuda"
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError("no GPU, and triton was imported before TRITON_INTERPRET=1 could be set")
    os.environ["TRITON_INTERPRET"] = "1"
    return "cpu"


def _model_names(name: str, allow_all: bool) -> list[str]:
    key = ALIASES.get(name.lower(), name.lower())
    if allow_all and key == "all":
        return list(MODELS)
    if key not in MODELS:
        choices = ", ".join(MODELS + (("all",) if allow_all else ()))
        raise UsageError(f"unknown model {name!r}; choose one of: {choices}")
    return [key]


def _build(name: str, num_classes: int = 10, reference: bool = False):
    from cnnkernels import models

    ns = models.reference if reference else models
    return {"alexnet": ns.AlexNet, "vgg": ns.VGG, "nin": ns.NiN, "googlenet": ns.GoogLeNet}[name](
        num_classes=num_classes
    )


def _check_size(name: str, model, h: int, w: int) -> None:
    low = model.min_input_size
    if min(h, w) < low:
        raise UsageError(f"{name}: input {h}x{w} is too small; the architecture needs at least {low}x{low}")


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--input must be N,C,H,W (e.g. 1,1,224,224), got {text!r}") from None
    if len(dims) != 4 or min(dims) <= 0:
        raise UsageError(f"--input must be four positive integers N,C,H,W, got {text!r}")
    return dims


def _console():
    from rich.console import Console

    # Wide enough for the tables when the output is a pipe or a log (rich assumes 80 there).
    return Console(width=None if sys.stdout.isatty() else 150)


# ---------------------------------------------------------------------------------------------
# summary


def cmd_summary(args) -> int:
    from rich.table import Table

    from cnnkernels import roofline

    (name,) = _model_names(args.model, allow_all=False)
    shape = _parse_shape(args.input)
    model = _build(name)
    _check_size(name, model, shape[2], shape[3])
    rows = roofline.layer_table(name, shape, dtype=args.dtype)
    totals = roofline.totals_of(name, rows)
    table = Table(title=f"{name} at input {shape}, {totals.dtype}: roofline floor on an H100 (analytic)")
    for col, just in (
        ("layer", "left"),
        ("kind", "left"),
        ("output shape", "left"),
        ("params", "right"),
        ("GFLOP fwd", "right"),
        ("MB fwd", "right"),
        ("floor fwd (us)", "right"),
    ):
        table.add_column(col, justify=just)
    for r in rows:
        table.add_row(
            r.name,
            r.kind,
            "x".join(map(str, r.out_shape)),
            f"{r.params:,}",
            f"{r.flops_fwd / 1e9:.3f}",
            f"{r.bytes_fwd / 1e6:.2f}",
            f"{r.floor_s('H100') * 1e6:.1f}",
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        f"{totals.params:,}",
        f"{totals.flops_fwd / 1e9:.3f}",
        f"{totals.bytes_fwd / 1e6:.2f}",
        f"{totals.floor_s('H100') * 1e6:.1f}",
    )
    console = _console()
    console.print(table)
    console.print(
        f"training step floor: {totals.floor_s('H100', 'train') * 1e6:.1f} us on an H100; fusion saves "
        f"{totals.unfused_extra_bytes_fwd / 1e6:.1f} MB of memory traffic per forward "
        f"({totals.unfused_extra_bytes_train / 1e6:.1f} MB per training step) against layer-by-layer execution"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# check


def _dtype(text: str):
    import torch

    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp64": torch.float64,
        "float64": torch.float64,
    }
    if text not in table:
        raise UsageError(f"--dtype must be one of fp32, fp16, bf16, fp64, got {text!r}")
    return table[text]


def check_model(name: str, batch: int, size: int, dtype, device: str, seed: int = 0) -> list[dict]:
    """Fused model vs its ``torch.nn`` twin with the same weights, eval mode (no dropout):
    logits, input gradient and every parameter gradient. Returns one row per tensor compared.
    The twin runs in float64 so that its own rounding stays out of the comparison."""
    import torch

    from cnnkernels import models
    from cnnkernels.testing import rel_error, tolerance

    torch.manual_seed(seed)
    ref = _build(name, reference=True).to(device)
    _check_size(name, ref, size, size)
    x = torch.randn(batch, 1, size, size, device=device)
    with torch.no_grad():
        ref(x)  # materialise the lazy layers
    fused = models.from_reference(ref).to(dtype).eval()
    ref = ref.double().eval()
    xf = x.to(dtype).clone().requires_grad_()
    xr = x.to(dtype).double().requires_grad_()  # the same rounded image, as a separate leaf
    logits = fused(xf)
    ref_logits = ref(xr)
    g = torch.randn_like(ref_logits)
    logits.backward(g.to(dtype))
    ref_logits.backward(g)
    tol = tolerance(dtype, device)
    rows = [("logits", logits.detach(), ref_logits.detach()), ("grad input", xf.grad, xr.grad)]
    ref_params = dict(ref.named_parameters())
    rows += [(f"grad {n}", p.grad, ref_params[n].grad) for n, p in fused.named_parameters()]
    out = []
    for label, got, want in rows:
        err = rel_error(got, want)
        out.append(
            {
                "model": name,
                "tensor": label,
                "max_abs": float((got.double() - want).abs().max()),
                "rel": err,
                "ok": bool(err <= tol.rtol and not torch.isnan(got).any()),
            }
        )
    return out


def cmd_check(args) -> int:
    from rich.progress import Progress
    from rich.table import Table

    names = _model_names(args.model, allow_all=True)
    device = _backend()
    import torch

    dtype = _dtype(args.dtype) if args.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    console = _console()
    if device == "cpu":
        console.print(
            "[bold]No GPU: running the real Triton kernels under Triton's interpreter on the CPU, at small "
            "sizes[/bold] (correctness only; this says nothing about speed)."
        )
    results, failed = [], False
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("checking", total=len(names))
        for name in names:
            size = args.size or (224 if device == "cuda" else CPU_SIZE[name])
            batch = args.batch or (32 if device == "cuda" else 2)
            progress.update(task, description=f"{name} (batch {batch}, {size}x{size}, {str(dtype)[6:]})")
            t0 = time.perf_counter()
            rows = check_model(name, batch, size, dtype, device)
            results.append((name, batch, size, rows, time.perf_counter() - t0))
            progress.advance(task)
    for name, batch, size, rows, secs in results:
        table = Table(
            title=f"{name}: fused vs torch.nn twin, batch {batch}, {size}x{size}, {str(dtype)[6:]} ({secs:.0f} s)"
        )
        for col in ("tensor", "max abs err", "rel err", "ok"):
            table.add_column(col)
        worst = {}
        for r in rows:
            worst[r["tensor"]] = r
            failed |= not r["ok"]
        for r in rows:
            table.add_row(
                r["tensor"], f"{r['max_abs']:.2e}", f"{r['rel']:.2e}", "pass" if r["ok"] else "[red]FAIL[/red]"
            )
        console.print(table)
    console.print("[red]FAILED[/red]" if failed else "all checks passed")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# bench


def cmd_bench(args) -> int:
    names = _model_names(args.model, allow_all=True)
    import torch

    if not torch.cuda.is_available():
        print("cnnkernels bench: a CUDA GPU is needed (the interpreter measures nothing about speed)", file=sys.stderr)
        return 2
    from rich.table import Table

    from cnnkernels import models

    console = _console()
    dtype = _dtype(args.dtype)
    table = Table(title=f"{torch.cuda.get_device_name()}, {str(dtype)[6:]}, batch {args.batch}, forward")
    for col in ("model", "provider", "ms", "images/s", "speedup vs cudnn"):
        table.add_column(col)
    for name in names:
        ref = _build(name, reference=True).cuda()
        x = torch.randn(args.batch, 1, args.size, args.size, device="cuda")
        with torch.no_grad():
            ref(x)
        fused = models.from_reference(ref).to(dtype).eval()
        ref = ref.to(dtype).to(memory_format=torch.channels_last).eval()
        xd = x.to(dtype)
        times = {}
        for provider, model in (("cudnn", ref), ("cnnkernels", fused), ("torch.compile", torch.compile(ref))):
            times[provider] = _time_ms(lambda m=model, inp=xd: m(inp))
        for provider, ms in times.items():
            table.add_row(name, provider, f"{ms:.3f}", f"{args.batch / ms * 1e3:,.0f}", f"{times['cudnn'] / ms:.2f}x")
    console.print(table)
    return 0


def _time_ms(fn, warmup: int = 5, reps: int = 20) -> float:
    import torch

    with torch.no_grad():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


# ---------------------------------------------------------------------------------------------
# train


def _read_idx(path: str):
    """An idx file (the MNIST/Fashion-MNIST format), gzipped or not, as a numpy array."""
    import gzip

    import numpy as np

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise UsageError(f"{path}: not an idx file of unsigned bytes")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(directory: str):
    import glob

    def find(stem):
        hits = sorted(glob.glob(os.path.join(directory, stem + "*")))
        if not hits:
            raise UsageError(f"--data {directory}: no {stem}* idx file found")
        return hits[0]

    return _read_idx(find("train-images-idx3-ubyte")), _read_idx(find("train-labels-idx1-ubyte"))


def cmd_train(args) -> int:
    (name,) = _model_names(args.model, allow_all=False)
    device = _backend()
    import torch
    import torch.nn.functional as F

    console = _console()
    size = args.size or (224 if device == "cuda" else CPU_SIZE[name])
    model = _build(name).to(device)
    _check_size(name, model, size, size)
    if device == "cpu":
        console.print(f"No GPU: training under Triton's interpreter at {size}x{size} (slow; correctness only).")
    if args.data:
        images, labels = _fashion_mnist(args.data)
        source = f"Fashion-MNIST from {args.data}"
    else:
        images = labels = None
        source = "synthetic data (class-dependent patterns)"
    console.print(f"training {name} on {source}, batch {args.batch}, lr {args.lr}, {args.steps} steps")
    gen = torch.Generator().manual_seed(0)
    protos = torch.randn(10, 1, size, size, generator=gen)
    optimizer = None
    for step in range(1, args.steps + 1):
        if images is not None:
            idx = torch.randint(0, len(images), (args.batch,), generator=gen)
            x = torch.from_numpy(images[idx.numpy()].copy()).float().div_(255).unsqueeze(1)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # the course resizes
            y = torch.from_numpy(labels[idx.numpy()].astype("int64"))
        else:
            y = torch.randint(0, 10, (args.batch,), generator=gen)
            x = protos[y] + 0.5 * torch.randn(args.batch, 1, size, size, generator=gen)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        if optimizer is None:  # after the first forward has materialised the lazy layers
            optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        acc = (logits.argmax(1) == y).float().mean().item()
        console.print(f"step {step:4d}  loss {loss.item():.4f}  accuracy {acc:.3f}")
    return 0


# ---------------------------------------------------------------------------------------------
# report, demo


def cmd_report(args) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise UsageError("report compiles for sm_90 and cannot run with TRITON_INTERPRET=1 set")
    from cnnkernels import report

    return report.main(["--kernel", args.kernel] if args.kernel else [])


def cmd_demo(args) -> int:
    """The main job: on a GPU, ``bench all``; without one, ``check all`` then ``summary googlenet``."""
    import torch

    if torch.cuda.is_available():
        return cmd_bench(argparse.Namespace(model="all", dtype="bf16", batch=128, size=224))
    status = cmd_check(argparse.Namespace(model="all", batch=None, size=None, dtype=None))
    cmd_summary(argparse.Namespace(model="googlenet", input="1,1,224,224", dtype="bf16"))
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnnkernels", description="Fused Triton kernels for AlexNet, VGG, NiN and GoogLeNet"
    )
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("summary", help="per-layer output shape, parameters, FLOPs and roofline floor")
    s.add_argument("model")
    s.add_argument("--input", default="1,1,224,224", help="N,C,H,W (default: the course's 1,1,224,224)")
    s.add_argument("--dtype", default="bf16", help="element type for byte counts (default bf16)")
    s.set_defaults(fn=cmd_summary)
    c = sub.add_parser("check", help="fused model vs its torch.nn twin: logits and every gradient")
    c.add_argument("model", help="alexnet, vgg, nin, googlenet or all")
    c.add_argument("--batch", type=int, default=None)
    c.add_argument("--size", type=int, default=None, help="image side (default 224 on a GPU, small on the CPU)")
    c.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default bf16 on a GPU, fp32 on the CPU)")
    c.set_defaults(fn=cmd_check)
    b = sub.add_parser("bench", help="speed against cuDNN and torch.compile (needs a GPU)")
    b.add_argument("model")
    b.add_argument("--batch", type=int, default=128)
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--dtype", default="bf16")
    b.set_defaults(fn=cmd_bench)
    r = sub.add_parser("report", help="static sm_90 table: registers, spills, shared memory, HGMMA")
    r.add_argument("--kernel", default="", help="only the kernels whose name starts with this")
    r.set_defaults(fn=cmd_report)
    t = sub.add_parser("train", help="a short training run on the fused kernels")
    t.add_argument("model")
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--size", type=int, default=None)
    t.add_argument("--data", default=None, help="folder with Fashion-MNIST idx files (default: synthetic data)")
    t.set_defaults(fn=cmd_train)
    d = sub.add_parser("demo", help="the main job: bench all on a GPU; else check all + summary googlenet")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"cnnkernels {args.verb}: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # e.g. a model's own input check
        if "too small" in str(e) or "at least" in str(e):
            print(f"cnnkernels {args.verb}: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
