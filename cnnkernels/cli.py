"""The ``cnnkernels`` command line: summary, check, bench, report, train, demo.

Bad input is one line on stderr naming the argument and exit code 2, before any work starts.
Output is plain text, one line per finished step; with rich installed, boxed tables and colours.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import sys
import time

MODELS = ("alexnet", "vgg", "nin", "googlenet")
ALIASES = {"vgg11": "vgg", "vgg-11": "vgg", "inception": "googlenet"}
# Image side per model for ``check`` and ``train`` on the CPU: about the smallest the architecture admits.
CPU_SIZE = {"alexnet": 67, "vgg": 32, "nin": 67, "googlenet": 32}


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


# argument types: each rejects bad input at parse time, naming the argument


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be a {what} integer, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def dtype_name(text: str) -> str:
    from cnnkernels.roofline import _dtype_name

    try:
        return _dtype_name(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be one of fp32, fp16, bf16, fp64, got {text!r}") from None


def _opt(default, type, help: str):  # noqa: A002 - argparse's own names
    """A ``TrainConfig`` field that is also a ``cnnkernels train`` option (``--name-with-dashes``)."""
    return dataclasses.field(default=default, metadata={"type": type, "help": help})


@dataclasses.dataclass
class TrainConfig:
    """What one training run needs (``cnnkernels.train.train``): ``cnnkernels train``'s options."""

    model: str = dataclasses.field(
        metadata={"help": "alexnet, vgg, nin, googlenet, or MODULE:FUNCTION / FILE.py:FUNCTION (num_classes=10)"}
    )
    steps: int = _opt(5, positive_int, "optimizer steps in all (default 5)")
    batch: int = _opt(8, positive_int, "global batch, split evenly across ranks (default 8)")
    lr: float = _opt(0.01, positive_float, "SGD learning rate (default 0.01)")
    momentum: float = _opt(0.0, float, "SGD momentum (default 0)")
    size: int | None = _opt(None, positive_int, "image side (default 224 on a GPU, small on the CPU)")
    data: str | None = _opt(None, str, "folder with Fashion-MNIST idx files (default: synthetic data)")
    dtype: str | None = _opt(
        None,
        dtype_name,
        "fp32, bf16 or fp16: autocast with fp32 master weights, fp16 with a GradScaler "
        "(default bf16 on a GPU, fp32 on the CPU)",
    )
    seed: int = _opt(0, nonnegative_int, "weights, data order and synthetic data (default 0)")
    checkpoint: str | None = _opt(None, str, "checkpoint file, written atomically by rank 0")
    save_every: int = _opt(0, nonnegative_int, "save every N steps (default 0: at the end only)")
    resume: bool = _opt(False, bool, "continue from --checkpoint when it exists (start fresh when not)")
    log_every: int = _opt(1, positive_int, "a progress line every N steps (default 1)")
    accum: int = _opt(1, positive_int, "micro-batches per step: gradient accumulation (DDP no_sync)")
    workers: int | None = _opt(None, nonnegative_int, "DataLoader workers (default 4 on a GPU, 0 on the CPU)")
    val_images: int | None = _opt(None, positive_int, "validation images (default all on a GPU, one batch on the CPU)")
    synthetic: int = _opt(60000, positive_int, "synthetic training images (default 60000)")
    bucket_cap_mb: float = _opt(25.0, positive_float, "DDP gradient bucket size (default 25)")
    fuse: bool = _opt(False, bool, "run cnnkernels.fuse on a MODULE:FUNCTION model first")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (``prog: message``) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")


