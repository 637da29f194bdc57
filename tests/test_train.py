"""``cnnkernels train`` in one process: checkpoints (atomic writes, resume bit for bit after
SIGKILL, SIGTERM or a kill mid-write), mixed precision, validation, argument errors.

The runs use a tiny model built from the same kernels (conv + ReLU, max pool, an Inception
block, global average pooling): under the interpreter a GoogLeNet step takes tens of seconds
on two cores, this one about a second. One GoogLeNet run is marked slow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cnnkernels import cli, train

# A file the CLI loads as MODEL (``path/tiny.py:tiny``). ``_FailOn`` raises at the second call
# on the rank named by TINY_FAIL_RANK (tests/test_distributed.py's failing rank).
TINY = '''
import os

from torch import nn

import cnnkernels.nn as cnn


class _FailOn(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if os.environ.get("TINY_FAIL_RANK") == os.environ.get("RANK", "0") and self.calls == 2:
            raise RuntimeError(f"rank {os.environ.get('RANK', '0')} failed on purpose")
        return x


def _body():
    return [
        _FailOn(),
        cnn.Conv2dReLU(1, 4, 3, padding=1),
        cnn.MaxPool2d(3, 2, padding=1),
        cnn.Inception(4, (2, 4), (2, 4), 4),
        cnn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ]


def tiny(num_classes=10):
    return nn.Sequential(*_body(), nn.Linear(16, num_classes))


def tiny_dropout(num_classes=10):
    """With dropout, so a resumed run matches only if the random state is restored too."""
    return nn.Sequential(*_body(), nn.Dropout(0.5), nn.Linear(16, num_classes))


def torch_tiny(num_classes=10):
    """Plain torch.nn, for --fuse."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(4, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )
