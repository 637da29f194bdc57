"""Reference helpers and the one dtype -> tolerance table used by every test and check."""

from __future__ import annotations

import dataclasses
import json
import os

import torch


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float  # relative-norm bound
    atol: float  # elementwise absolute slack
    rtol_elem: float  # elementwise relative slack


TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-10, atol=1e-10, rtol_elem=1e-9),
    "float32": Tolerance(rtol=1e-5, atol=1e-5, rtol_elem=1e-4),
    "tf32": Tolerance(rtol=1e-3, atol=1e-2, rtol_elem=1e-2),
    "float16": Tolerance(rtol=1e-3, atol=1e-2, rtol_elem=1e-2),
    "bfloat16": Tolerance(rtol=1e-2, atol=5e-2, rtol_elem=5e-2),
}


def tolerance_key(dtype: torch.dtype, device_type: str = "cpu") -> str:
    """The table row for ``dtype``: fp32 on a GPU is TF32 exactly when cuDNN's flag says so."""
    if dtype == torch.float32 and device_type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return str(dtype).removeprefix("torch.")


def tolerance(dtype: torch.dtype, device_type: str = "cpu") -> Tolerance:
    return TOLERANCES[tolerance_key(dtype, device_type)]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are zero)."""
    out, ref = out.detach().double(), ref.detach().double()
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else num


def assert_close(
    out: torch.Tensor,
    ref: torch.Tensor,
    dtype: torch.dtype | None = None,
    *,
    name: str = "output",
    torch_out: torch.Tensor | None = None,
    device_type: str | None = None,
    scale: torch.Tensor | None = None,
) -> None:
    """Assert ``out`` matches ``ref`` (ideally fp64): NaN/±inf exactly where ``ref`` has them, then
    ``||out - ref|| / ||ref|| <= rtol`` and ``|out - ref| <= atol + rtol_elem * max(|ref|, scale)``
    over the finite elements; for fp16/bf16 with ``torch_out`` (torch's own result), also at most
    twice its error + atol. ``scale``, for a result that is a long sum, is the same sum over the
    terms' absolute values (a dot product's rounding error grows with it, not with the result,
    which cancellation can make small)."""
    dtype = dtype or out.dtype
    tol = tolerance(dtype, device_type or out.device.type)
    if out.shape != ref.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    out_d, ref_d = out.detach().double(), ref.detach().double()
    # Non-finite values must sit exactly where the reference has them, both ways.
    for label, pick in (
        ("NaN", torch.isnan),
        ("+inf", lambda t: t == float("inf")),
        ("-inf", lambda t: t == float("-inf")),
    ):
        got, want = pick(out_d), pick(ref_d)
        if not torch.equal(got, want):
            extra, missing = int((got & ~want).sum()), int((want & ~got).sum())
            first = int((got != want).flatten().nonzero()[0])
            raise AssertionError(
                f"{name}: {label} pattern differs from the reference ({extra} unexpected, {missing} missing; "
                f"first at flat index {first})"
            )
    finite = torch.isfinite(ref_d)
    out_f, ref_f = out_d[finite], ref_d[finite]
    err = rel_error(out_f, ref_f)
    if err > tol.rtol:
        raise AssertionError(f"{name}: relative error {err:.3e} > {tol.rtol:.0e} ({dtype})")
    diff = (out_f - ref_f).abs()
    bound = tol.atol + tol.rtol_elem * (
        ref_f.abs() if scale is None else scale.detach().double()[finite].abs().maximum(ref_f.abs())
    )
    if (diff > bound).any():
        i = int((diff - bound).argmax())
        raise AssertionError(
            f"{name}: element {i} of the finite ones differs by {diff[i]:.3e} (ref {ref_f[i].item():.4g}, "
            f"out {out_f[i].item():.4g}) > {bound[i]:.3e} = {tol.atol} + {tol.rtol_elem} * "
            f"{'|ref|' if scale is None else 'max(|scale|, |ref|)'} ({dtype})"
        )
    if torch_out is not None and dtype in (torch.float16, torch.bfloat16):
        theirs_d = torch_out.detach().double()
        keep = finite & torch.isfinite(theirs_d)
        ours, theirs = rel_error(out_d[keep], ref_d[keep]), rel_error(theirs_d[keep], ref_d[keep])
        if ours > 2 * theirs + tol.atol:
            raise AssertionError(f"{name}: error {ours:.3e} vs fp64 exceeds 2 x torch's {theirs:.3e} + {tol.atol}")


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so that any element a kernel fails to write shows up."""
    return t.fill_(float("nan"))