class Out:
    """Output: plain text, with rich's boxes and colours on top when it is installed."""

    def __init__(self) -> None:
        try:
            from rich.console import Console
        except ImportError:
            self.console = None
        else:
            # Wide enough for the tables when the output is a pipe or a log (rich assumes 80 there).
            self.console = Console(width=None if sys.stdout.isatty() else 150, highlight=False)

    def line(self, text: str, style: str | None = None) -> None:
        if self.console is None:
            print(text, flush=True)
        else:
            self.console.print(text, style=style, markup=False)

    def table(self, title: str, columns: list[str], rows: list[list[str]], *, right=(), total=None) -> None:
        """``right``: indices of right-aligned columns; ``total``: a last row set apart."""
        if self.console is not None:
            from rich.table import Table

            t = Table(title=title)
            for i, col in enumerate(columns):
                t.add_column(col, justify="right" if i in right else "left")
            for row in rows:
                t.add_row(*row)
            if total is not None:
                t.add_section()
                t.add_row(*total)
            self.console.print(t)
            return
        body = rows + ([total] if total is not None else [])
        widths = [max(len(str(c)) for c in col) for col in zip(columns, *body)]

        def fmt(row):
            cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()

        rule = "-" * len(fmt(["-" * w for w in widths]))
        lines = [title, fmt(columns), rule, *map(fmt, rows)]
        if total is not None:
            lines += [rule, fmt(total)]
        print("\n".join(lines), flush=True)


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:02.0f} s"


# shared checks


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
    from cnnkernels.roofline import _MODEL_ALIASES

    return getattr(models.reference if reference else models, _MODEL_ALIASES[name])(num_classes=num_classes)


def _check_size(name: str, model, h: int, w: int, arg: str = "--size") -> None:
    low = model.min_input_size
    if min(h, w) < low:
        raise UsageError(f"{arg}: {name} input {h}x{w} is too small; the architecture needs at least {low}x{low}")


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--input must be N,C,H,W (e.g. 1,1,224,224), got {text!r}") from None
    if len(dims) != 4 or min(dims) <= 0:
        raise UsageError(f"--input must be four positive integers N,C,H,W, got {text!r}")
    return dims


def shape_str(shape) -> str:
    return "x".join(map(str, shape))


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def cmd_summary(args) -> int:
    from cnnkernels import roofline

    (name,) = _model_names(args.model, allow_all=False)
    shape = _parse_shape(args.input)
    _check_size(name, _build(name), shape[2], shape[3], arg="--input")
    rows = roofline.layer_table(name, shape, dtype=args.dtype)
    totals = roofline.totals_of(name, rows)

    def cells(x, *first):  # a Layer or the ModelTotals
        gflops, mb, us = x.flops_fwd / 1e9, x.bytes_fwd / 1e6, x.floor_s() * 1e6
        return [*first, f"{x.params:,}", f"{gflops:.3f}", f"{mb:.2f}", f"{us:.1f}"]

    out = Out()
    out.table(
        f"{name} at input {shape}, {totals.dtype}: roofline floor on an H100 (analytic)",
        ["layer", "kind", "output shape", "params", "GFLOP fwd", "MB fwd", "floor fwd (us)"],
        [cells(r, r.name, f"{r.kind} in {r.computed_in}".removesuffix(" in "), shape_str(r.out_shape)) for r in rows],
        right=(3, 4, 5, 6),
        total=cells(totals, "total", "", ""),
    )
    out.line(
        f"training step floor: {totals.floor_s('H100', 'train') * 1e6:.1f} us on an H100; fusion saves "
        f"{totals.unfused_extra_bytes_fwd / 1e6:.1f} MB of memory traffic per forward "
        f"({totals.unfused_extra_bytes_train / 1e6:.1f} MB per training step) against layer-by-layer execution"
    )
    if args.train:
        from cnnkernels import memory

        row = memory.compare(roofline._MODEL_ALIASES[name], shape=shape, dtype=_torch_dtype(args.dtype))
        out.line(
            f"training step: {row.fused / memory.MIB:,.1f} MiB saved for backward, against "
            f"{row.twin / memory.MIB:,.1f} MiB for the torch.nn twin ({row.ratio:.2f}x; measured on the meta device, "
            "parameters excluded)"
        )
    return 0


