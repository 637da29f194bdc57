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
    for name in ("net.0.0", "net.2.0.b4_2", "net.2.0", "net.4.2", "net.5"):  # module paths, as in state_dict
        assert name in out
    assert "cat" in out and "avgpool" in out
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
        pytest.param(["check", "vgg", "--dtype", "int8"], "argument --dtype", id="bad-dtype"),
        pytest.param(["check", "vgg", "--batch", "0"], "argument --batch", id="check-batch-0"),
        pytest.param(["check", "vgg", "--batch", "-1"], "argument --batch", id="check-batch-negative"),
        pytest.param(["check", "all", "--size", "0"], "argument --size", id="check-size-0"),
        pytest.param(["check", "all", "--size", "66"], "--size: nin input 66x66", id="check-all-size-checked-first"),
        pytest.param(["train", "alexnet", "--batch", "0"], "argument --batch", id="train-batch-0"),
        pytest.param(["train", "alexnet", "--steps", "0"], "argument --steps", id="train-steps-0"),
        pytest.param(["train", "alexnet", "--steps", "-3"], "argument --steps", id="train-steps-negative"),
        pytest.param(["train", "alexnet", "--lr", "nan"], "argument --lr", id="train-lr-nan"),
        pytest.param(["train", "alexnet", "--size", "0"], "argument --size", id="train-size-0"),
        pytest.param(["summary", "alexnet", "--dtype", "float8"], "argument --dtype", id="summary-dtype"),
        pytest.param(["bench", "all", "--batch", "0"], "argument --batch", id="bench-batch-0"),
        pytest.param(["check"], "the following arguments are required: model", id="missing-model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    """Named argument, one line on stderr, exit 2, and nothing done first (no banner on stdout)."""
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_check_passes_in_fp16_and_reports_every_gradient(capsys):
    """fp16 whole-model gradients are as far from fp64 as torch's own fp16 twin (here up to ~5e-2):
    the model rule (twice torch's error + the floor) passes them, the per-op 1e-3 alone did not."""
    code, out, err = _run(capsys, "check", "googlenet", "--size", "4", "--batch", "1", "--dtype", "fp16")
    assert code == 0, out + err
    assert "interpreter" in out
    assert "logits" in out and "grad input" in out and "grad net.0.0.weight" in out
    assert "grad net.2.0.b3_2.bias" in out  # inside the first Inception block
    assert "all checks passed" in out and "FAIL" not in out
    # Progress with times, then the one-line verdict, then the detail table.
    start = out.index("[1/1] googlenet: batch 1, 4x4, float16")
    forward, backward = out.index("fused forward:"), out.index("fused backward:")
    verdict = out.index("googlenet: PASS, all 118 tensors within their bound")
    assert start < forward < backward < verdict < out.index("grad input") < out.index("all checks passed")
    assert " s)" in out[verdict : out.index("\n", verdict)]  # the model's time ends its verdict line


# About 60 s under the interpreter (a GoogLeNet check): slow. The model rule's failure verdict
# stays in `make test` (tests/test_models.py, broken-weight-gradient); the check verb's passing
# path with its output format too (above).
@pytest.mark.slow
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
    verdict = out.index("googlenet: FAILED, ")
    assert verdict < out.index("grad net.0.0.weight") and out.rstrip().splitlines()[-1].startswith("FAILED: googlenet")


def test_bench_without_gpu_is_one_line(capsys):
    code, out, err = _run(capsys, "bench", "all")
    assert code == 2 and "GPU is needed" in err and err.count("\n") == 1


def test_report_verb_compiles_for_sm90_even_under_the_interpreter():
    """``TRITON_INTERPRET=1`` in the environment (as the tests set it) does not stop the report:
    it compiles for sm_90 in a process without the interpreter."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "cnnkernels.cli", "report", "--quick", "--kernel", "conv_bwd_reduce", "--dtype", "bf16"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sm_90" in proc.stdout and "conv_bwd_reduce" in proc.stdout and "regs" in proc.stdout


# About 100 s under the interpreter (GoogLeNet, a training step and a validation pass): slow. The
# `train` verb stays in `make test` through test_train_on_idx_files and tests/test_train.py.
@pytest.mark.slow
def test_train_synthetic(capsys):
    code, out, err = _run(
        capsys, "train", "googlenet", "--size", "4", "--steps", "1", "--batch", "2", "--val-images", "1"
    )
    assert code == 0, err
    assert "synthetic" in out and out.count("loss") == 1 and "accuracy" in out and "images/s" in out
    assert "step    1/1" in out and "ETA 0.0 s" in out and "done: 1 steps in" in out
    assert "validation accuracy" in out.splitlines()[-1] and out.rstrip().endswith("on 1 images")


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


def _raw_idx(array, magic_type=0x08):
    dims = array.shape
    return (
        bytes([0, 0, magic_type, len(dims)])
        + b"".join(int(d).to_bytes(4, "big") for d in dims)
        + array.astype(np.uint8).tobytes()
    )


_IMAGES = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28))
_LABELS = np.random.default_rng(1).integers(0, 10, size=(6,))

BAD_DATA = [
    # (images file name, images bytes, labels file name, labels bytes, expected message)
    pytest.param(
        "train-images-idx3-ubyte",
        _raw_idx(_IMAGES)[:-100],
        "train-labels-idx1-ubyte",
        _raw_idx(_LABELS),
        "truncated or corrupt",
        id="truncated",
    ),
    pytest.param(
        "train-images-idx3-ubyte",
        _raw_idx(_IMAGES)[:10],
        "train-labels-idx1-ubyte",
        _raw_idx(_LABELS),
        "truncated",
        id="truncated-header",
    ),
    pytest.param(
        "train-images-idx3-ubyte",
        _raw_idx(_IMAGES),
        "train-labels-idx1-ubyte",
        _raw_idx(_IMAGES),
        "3-dimensional array, expected 1",
        id="labels-file-holds-images",
    ),
    pytest.param(
        "train-images-idx3-ubyte",
        _raw_idx(_IMAGES, magic_type=0x0D),
        "train-labels-idx1-ubyte",
        _raw_idx(_LABELS),
        "not an idx file of unsigned bytes",
        id="float-idx",
    ),
    pytest.param(
        "train-images-idx3-ubyte.gz",
        _raw_idx(_IMAGES),
        "train-labels-idx1-ubyte",
        _raw_idx(_LABELS),
        "named .gz but not gzip-compressed",
        id="fake-gzip",
    ),
    pytest.param(
        "train-images-idx3-ubyte.gz",
        gzip.compress(_raw_idx(_IMAGES))[:-30],
        "train-labels-idx1-ubyte",
        _raw_idx(_LABELS),
        "cannot read it",
        id="cut-gzip-stream",
    ),
    pytest.param(
        "train-images-idx3-ubyte",
        _raw_idx(_IMAGES),
        "train-labels-idx1-ubyte",
        _raw_idx(_LABELS[:5]),
        "6 images but 5 labels",
        id="count-mismatch",
    ),
    pytest.param(
        "train-images-idx3-ubyte",
        _raw_idx(_IMAGES),
        "train-labels-idx1-ubyte",
        _raw_idx(_LABELS + 10),
        "labels must be 0..9",
        id="labels-out-of-range",
    ),
]


@pytest.mark.parametrize("img_name, img, lbl_name, lbl, message", BAD_DATA)
def test_train_bad_idx_files_are_one_line_exit_2(capsys, tmp_path, img_name, img, lbl_name, lbl, message):
    (tmp_path / img_name).write_bytes(img)
    (tmp_path / lbl_name).write_bytes(lbl)
    code, out, err = _run(capsys, "train", "googlenet", "--size", "4", "--data", str(tmp_path))
    assert code == 2 and out == ""  # refused before the model is built or anything printed
    assert err.startswith("cnnkernels train: --data: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_train_missing_data_directory_says_directory(capsys, tmp_path):
    code, out, err = _run(capsys, "train", "googlenet", "--data", str(tmp_path / "nowhere"))
    assert code == 2 and out == "" and "is not a directory" in err and err.count("\n") == 1


def test_plain_text_without_rich(capsys, monkeypatch):
    """The base install has no rich: summary prints a plain table; --help names the extra."""
    for mod in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, mod, None)  # import rich... -> ImportError
    code, out, err = _run(capsys, "summary", "alexnet")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("alexnet at input (1, 1, 224, 224)")
    assert lines[1].split()[:3] == ["layer", "kind", "output"] and set(lines[2]) == {"-"}
    assert any(line.startswith("total") and "46,764,746" in line for line in lines)
    assert "\u2502" not in out and "\u2503" not in out  # no box drawing
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    assert "cnnkernels[cli]" in capsys.readouterr().out


_PIPED = """
import sys, time
import torch
from cnnkernels import cli
if sys.argv[1] == "plain":
    for mod in ("rich", "rich.console", "rich.table"):
        sys.modules[mod] = None
def tiny(name, num_classes=10, reference=False):
    from cnnkernels import models
    return (models.reference if reference else models).VGG(arch=((1, 4),), num_classes=num_classes)
cli._build = tiny
step = torch.optim.SGD.step
def slow_step(self, *a, **k):
    time.sleep(1.0)  # a step long enough to see whether each line arrives before the next
    return step(self, *a, **k)
torch.optim.SGD.step = slow_step
sys.exit(cli.main(["train", "vgg", "--size", "4", "--batch", "2", "--steps", "3"]))
"""


@pytest.mark.parametrize("flavour", ["rich", "plain"])
def test_progress_reaches_a_pipe_line_by_line(flavour):
    """When stdout is a pipe (a log), each step's line with its ETA arrives as the step ends,
    not at exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _PIPED, flavour], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("step    1/3"):
                assert proc.poll() is None, "the first step's line came only at exit"
                assert "ETA" in line
                break
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert any(line.startswith("step    1/3") for line in seen), "".join(seen)
    assert "step    3/3" in rest and "done: 3 steps" in rest


def test_demo_without_gpu_runs_check_all_then_summary(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "cmd_check", lambda a: calls.append(("check", a.model)) or 0)
    monkeypatch.setattr(cli, "cmd_summary", lambda a: calls.append(("summary", a.model)) or 0)
    code, _, _ = _run(capsys, "demo")
    assert code == 0 and calls == [("check", "all"), ("summary", "googlenet")]