'''

# Runs ``cnnkernels train`` with argv; with STALL_AT=k, the k-th checkpoint write stops halfway
# through the temporary file, touches STALL_MARK and sleeps (to be killed mid-write).
RUNNER = """
import io, os, sys, time
import torch
from cnnkernels import cli
real_save = torch.save
writes = [0]
def save(obj, f, *args, **kwargs):
    writes[0] += 1
    if writes[0] == int(os.environ.get("STALL_AT", "0")):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        open(os.environ["STALL_MARK"], "w").close()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.exit(cli.main(sys.argv[1:]))
"""


def write_tiny(folder) -> str:
    path = os.path.join(folder, "tiny.py")
    with open(path, "w") as f:
        f.write(TINY)
    return path


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("model"))


def subprocess_env(**extra) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **extra)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------
# atomic checkpoint writes


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    train.save_checkpoint(str(path), {"format": 1, "model": {"w": torch.ones(3)}, "step": 1})
    before = path.read_bytes()
    real = torch.save

    def half_then_fail(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        train.save_checkpoint(str(path), {"format": 1, "model": {"w": torch.zeros(3)}, "step": 2})
    monkeypatch.setattr(torch, "save", real)
    assert path.read_bytes() == before
    assert load(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # the temporary file is gone


def test_write_goes_through_a_temporary_file_and_a_rename(tmp_path, monkeypatch):
    """The target is never opened for writing: the bytes go to a temporary file in the same
    folder, fsynced before os.replace moves it over the target."""
    path = tmp_path / "ck.pt"
    events = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", a, b)) or real_replace(a, b))
    train.save_checkpoint(str(path), {"format": 1, "model": {}, "step": 3})
    replace = next(e for e in events if isinstance(e, tuple))
    assert events.index("fsync") < events.index(replace)
    assert os.path.dirname(replace[1]) == str(tmp_path) and replace[2] == str(path)
    assert load(path)["step"] == 3


# ---------------------------------------------------------------------------------------------
# resume bit for bit

# Dropout (the RNG must be restored), momentum (the optimizer state must be), 12 synthetic
# images in batches of 4 (an epoch every 3 steps: the sampler's epoch and offset must be).
RESUME_ARGS = ["--size", "8", "--batch", "4", "--synthetic", "12", "--momentum", "0.9", "--seed", "3", "--lr", "0.05"]
STEPS = 7


@pytest.fixture(scope="module")
def uninterrupted(tiny_file, tmp_path_factory):
    """The final checkpoint of a run of STEPS steps that nobody stops."""
    path = tmp_path_factory.mktemp("ref") / "ref.pt"
    code = run_cli("train", f"{tiny_file}:tiny_dropout", *RESUME_ARGS, "--steps", STEPS, "--checkpoint", path)
    assert code == 0
    return load(path)


def test_checkpoint_holds_the_unwrapped_state_dict(uninterrupted, tiny_file):
    ck = uninterrupted
    assert ck["step"] == STEPS and ck["epoch"] == STEPS // 3 and ck["step_in_epoch"] == STEPS % 3
    model = train._load_factory(f"{tiny_file}:tiny_dropout")(num_classes=10)
    model.load_state_dict(ck["model"])  # the plain model's keys: no "module." prefix
    assert set(ck) >= {"model", "optimizer", "scaler", "rng", "config"}
    assert ck["optimizer"]["state"]  # momentum buffers
    assert len(ck["rng"]) == 1 and set(ck["rng"][0]) == {"torch", "cuda", "python", "numpy"}


def test_resume_in_process_equals_uninterrupted(uninterrupted, tiny_file, tmp_path, capsys):
    path = tmp_path / "ck.pt"
    model = f"{tiny_file}:tiny_dropout"
    assert run_cli("train", model, *RESUME_ARGS, "--steps", 4, "--checkpoint", path) == 0
    assert load(path)["step"] == 4
    capsys.readouterr()
    assert run_cli("train", model, *RESUME_ARGS, "--steps", STEPS, "--checkpoint", path, "--resume") == 0
    out = capsys.readouterr().out
    assert f"resumed from {path} at step 4" in out and "step    5/7" in out and "step    4/7" not in out
    assert_same_weights(load(path)["model"], uninterrupted["model"])
    # A different seed from the same checkpoint would not be the same run: refused.
    code = run_cli("train", model, *RESUME_ARGS[:-4], "--seed", "4", "--lr", "0.05", "--checkpoint", path, "--resume")
    assert code == 2 and "--seed: 4 differs from the checkpoint's 3" in capsys.readouterr().err


def _start(tiny_file, path, **env):
    argv = ["train", f"{tiny_file}:tiny_dropout", *RESUME_ARGS, "--steps", str(STEPS)]
    argv += ["--checkpoint", str(path), "--save-every", "1"]
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, *argv],
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before it could be killed: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.05)


def _step_of(path) -> int:
    try:
        return load(path)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


# SIGKILL between writes is marked slow: the mid-write test below is a SIGKILL too.
@pytest.mark.parametrize(
    "sig",
    [pytest.param(signal.SIGKILL, marks=pytest.mark.slow, id="SIGKILL"), pytest.param(signal.SIGTERM, id="SIGTERM")],
)
def test_killed_and_resumed_equals_uninterrupted(uninterrupted, tiny_file, tmp_path, sig):
    """Killed after the second checkpoint: SIGKILL leaves the last checkpoint; SIGTERM finishes
    its step, saves and exits 143. Resumed, the run ends with the uninterrupted run's weights."""
    path = tmp_path / "ck.pt"
    proc = _start(tiny_file, path)
    try:
        _wait_for(lambda: _step_of(path) >= 2, proc)
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
        out = proc.stdout.read()
    finally:
        proc.kill()
    stopped = load(path)["step"]
    assert 2 <= stopped < STEPS, "the run must be stopped part-way for this test to mean anything"
    if sig == signal.SIGTERM:
        assert code == 143, proc.stderr.read()
        assert f"SIGTERM: stopped after step {stopped}/{STEPS}; checkpoint saved at step {stopped}" in out
    else:
        assert code == -signal.SIGKILL
    assert (
        run_cli("train", f"{tiny_file}:tiny_dropout", *RESUME_ARGS, "--steps", STEPS, "--checkpoint", path, "--resume")
        == 0
    )
    assert_same_weights(load(path)["model"], uninterrupted["model"])


def test_killed_mid_write_keeps_the_last_good_checkpoint(uninterrupted, tiny_file, tmp_path):
    """SIGKILL while the third checkpoint is half written: the second stays in place, whole,
    and resuming from it still ends with the uninterrupted weights."""
    path, mark = tmp_path / "ck.pt", tmp_path / "stalled"
    proc = _start(tiny_file, path, STALL_AT="3", STALL_MARK=str(mark))
    try:
        _wait_for(mark.exists, proc)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ck.pt.tmp")]
    assert leftovers, "the kill should have caught a half-written temporary file"
    assert load(path)["step"] == 2
    assert (
        run_cli("train", f"{tiny_file}:tiny_dropout", *RESUME_ARGS, "--steps", STEPS, "--checkpoint", path, "--resume")
        == 0
    )
    assert_same_weights(load(path)["model"], uninterrupted["model"])


# ---------------------------------------------------------------------------------------------
# precision, data, progress


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_keeps_fp32_master_weights(tiny_file, tmp_path, capsys, dtype):
    path = tmp_path / "ck.pt"
    args = ["--size", "8", "--batch", "4", "--steps", "2", "--dtype", dtype, "--checkpoint", path]
    assert run_cli("train", f"{tiny_file}:tiny", *args) == 0
    out = capsys.readouterr().out
    assert "autocast, fp32 master weights" in out
    ck = load(path)
    assert all(v.dtype == torch.float32 for v in ck["model"].values())
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    if dtype == "fp16":
        assert ck["scaler"] is not None and ck["scaler"]["scale"] > 0  # GradScaler's state
    else:
        assert ck["scaler"] is None


def _write_idx(path, array):
    import gzip

    import numpy as np

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_with_validation_per_epoch(tiny_file, tmp_path, capsys):
    """t10k-* files are the validation set: its accuracy after each epoch and at the end; the
    progress lines carry loss, accuracy, images/s and ETA."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("t10k", 5)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=(n,)))
    args = ["--size", "8", "--batch", "4", "--steps", "3", "--data", tmp_path, "--val-images", "5"]
    assert run_cli("train", f"{tiny_file}:tiny", *args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"on Fashion-MNIST from {tmp_path}" in lines[1]
    step = next(line for line in lines if line.startswith("step    1/3"))
    for field in ("loss ", "accuracy ", "images/s", "elapsed, ETA"):
        assert field in step
    assert any(line.startswith("epoch 1: validation accuracy") and line.endswith("on 5 images") for line in lines)
    assert lines[-1].startswith("done: 3 steps in") and "validation accuracy" in lines[-1]
    assert lines[-1].split("validation accuracy ")[1].startswith(("0.", "1."))


def test_torch_nn_model_through_fuse(tiny_file, tmp_path, capsys):
    import cnnkernels

    if not callable(getattr(cnnkernels, "fuse", None)):
        pytest.skip("this checkout has no cnnkernels.fuse")
    path = tmp_path / "ck.pt"
    args = ["--size", "8", "--batch", "4", "--steps", "1", "--checkpoint", path, "--fuse"]
    assert run_cli("train", f"{tiny_file}:torch_tiny", *args) == 0, capsys.readouterr().err
    plain = train._load_factory(f"{tiny_file}:torch_tiny")(num_classes=10)
    plain.load_state_dict(load(path)["model"])  # fused keys are the torch.nn model's


# ---------------------------------------------------------------------------------------------
# argument errors: one line naming the argument, exit 2, nothing run


def _bad(capsys, *argv):
    code = run_cli(*argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, (code, out, err)
    return err


def test_batch_must_split_across_ranks(capsys, monkeypatch, tiny_file):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    err = _bad(capsys, "train", f"{tiny_file}:tiny", "--batch", "4")
    assert "--batch: the global batch 4 does not split evenly across 3 processes" in err
    monkeypatch.setenv("RANK", "1")  # the other ranks refuse quietly: rank 0 says it once
    assert run_cli("train", f"{tiny_file}:tiny", "--batch", "4") == 2
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["--batch", "4", "--accum", "3"], "--accum: each process's batch of 4", id="accum"),
        pytest.param(["--resume"], "--resume needs --checkpoint PATH", id="resume-without-checkpoint"),
        pytest.param(["--save-every", "2"], "--save-every needs --checkpoint PATH", id="save-every"),
        pytest.param(["--save-every", "-1"], "argument --save-every", id="save-every-negative"),
        pytest.param(["--dtype", "fp64"], "--dtype: training runs in fp32, bf16 or fp16", id="dtype"),
        pytest.param(["--momentum", "1.5"], "--momentum: must be in [0, 1), got 1.5", id="momentum"),
        pytest.param(["--batch", "16", "--synthetic", "8"], "larger than the 8 training images", id="batch-too-big"),
    ],
)
def test_bad_train_arguments(capsys, tiny_file, argv, message):
    err = _bad(capsys, "train", f"{tiny_file}:tiny", *argv)
    assert err.startswith("cnnkernels train: ") and message in err


def test_bad_checkpoints_and_models(capsys, tmp_path, tiny_file):
    err = _bad(capsys, "train", f"{tiny_file}:tiny", "--checkpoint", tmp_path)
    assert f"--checkpoint: {tmp_path} is a directory" in err
    err = _bad(capsys, "train", f"{tiny_file}:tiny", "--checkpoint", tmp_path / "no" / "ck.pt")
    assert "does not exist" in err
    bad = tmp_path / "ck.pt"
    bad.write_bytes(b"not a checkpoint")
    err = _bad(capsys, "train", f"{tiny_file}:tiny", "--checkpoint", bad, "--resume")
    assert f"--checkpoint: {bad} is not a readable checkpoint" in err
    torch.save({"weights": 1}, bad)
    err = _bad(capsys, "train", f"{tiny_file}:tiny", "--checkpoint", bad, "--resume")
    assert "is not a cnnkernels training checkpoint" in err
    err = _bad(capsys, "train", "resnet")
    assert "unknown model 'resnet'" in err and "MODULE:FUNCTION" in err
    err = _bad(capsys, "train", f"{tmp_path}/nowhere.py:tiny")
    assert "model: no file" in err
    err = _bad(capsys, "train", f"{tiny_file}:nothing")
    assert "has no callable 'nothing'" in err
    err = _bad(capsys, "train", "googlenet", "--fuse")
    assert "--fuse: the named models are fused already" in err


@pytest.mark.slow
def test_googlenet_trains_and_resumes(tmp_path, capsys):
    """The real GoogLeNet at a 1x1 image: a step, a checkpoint, one more step resumed."""
    path = tmp_path / "ck.pt"
    args = ["--size", "1", "--batch", "2", "--checkpoint", path, "--val-images", "1"]
    assert run_cli("train", "googlenet", *args, "--steps", "1") == 0
    assert run_cli("train", "googlenet", *args, "--steps", "2", "--resume") == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "done: 2 steps" in out
    from cnnkernels.models import GoogLeNet

    GoogLeNet().load_state_dict(load(path)["model"])