def check_model(name: str, batch: int, size: int, dtype, device: str, seed: int = 0, progress=None) -> list:
    """Fused model vs its ``torch.nn`` twin with the same weights, eval mode: one
    ``cnnkernels.testing.model_verdict`` per tensor (logits, input and parameter gradients), against
    the twin in float64 and in ``dtype``. ``progress(label, seconds)`` is called after each stage."""
    import copy

    import torch

    from cnnkernels import models
    from cnnkernels.testing import model_verdict

    def stage(label, t0):
        if progress is not None:
            progress(label, time.perf_counter() - t0)
        return time.perf_counter()

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    ref = _build(name, reference=True).to(device)
    _check_size(name, ref, size, size)
    x = torch.randn(batch, 1, size, size, device=device)
    with torch.no_grad():
        ref(x)  # materialise the lazy layers
    fused = models.from_reference(ref).to(dtype).eval()
    twins = {"fp64": copy.deepcopy(ref).double().eval(), "torch": copy.deepcopy(ref).to(dtype).eval()}
    # The same rounded image for all three, each its own leaf.
    xf = x.to(dtype).clone().requires_grad_()
    xs = {"fp64": x.to(dtype).double().requires_grad_(), "torch": x.to(dtype).clone().requires_grad_()}
    logits = fused(xf)
    t0 = stage("fused forward", t0)
    g = torch.randn(logits.shape, dtype=torch.float64, device=device)
    logits.backward(g.to(dtype))
    t0 = stage("fused backward", t0)
    outs = {}
    for key, twin in twins.items():
        out = twin(xs[key])
        out.backward(g.to(out.dtype))
        outs[key] = out.detach()
    stage(f"torch.nn twin in float64 and in {str(dtype).removeprefix('torch.')}", t0)
    rows = [
        ("logits", logits.detach(), outs["fp64"], outs["torch"]),
        ("grad input", xf.grad, xs["fp64"].grad, xs["torch"].grad),
    ]
    p64, pt = dict(twins["fp64"].named_parameters()), dict(twins["torch"].named_parameters())
    rows += [(f"grad {n}", p.grad, p64[n].grad, pt[n].grad) for n, p in fused.named_parameters()]
    return [model_verdict(label, got, want, theirs, dtype, device) for label, got, want, theirs in rows]


def cmd_check(args) -> int:
    device = _backend()
    cuda = device == "cuda"
    names = _model_names(args.model, allow_all=True)
    plan = [(n, args.batch or (32 if cuda else 2), args.size or (224 if cuda else CPU_SIZE[n])) for n in names]
    for name, _, size in plan:  # every size checked before anything runs
        _check_size(name, _build(name, reference=True), size, size)
    dtype = _torch_dtype(args.dtype or ("bfloat16" if cuda else "float32"))
    dname = str(dtype).removeprefix("torch.")
    out = Out()
    if not cuda:
        out.line(
            "No GPU: running the real Triton kernels under Triton's interpreter on the CPU, at small "
            "sizes (correctness only; this says nothing about speed).",
            style="bold",
        )
    out.line(
        "Pass rule per tensor: error vs a float64 run of the torch.nn twin <= 2 x the twin's own error "
        f"in {dname} + the {dname} tolerance (cnnkernels.testing.model_verdict)."
    )
    failed, start = [], time.perf_counter()
    for i, (name, batch, size) in enumerate(plan, 1):
        out.line(f"[{i}/{len(plan)}] {name}: batch {batch}, {size}x{size}, {dname} ...")
        t0 = time.perf_counter()
        verdicts = check_model(
            name, batch, size, dtype, device, progress=lambda label, s: out.line(f"    {label}: {_secs(s)}")
        )
        took = _secs(time.perf_counter() - t0)
        bad = [v for v in verdicts if not v.ok]
        if bad:
            failed.append(name)
            verdict = f"FAILED, {len(bad)} of {len(verdicts)} tensors outside their bound (first: {bad[0].name})"
        else:
            worst = max(verdicts, key=lambda v: v.err / v.bound if v.bound > 0 else math.inf)
            closest = f"{worst.name} at {worst.err / worst.bound:.0%} of it"
            verdict = f"PASS, all {len(verdicts)} tensors within their bound (closest: {closest})"
        out.line(f"{name}: {verdict} ({took})", style="bold red" if bad else "bold green")
        out.table(
            f"{name}: fused vs torch.nn twin, batch {batch}, {size}x{size}, {dname}",
            ["tensor", "max abs err", "rel err", f"torch {dname} rel err", "bound", "ok"],
            [
                [v.name, *(f"{e:.2e}" for e in (v.max_abs, v.err, v.torch_err, v.bound)), "pass" if v.ok else "FAIL"]
                for v in verdicts
            ],
            right=(1, 2, 3, 4),
        )
    total = _secs(time.perf_counter() - start)
    if failed:
        out.line(f"FAILED: {', '.join(failed)} ({total})", style="bold red")
    else:
        out.line(f"all checks passed: {len(plan)} model(s) in {total}", style="bold green")
    return 1 if failed else 0


