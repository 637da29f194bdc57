"""Grouped bar chart of the fused models' speedups from a ``benchmarks/gpu_check.py`` results.json.

    python -m cnnkernels.plot results.json -o speedup.png [--dtype bfloat16] [--batch 128]

One group of bars per (model, mode), one bar per baseline the file holds: baseline median /
cnnkernels median (above the dashed 1: the fused model is faster). Drawing needs matplotlib, the
optional ``plot`` extra (``pip install 'cnnkernels[plot]'``).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

BASELINES = ("cudnn", "torch.compile", "torch.compile-max-autotune")
MODES = ("forward", "backward", "train")


Speedup = collections.namedtuple("Speedup", "model mode baseline speedup")  # speedup: baseline / cnnkernels median


def load(path: str | Path) -> dict:
    """The results in ``path``; a file that is not valid JSON is a ``ValueError`` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("models"), list):
        raise ValueError(f"{path}: not a gpu_check results.json (no 'models' list)")
    return results


def speedups(results: dict, *, dtype: str | None = None, batch: int | None = None) -> tuple[list[Speedup], str, int]:
    """(speedups of cnnkernels over each baseline per (model, mode), dtype, batch): ``dtype`` by default
    bfloat16 when present (else the first found), ``batch`` the largest of that dtype."""
    rows = [r for r in results.get("models", []) if r.get("status", "ok") == "ok" and r.get("median_ms")]
    if not rows:
        raise ValueError("no successful model measurements in the results")
    dtypes = [r["dtype"] for r in rows]
    dtype = dtype or ("bfloat16" if "bfloat16" in dtypes else dtypes[0])
    batches = [r["batch"] for r in rows if r["dtype"] == dtype]
    if not batches:
        raise ValueError(f"no model measurements in {dtype}")
    batch = batch if batch is not None else max(batches)
    chosen = [r for r in rows if (r["dtype"], r["batch"]) == (dtype, batch)]
    med = {(r["model"], r["mode"], r["provider"]): r["median_ms"] for r in chosen}
    out = [
        Speedup(model, mode, base, med[(model, mode, base)] / med[(model, mode, "cnnkernels")])
        for model in dict.fromkeys(r["model"] for r in rows)
        for mode in MODES
        for base in BASELINES
        if med.get((model, mode, "cnnkernels")) and (model, mode, base) in med
    ]
    if not out:
        raise ValueError(f"no cnnkernels result with a baseline to compare at {dtype}, batch {batch}")
    return out, dtype, batch


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib, the optional 'plot' extra: pip install 'cnnkernels[plot]'"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def draw(results: dict, *, dtype: str | None = None, batch: int | None = None):
    """The grouped bar chart as a matplotlib figure (its caller closes it); legend right of the axes."""
    data, dtype, batch = speedups(results, dtype=dtype, batch=batch)
    plt = _pyplot()
    groups = list(dict.fromkeys((s.model, s.mode) for s in data))
    bases = [b for b in BASELINES if any(s.baseline == b for s in data)]
    value = {(s.model, s.mode, s.baseline): s.speedup for s in data}
    width = 0.8 / len(bases)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2) + 2.0, 4.5))
    for i, base in enumerate(bases):
        xs = [g + (i - (len(bases) - 1) / 2) * width for g in range(len(groups))]
        ys = [value.get((m, mode, base), 0.0) for m, mode in groups]
        bars = ax.bar(xs, ys, width, label=f"vs {base}")
        ax.bar_label(bars, labels=[f"{y:.2f}" if y else "" for y in ys], fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 1.15 * max(1.0, max(s.speedup for s in data)))
    ax.set_xticks(range(len(groups)), [f"{m}\n{mode}" for m, mode in groups])
    ax.set_ylabel("speedup of cnnkernels\n(baseline time / cnnkernels time)")
    meta = results.get("meta", {})
    ax.set_title(f"{meta.get('gpu', 'GPU ?')}, {dtype}, batch {batch} ({meta.get('date', 'undated')})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    return fig


def plot_speedups(
    results: dict | str | Path, output: str | Path, *, dtype: str | None = None, batch: int | None = None
) -> Path:
    """Draw the grouped bar chart into ``output`` (format from its suffix, e.g. .png) and return its path."""
    if not isinstance(results, dict):
        results = load(results)
    fig = draw(results, dtype=dtype, batch=batch)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    _pyplot().close(fig)
    return output


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cnnkernels.plot", description=__doc__.splitlines()[0])
    ap.add_argument("results", help="results.json written by benchmarks/gpu_check.py")
    ap.add_argument("-o", "--output", default="speedup.png", help="image to write (default speedup.png)")
    ap.add_argument("--dtype", default=None, help="dtype to plot (default bfloat16)")
    ap.add_argument("--batch", type=int, default=None, help="batch to plot (default the largest)")
    args = ap.parse_args(argv)
    try:
        path = plot_speedups(args.results, args.output, dtype=args.dtype, batch=args.batch)
    except (ValueError, OSError, ImportError) as exc:  # bad input (2), or the 'plot' extra is missing (1)
        print(f"cnnkernels.plot: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, ImportError) else 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
