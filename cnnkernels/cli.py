"""The ``cnnkernels`` command line."""

from __future__ import annotations

import argparse
import os
import sys


def _ensure_backend() -> str:
    """'cuda' with a GPU; else switch on Triton's interpreter (before triton is imported)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise SystemExit("cnnkernels: torch is not installed")
    import torch

    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "cuda"
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("cnnkernels: no GPU, and triton was imported before TRITON_INTERPRET=1 could be set")
    os.environ["TRITON_INTERPRET"] = "1"
    return "cpu"


def _demo(args) -> int:
    """The fused convolution against torch on the seed's layer shapes (scaled down on the CPU)."""
    device = _ensure_backend()
    import torch
    import torch.nn.functional as F
    from rich.console import Console
    from rich.table import Table

    import cnnkernels.functional as CF
    from cnnkernels.testing import rel_error, tolerance

    scale = 1 if device == "cuda" else 4
    layers = [
        ("AlexNet conv1 11x11/4", 1, 96, 224, 11, 4, 1),
        ("AlexNet conv2 5x5", 96, 256, 26, 5, 1, 2),
        ("VGG conv 3x3", 64, 128, 112, 3, 1, 1),
        ("GoogLeNet stem 7x7/2", 1, 64, 224, 7, 2, 3),
        ("NiN 1x1", 96, 96, 54, 1, 1, 0),
    ]
    console = Console()
    table = Table(
        title=f"fused conv2d+bias+ReLU vs torch ({device}{', interpreter, reduced sizes' if device == 'cpu' else ''})"
    )
    for col in ("layer", "input", "output", "rel err fwd", "rel err dX", "rel err dW", "ok"):
        table.add_column(col)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    failed = False
    for name, c, k, hw, r, stride, pad in layers:
        c_ = max(1, c // scale) if c > 3 else c
        k_ = max(1, k // scale)
        hw_ = max(r, hw // scale)
        x = torch.randn(2, c_, hw_, hw_, device=device, dtype=dtype, requires_grad=True)
        w = (torch.randn(k_, c_, r, r, device=device, dtype=dtype) / (c_ * r * r) ** 0.5).requires_grad_()
        b = torch.randn(k_, device=device, dtype=dtype, requires_grad=True)
        y = CF.conv2d_relu(x, w, b, stride=stride, padding=pad)
        dy = torch.randn_like(y)
        y.backward(dy)
        xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
        yr = F.relu(F.conv2d(xr, wr, br, stride=stride, padding=pad))
        yr.backward(dy.double())
        errs = [rel_error(y, yr), rel_error(x.grad, xr.grad), rel_error(w.grad, wr.grad)]
        ok = all(e <= tolerance(dtype, device).rtol for e in errs)
        failed |= not ok
        table.add_row(
            name, str(tuple(x.shape)), str(tuple(y.shape)), *(f"{e:.1e}" for e in errs), "yes" if ok else "NO"
        )
    console.print(table)
    return 1 if failed else 0


def _report(args) -> int:
    from cnnkernels import report

    return report.main([])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnkernels", description="Fused Triton kernels for classic CNNs")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("demo", help="the main job: fused kernels checked against torch").set_defaults(fn=_demo)
    sub.add_parser("report", help="static sm_90 kernel table").set_defaults(fn=_report)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