def cmd_bench(args) -> int:
    names = _model_names(args.model, allow_all=True)
    if args.host:
        return _bench_host(names)
    import torch

    if not torch.cuda.is_available():
        print("cnnkernels bench: a CUDA GPU is needed (the interpreter measures nothing about speed)", file=sys.stderr)
        return 2
    for name in names:
        _check_size(name, _build(name, reference=True), args.size, args.size)
    from cnnkernels import models
    from cnnkernels.timing import gpu_time_s, peak_memory_bytes

    out = Out()
    dtype = _torch_dtype(args.dtype)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        ref = _build(name, reference=True).cuda()
        x = torch.randn(args.batch, 1, args.size, args.size, device="cuda")
        with torch.no_grad():
            ref(x)
        fused = models.from_reference(ref).to(dtype).eval()
        ref = ref.to(dtype).to(memory_format=torch.channels_last).eval()
        xd = x.to(dtype)
        base = None
        for provider, model in (("cudnn", ref), ("cnnkernels", fused), ("torch.compile", torch.compile(ref))):
            with torch.no_grad():  # median ms (triton.testing.do_bench) and peak MiB of a forward
                fn = functools.partial(model, xd)
                ms, mib = gpu_time_s(fn) * 1e3, peak_memory_bytes(fn) / 2**20
            base = base or ms
            rows.append(
                [name, provider, f"{ms:.3f}", f"{args.batch / ms * 1e3:,.0f}", f"{base / ms:.2f}x", f"{mib:,.0f}"]
            )
        out.line(f"{name}: measured ({_secs(time.perf_counter() - t0)})")
    out.table(
        f"{torch.cuda.get_device_name()}, {args.dtype}, batch {args.batch}, forward",
        ["model", "provider", "ms", "images/s", "speedup vs cudnn", "peak MiB"],
        rows,
        right=(2, 3, 4, 5),
    )
    return 0


def _bench_host(names: list[str]) -> int:
    """Host cost per op and per model call, launches counted not run (``cnnkernels.host``): runs anywhere."""
    _backend()
    from cnnkernels import host

    out = Out()
    rows = [
        [ours.name, f"{ours.us:.1f}", f"{theirs.us:.1f}", f"{ours.us / theirs.us:.2f}x", str(ours.python_calls)]
        for ours, theirs in host.op_costs()
    ]
    out.table(
        "host cost per op call (launches counted, not run; torch: the same op on one element)",
        ["op", "cnnkernels us", "torch us", "ratio", "Python calls"],
        rows,
        right=(1, 2, 3, 4),
    )
    rows = []
    for train in (False, True):
        for cost in host.model_costs(names, train=train):
            rows.append([cost.name, str(cost.python_calls), str(cost.launches), f"{cost.us / 1e3:.2f}"])
        out.line(f"{'training steps' if train else 'forwards'} measured")
    out.table(
        "host cost per model call, batch 1 (ms include torch's own ops, e.g. Linear, run on this device)",
        ["model call", "Python calls", "launches", "ms"],
        rows,
        right=(1, 2, 3),
    )
    return 0


def cmd_train(args) -> int:
    """``cnnkernels.train`` in one process or as one ``torchrun`` rank: a usage error printed by rank 0
    only (every rank refuses it); another rank's exception propagates, so torchrun reports that rank."""
    rank = os.environ.get("RANK", "0")
    try:
        _backend()
        from cnnkernels import train

        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
        run = train.train
        if "TORCHELASTIC_ERROR_FILE" in os.environ:  # under torchrun: its summary shows this rank's error
            from torch.distributed.elastic.multiprocessing.errors import record

            run = record(run)
        status, _ = run(cfg)
    except UsageError:
        if rank == "0":
            raise
        return 2
    return status