@dataclasses.dataclass(frozen=True)
class ModelVerdict:
    """One tensor of a model compared with its ``torch.nn`` twin (see ``model_verdict``)."""

    name: str
    err: float  # ||ours - fp64 twin|| / ||fp64 twin||
    torch_err: float  # the same for torch's own twin run in the model's dtype
    bound: float  # 2 * torch_err + floor
    max_abs: float  # max |ours - fp64 twin|
    ok: bool
    problem: str = ""  # why it failed when the error alone does not say (shape, NaN)

    def __str__(self) -> str:
        verdict = "pass" if self.ok else f"FAIL{': ' + self.problem if self.problem else ''}"
        return (
            f"{self.name}: error {self.err:.3e} vs fp64, torch's own {self.torch_err:.3e}, "
            f"bound {self.bound:.3e} -> {verdict}"
        )


def model_verdict(
    name: str,
    out: torch.Tensor,
    ref64: torch.Tensor,
    torch_out: torch.Tensor,
    dtype: torch.dtype | None = None,
    device_type: str | None = None,
) -> ModelVerdict:
    """The pass rule for a whole model's tensor (logits, or one gradient) against its ``torch.nn``
    twin: ``err(out vs ref64) <= 2 * err(torch_out vs ref64) + rtol`` (relative norms; ``ref64`` the
    twin in float64, ``torch_out`` the twin in ``dtype``, ``rtol`` the dtype's in ``TOLERANCES``)."""
    dtype = dtype or out.dtype
    floor = tolerance(dtype, device_type or out.device.type).rtol
    out, ref64, torch_out = out.detach().cpu(), ref64.detach().cpu(), torch_out.detach().cpu()
    if out.shape != ref64.shape or torch_out.shape != ref64.shape:
        nan = float("nan")
        shapes = f"shape {tuple(out.shape)}, twin {tuple(ref64.shape)}, torch {tuple(torch_out.shape)}"
        return ModelVerdict(name, nan, nan, nan, nan, False, shapes)
    err, torch_err = rel_error(out, ref64), rel_error(torch_out, ref64)
    bound = 2 * torch_err + floor
    max_abs = float((out.double() - ref64.double()).abs().max()) if out.numel() else 0.0
    bad = int((torch.isnan(out) & ~torch.isnan(ref64)).sum())
    problem = f"{bad} NaN element(s) where the twin has none" if bad else ""
    return ModelVerdict(name, err, torch_err, bound, max_abs, bool(err <= bound) and not bad, problem)


def log_report(item, report, **extra) -> None:
    """Append one pytest item's outcome as a JSON line to the file ``GPU_CHECK_ROWS`` names (if
    set): test id, outcome, duration, ``extra`` and, unless it passed, why. Written as each item
    ends, so a run stopped at its time limit still says why its finished items failed."""
    path = os.environ.get("GPU_CHECK_ROWS")
    if not path or (report.when != "call" and report.passed):
        return
    row = {"test": item.nodeid, "outcome": report.outcome, "when": report.when, "duration_s": round(report.duration, 2)}
    row |= extra
    if report.skipped and isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        row["message"] = report.longrepr[2].removeprefix("Skipped: ")
    elif not report.passed:
        row["message"] = report.longreprtext[-3000:]
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
