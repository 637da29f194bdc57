"""The ``cnnkernels`` command line: every verb's output and exit code, on the CPU."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from cnnkernels import cli


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_prints_every_layer_and_totals(capsys):
    code, out, err = _run(capsys, "summary", "googlenet")
    assert code == 0, err
    for name in ("b1.conv", "b3.inc1.cat", "b5.gap", "fc"):
        assert name in out
    assert "total" in out and "5,977,530" in out  # GoogLeNet's parameters at 10 classes
    assert "H100" in out


def test_summary_custom_input(capsys):
    code, out, _ = _run(capsys, "summary", "alexnet", "--input", "2,1,96,96")
    assert code == 0 and "2x96x" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["summary", "resnet"], "unknown model 'resnet'", id="unknown-model"),
        pytest.param(["check", "lenet"], "unknown model 'lenet'", id="unknown-model-check"),
        pytest.param(["summary", "alexnet", "--input", "1,1,60,60"], "at least 65x65", id="too-small"),
        pytest.param(["summary", "nin", "--input", "1,1,x"], "--input must be", id="bad-input"),
        pytest.param(["check", "vgg", "--size", "16"], "at least 32x32", id="too-small-check"),
        pytest.param(["check", "all", "--size", "40"], "at least 65x65", id="too-small-check-all"),
        pytest.param(["train", "alexnet", "--size", "40"], "at least 65x65", id="too-small-train"),
        pytest.param(["check", "vgg", "--dtype", "int8"], "--dtype must be", id="bad-dtype"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_check_passes_and_reports_every_gradient(capsys):
    code, out, err = _run(capsys, "check", "googlenet", "--size", "4", "--batch", "1")
    assert code == 0, out + err
    assert "interpreter" in out
    assert "logits" in out and "grad input" in out and "grad net.0.0.weight" in out
    assert "grad net.2.0.b3_2.bias" in out  # inside the first Inception block
    assert "all checks passed" in out and "FAIL" not in out


def test_check_exit_1_on_a_failure(capsys, monkeypatch):
    """A wrong gradient must fail the check: break the conv backward's weight gradient."""
    import cnnkernels.kernels.conv as kconv

    real = kconv.conv2d_backward_weight

    def wrong(*a, **kw):
        dw, db = real(*a, **kw)
        return dw * 1.5, db

    monkeypatch.setattr(kconv, "conv2d_backward_weight", wrong)
    code, out, _ = _run(capsys, "check", "googlenet", "--size", "4", "--batch", "1")
    assert code == 1 and "FAIL" in out


def test_bench_without_gpu_is_one_line(capsys):
    code, out, err = _run(capsys, "bench", "all")
    assert code == 2 and "GPU is needed" in err and err.count("\n") == 1


def test_report_refuses_under_interpreter(capsys):
    code, _, err = _run(capsys, "report")
    assert code == 2 and "TRITON_INTERPRET" in err


def test_report_verb_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnkernels.cli", "report", "--kernel", "conv_bwd_reduce"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sm_90" in proc.stdout and "conv_bwd_reduce" in proc.stdout and "regs" in proc.stdout


def test_train_synthetic(capsys):
    code, out, err = _run(capsys, "train", "googlenet", "--size", "4", "--steps", "1", "--batch", "2")
    assert code == 0, err
    assert "synthetic" in out and out.count("loss") == 1 and "accuracy" in out


def _write_idx(path, array):
    dims = array.shape
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_train_on_idx_files(capsys, tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, size=(6, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, size=(6,)))
    code, out, err = _run(
        capsys, "train", "googlenet", "--size", "8", "--steps", "1", "--batch", "2", "--data", str(tmp_path)
    )
    assert code == 0, err
    assert "Fashion-MNIST" in out and "step    1" in out


def test_train_missing_data_is_exit_2(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "googlenet", "--size", "4", "--data", str(tmp_path))
    assert code == 2 and "no train-images-idx3-ubyte" in err


def test_demo_without_gpu_runs_check_all_then_summary(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "cmd_check", lambda a: calls.append(("check", a.model)) or 0)
    monkeypatch.setattr(cli, "cmd_summary", lambda a: calls.append(("summary", a.model)) or 0)
    code, _, _ = _run(capsys, "demo")
    assert code == 0 and calls == [("check", "all"), ("summary", "googlenet")]