def cmd_report(args) -> int:
    """The static sm_90 report (``cnnkernels.report``, which re-runs itself without the interpreter)."""
    from cnnkernels import report

    argv = [f"--kernel={args.kernel}", f"--jobs={args.jobs}", *["--quick"] * args.quick, *["--json"] * args.json]
    return report.main(argv + [f"--dtype={d}" for d in args.dtype or []] + [f"--layer={x}" for x in args.layer or []])


def cmd_demo(args) -> int:
    """The main job: on a GPU, ``bench all``; without one, ``check all`` then ``summary googlenet``."""
    import torch

    parser = build_parser()
    if torch.cuda.is_available():
        return cmd_bench(parser.parse_args(["bench", "all"]))
    print("demo: cnnkernels check all (no GPU), then cnnkernels summary googlenet", flush=True)
    status = cmd_check(parser.parse_args(["check", "all"]))
    cmd_summary(parser.parse_args(["summary", "googlenet"]))
    return status


def build_parser() -> argparse.ArgumentParser:
    from cnnkernels import report

    p = OneLineParser(
        prog="cnnkernels",
        description="Fused Triton kernels for AlexNet, VGG, NiN and GoogLeNet",
        epilog="Output is plain text; colours and boxed tables: pip install 'cnnkernels[cli]' (rich).",
    )
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("summary", help="per-layer output shape, parameters, FLOPs and roofline floor")
    s.add_argument("model")
    s.add_argument("--input", default="1,1,224,224", help="N,C,H,W (default: the course's 1,1,224,224)")
    s.add_argument("--dtype", type=dtype_name, default="bfloat16", help="element type for byte counts (default bf16)")
    s.add_argument("--train", action="store_true", help="also the bytes saved for backward per step, fused vs twin")
    c = sub.add_parser("check", help="fused model vs its torch.nn twin: logits and every gradient")
    c.add_argument("model", help="alexnet, vgg, nin, googlenet or all")
    c.add_argument("--batch", type=positive_int, help="default 32 on a GPU, 2 on the CPU")
    c.add_argument("--size", type=positive_int, help="image side (default 224 on a GPU, small on the CPU)")
    c.add_argument("--dtype", type=dtype_name, help="fp32, fp16, bf16, fp64 (default bf16 on a GPU, fp32 on the CPU)")
    b = sub.add_parser("bench", help="speed against cuDNN and torch.compile (needs a GPU)")
    b.add_argument("model")
    b.add_argument("--batch", type=positive_int, default=128)
    b.add_argument("--size", type=positive_int, default=224)
    b.add_argument("--dtype", type=dtype_name, default="bfloat16")
    b.add_argument("--host", action="store_true", help="host cost per op and model call, launches counted (no GPU)")
    r = sub.add_parser("report", help="static sm_90 table: registers, spills, HGMMA, main-loop cost")
    report.add_options(r)
    t = sub.add_parser(
        "train",
        help="train on the fused kernels: one process, or every rank of a torchrun job (DDP)",
        description="Train on the fused kernels. Runs unchanged under torchrun --nproc-per-node N "
        "(DistributedDataParallel, NCCL on GPUs, Gloo on CPUs); --batch is the global batch.",
    )
    model, *options = dataclasses.fields(TrainConfig)
    t.add_argument("model", help=model.metadata["help"])
    for f in options:  # --name-with-dashes; a bool is a flag
        kind = {"action": "store_true"} if f.default is False else {"type": f.metadata["type"], "default": f.default}
        t.add_argument("--" + f.name.replace("_", "-"), help=f.metadata["help"], **kind)
    sub.add_parser("demo", help="the main job: bench all on a GPU; else check all + summary googlenet")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line, see OneLineParser) or --help
        return e.code if isinstance(e.code, int) else 2
    try:
        return globals()[f"cmd_{args.verb}"](args)  # verb NAME runs cmd_NAME
    except UsageError as e:
        print(f"cnnkernels {args.verb}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `cnnkernels summary vgg | head`: stop quietly, as a Unix tool does
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    # ``python -m cnnkernels.cli`` (as torchrun -m runs it): run the importable module's main, so
    # that this file's classes (UsageError) are the ones cnnkernels.train imports, not copies.
    from cnnkernels.cli import main as _main

    sys.exit(_main())
