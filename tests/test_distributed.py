"""``cnnkernels train`` under ``torchrun``: DistributedDataParallel over Gloo on the CPU, the
kernels under Triton's interpreter, every process on 127.0.0.1.

Default suite: two ranks reach the one-process weights, and a failing rank fails the whole run
with its error, within a timeout. Marked slow: a --batch refused once under torchrun, gradient
accumulation with ``no_sync``, a ``cnnkernels.fuse``d ``torch.nn`` model, the real GoogLeNet,
and SIGTERM + resume under torchrun bit for bit."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from test_train import load, run_cli, subprocess_env, write_tiny

TIMEOUT = 300  # seconds for one torchrun job; a hang fails the test instead of the suite


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("model"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(argv, nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--nnodes",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "cnnkernels.cli",
        *[str(a) for a in argv],
    ]


def torchrun(argv, nproc: int = 2, timeout: int = TIMEOUT, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_cmd(argv, nproc), env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout
    )


def assert_close_weights(a: dict, b: dict) -> None:
    """Within fp32 rounding: the ranks sum their halves' gradients in another order."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


# Momentum, so that the second step depends on the first's gradient too; 1 KB buckets, so DDP
# all-reduces the gradients in several buckets as their hooks fire during the backward.
ARGS = ["--size", "8", "--batch", "4", "--steps", "2", "--momentum", "0.9", "--lr", "0.1", "--seed", "5"]


def one_process(model: str, path, *extra) -> dict:
    assert run_cli("train", model, *ARGS, "--checkpoint", path, *extra) == 0
    return load(path)


def test_two_gloo_ranks_match_one_process(tiny_file, tmp_path):
    """Global batch 4 on two ranks (2 each) ends where one process with batch 4 ends: DDP's
    mean of the ranks' gradients is the whole batch's gradient. Only rank 0 logs."""
    model = f"{tiny_file}:tiny"
    proc = torchrun(["train", model, *ARGS, "--checkpoint", tmp_path / "ddp.pt", "--bucket-cap-mb", "0.001"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "batch 4 on 2 processes (2 each)" in proc.stdout
    assert proc.stdout.count("step    1/2") == 1 and proc.stdout.count("done: 2 steps") == 1
    ddp = load(tmp_path / "ddp.pt")
    assert ddp["world_size"] == 2 and len(ddp["rng"]) == 2
    single = one_process(model, tmp_path / "one.pt")
    assert_close_weights(ddp["model"], single["model"])
    # ...and the steps did move the weights: the comparison is not between two initial states.
    initial = load_initial(tiny_file, "tiny")
    assert any(not torch.allclose(initial[k], single["model"][k]) for k in initial)


def load_initial(tiny_file, name: str) -> dict:
    from cnnkernels import train

    train._seed_everything(5)
    return train._load_factory(f"{tiny_file}:{name}")(num_classes=10).state_dict()


def test_failing_rank_fails_the_run(tiny_file, tmp_path):
    """Rank 1 raises in its second forward while rank 0 waits in the all-reduce: the job exits
    non-zero within the timeout, and the output carries rank 1's error."""
    t0 = time.monotonic()
    proc = torchrun(["train", f"{tiny_file}:tiny", *ARGS], timeout=TIMEOUT, TINY_FAIL_RANK="1")
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stderr
    assert "rank      : 1" in proc.stderr  # torchrun's summary names the failing rank first
    assert time.monotonic() - t0 < TIMEOUT


@pytest.mark.slow
def test_bad_batch_under_torchrun_is_one_line(tiny_file):
    proc = torchrun(["train", f"{tiny_file}:tiny", "--batch", "3"], nproc=2)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cnnkernels train:")]
    assert lines == ["cnnkernels train: --batch: the global batch 3 does not split evenly across 2 processes"]


@pytest.mark.slow
def test_no_sync_accumulation_matches(tiny_file, tmp_path):
    """Two micro-batches per rank, the first under DDP's no_sync: the same weights as one
    process taking the whole batch at once."""
    model = f"{tiny_file}:tiny"
    proc = torchrun(["train", model, *ARGS, "--checkpoint", tmp_path / "ddp.pt", "--accum", "2"], nproc=2)
    assert proc.returncode == 0, proc.stderr
    assert_close_weights(load(tmp_path / "ddp.pt")["model"], one_process(model, tmp_path / "one.pt")["model"])


@pytest.mark.slow
def test_fused_torch_model_under_ddp(tiny_file, tmp_path):
    import cnnkernels

    if not callable(getattr(cnnkernels, "fuse", None)):
        pytest.skip("this checkout has no cnnkernels.fuse")
    model = f"{tiny_file}:torch_tiny"
    proc = torchrun(["train", model, *ARGS, "--checkpoint", tmp_path / "ddp.pt", "--fuse"], nproc=2)
    assert proc.returncode == 0, proc.stderr
    single = one_process(model, tmp_path / "one.pt", "--fuse")
    assert_close_weights(load(tmp_path / "ddp.pt")["model"], single["model"])


@pytest.mark.slow
def test_googlenet_two_ranks_match_one_process(tmp_path):
    """The real GoogLeNet (no dropout, any input size) at 1x1 images."""
    args = ["--size", "1", "--batch", "4", "--steps", "2", "--lr", "0.1", "--val-images", "2"]
    proc = torchrun(["train", "googlenet", *args, "--checkpoint", tmp_path / "ddp.pt"], nproc=2, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert run_cli("train", "googlenet", *args, "--checkpoint", tmp_path / "one.pt") == 0
    assert_close_weights(load(tmp_path / "ddp.pt")["model"], load(tmp_path / "one.pt")["model"])


@pytest.mark.slow
def test_sigterm_to_torchrun_then_resume_is_bit_for_bit(tiny_file, tmp_path):
    """SIGTERM to the torchrun agent: it passes the signal to the ranks, which finish the step,
    save and exit; the resumed two-rank run ends with the uninterrupted two-rank run's weights."""
    args = ["train", f"{tiny_file}:tiny_dropout", "--size", "8", "--batch", "4", "--synthetic", "12"]
    args += ["--momentum", "0.9", "--seed", "3", "--steps", "7"]
    ref = torchrun([*args, "--checkpoint", tmp_path / "ref.pt"])
    assert ref.returncode == 0, ref.stderr
    path = tmp_path / "ck.pt"
    proc = subprocess.Popen(
        torchrun_cmd([*args, "--checkpoint", path, "--save-every", "1"]),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (path.exists() and load(path)["step"] >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode != 0
    stopped = load(path)["step"]
    assert 2 <= stopped < 7 and f"SIGTERM: stopped after step {stopped}/7" in out, out + err
    resumed = torchrun([*args, "--checkpoint", path, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    ref_model, got = load(tmp_path / "ref.pt")["model"], load(path)["model"]
    for k in ref_model:
        assert torch.equal(ref_model[k], got[k]), k
