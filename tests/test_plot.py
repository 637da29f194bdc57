"""``python -m cnnkernels.plot``: speedups from a gpu_check results.json and the PNG it draws."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from cnnkernels import plot

REPO = Path(__file__).resolve().parents[1]


def _row(model, mode, provider, ms, *, dtype="bfloat16", batch=128, status="ok"):
    return {
        "model": model,
        "mode": mode,
        "batch": batch,
        "dtype": dtype,
        "provider": provider,
        "status": status,
        "median_ms": ms if status == "ok" else None,
    }


@pytest.fixture
def results_json(tmp_path):
    models = [
        _row("AlexNet", "forward", "cnnkernels", 2.0),
        _row("AlexNet", "forward", "cudnn", 3.0),
        _row("AlexNet", "forward", "torch.compile", 2.5),
        _row("AlexNet", "train", "cnnkernels", 8.0),
        _row("AlexNet", "train", "cudnn", 6.0),
        _row("GoogLeNet", "forward", "cnnkernels", 4.0),
        _row("GoogLeNet", "forward", "cudnn", 8.0),
        _row("GoogLeNet", "train", "cnnkernels", None, status="failed"),
        _row("GoogLeNet", "train", "cudnn", 20.0),
        _row("AlexNet", "forward", "cnnkernels", 1.0, batch=32),
        _row("AlexNet", "forward", "cudnn", 1.5, batch=32),
        _row("AlexNet", "forward", "cnnkernels", 5.0, dtype="float32"),
        _row("AlexNet", "forward", "cudnn", 4.0, dtype="float32"),
    ]
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps(
            {"schema": "cnnkernels.gpu_check/1", "meta": {"gpu": "Test GPU", "date": "2026-01-01"}, "models": models}
        )
    )
    return path


def test_speedups_default_to_bf16_and_largest_batch(results_json):
    data, dtype, batch = plot.speedups(plot.load(results_json))
    assert (dtype, batch) == ("bfloat16", 128)
    got = {(s.model, s.mode, s.baseline): s.speedup for s in data}
    assert got == {
        ("AlexNet", "forward", "cudnn"): 1.5,
        ("AlexNet", "forward", "torch.compile"): 1.25,
        ("AlexNet", "train", "cudnn"): 0.75,
        ("GoogLeNet", "forward", "cudnn"): 2.0,
    }  # the failed GoogLeNet train run has no bar


def test_speedups_select_dtype_and_batch(results_json):
    res = plot.load(results_json)
    data, _, _ = plot.speedups(res, batch=32)
    assert [(s.model, s.speedup) for s in data] == [("AlexNet", 1.5)]
    data, _, _ = plot.speedups(res, dtype="float32")
    assert [s.speedup for s in data] == [0.8]
    with pytest.raises(ValueError, match="no model measurements"):
        plot.speedups(res, dtype="float16")


def test_not_a_results_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ValueError, match="models"):
        plot.load(bad)
    assert plot.main([str(bad), "-o", str(tmp_path / "x.png")]) == 2


@pytest.mark.parametrize(
    "content", [b"{not json", b"", b"\x89PNG\r\n\x1a\n\xff\xfe"], ids=["malformed", "empty", "binary"]
)
def test_malformed_json_names_the_file(tmp_path, capsys, content):
    bad = tmp_path / "broken-results.json"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="broken-results.json"):
        plot.load(bad)
    assert plot.main([str(bad), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "broken-results.json" in err and err.count("\n") == 1


def test_bar_labels_and_bars_clear_of_legend_and_title(tmp_path):
    """No bar label or bar overlaps the legend, and no label the title (data on which a legend
    placed inside the axes covered a label)."""
    pytest.importorskip("matplotlib", reason="matplotlib (the optional 'plot' extra) is not installed")
    import matplotlib.pyplot as plt

    rows = [_row("AlexNet", mode, "cnnkernels", 1.0) for mode in ("forward", "train")]
    rows += [_row("AlexNet", "forward", "cudnn", 1.75), _row("AlexNet", "forward", "torch.compile", 0.89)]
    rows += [_row("AlexNet", "train", "cudnn", 1.96), _row("AlexNet", "train", "torch.compile", 0.59)]
    fig = plot.draw({"meta": {"gpu": "Test GPU", "date": "2026-01-01"}, "models": rows})
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (ax,) = fig.axes
        legend = ax.get_legend().get_window_extent(renderer)
        title = ax.title.get_window_extent(renderer)
        labels = [t for t in ax.texts if t.get_text()]  # bar_label's annotations
        assert len(labels) == 4
        for t in labels:
            box = t.get_window_extent(renderer)
            assert not box.overlaps(legend), f"bar label {t.get_text()!r} overlaps the legend"
            assert not box.overlaps(title), f"bar label {t.get_text()!r} overlaps the title"
        for bar in ax.patches:
            assert not bar.get_window_extent(renderer).overlaps(legend), "a bar overlaps the legend"
    finally:
        plt.close(fig)


def test_png_written(results_json, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the optional 'plot' extra) is not installed")
    out = plot.plot_speedups(results_json, tmp_path / "figs" / "speedup.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_png(results_json, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the optional 'plot' extra) is not installed")
    out = tmp_path / "speedup.png"
    assert plot.main([str(results_json), "-o", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert capsys.readouterr().out.strip() == str(out)


def test_missing_matplotlib_names_the_extra(results_json, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"'plot' extra"):
        plot.plot_speedups(results_json, tmp_path / "speedup.png")
    assert plot.main([str(results_json), "-o", str(tmp_path / "speedup.png")]) == 1
    assert "cnnkernels[plot]" in capsys.readouterr().err


def test_reads_what_gpu_check_writes(tmp_path, monkeypatch):
    """The model benchmarks' own records, gathered and written by gpu_check, make a file the plot reads."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import test_bench_models

    import _common

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    monkeypatch.setattr(_common, "gpu_info", lambda: {"gpu": "Test GPU", "roofline_gpu": "H100"})
    monkeypatch.setenv("OUT", str(tmp_path))

    class Args:
        budget, max_autotune = 60.0, False

    check = gc.Check(Args)
    check.results["meta"].update(gpu="Test GPU", gpu_slug="test-gpu", date="2026-01-01", roofline_gpu="H100")
    medians = {"cudnn": 6e-3, "cnnkernels": 4e-3, "torch.compile": 5e-3}
    monkeypatch.setattr(test_bench_models, "measure", lambda benchmark, fn: medians[fn()])
    monkeypatch.setattr(test_bench_models, "peak_memory_bytes", lambda fn: 2**20)
    for provider in medians:
        bench = types.SimpleNamespace(group=None, extra_info={})

        def build(p, provider=provider):  # the step: here it says which provider it is
            assert p == provider, "the session's cudnn median is used, not a new measurement"
            return lambda: p

        test_bench_models._bench_model(bench, "model", "NiN", 128, "bfloat16", "train", provider, build)
        check.results["models"].append({"test": provider, "outcome": "passed", **bench.extra_info})
    check._derived()
    check.write()
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.json",
        "test-gpu-2026-01-01.json",
        "test-gpu-2026-01-01.md",
    }
    res = plot.load(tmp_path / "results.json")
    ours = next(r for r in res["models"] if r["provider"] == "cnnkernels")
    assert ours["speedup_vs_cudnn"] == pytest.approx(1.5) and ours["speedup_vs_torch_compile"] == pytest.approx(1.25)
    assert 0 < ours["roofline_fraction"] < 1 and ours["peak_memory_mb"] == 1.0
    data, dtype, batch = plot.speedups(res)
    assert (dtype, batch) == ("bfloat16", 128)
    assert {s.baseline: s.speedup for s in data} == pytest.approx({"cudnn": 1.5, "torch.compile": 1.25})
