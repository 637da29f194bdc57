"""The README's Python snippets run as written: each after the README's setup snippet, in a
fresh interpreter under ``TRITON_INTERPRET=1`` (the CPU variant every snippet shows), in a scratch
directory (the weights snippet saves a file)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
SETUP, USES = SNIPPETS[0], SNIPPETS[1:]
# Snippets whose CPU variant still takes more than a few seconds under the interpreter.
SLOW = {"GoogLeNet(num_classes=10)", "NiN(num_classes=10)"}


def _run(code: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _label(snippet: str) -> str:
    return next(line for line in snippet.splitlines() if line.strip() and not line.startswith(("import", "from")))[:40]


def test_readme_has_setup_and_snippets():
    assert 'os.environ["TRITON_INTERPRET"] = "1"' in SETUP and "device =" in SETUP
    assert len(USES) >= 4
    for snippet in USES:
        assert ".cuda()" not in snippet and 'device="cuda"' not in snippet, snippet  # the device comes from setup


@pytest.mark.parametrize(
    "snippet",
    [pytest.param(s, marks=[pytest.mark.slow] if any(k in s for k in SLOW) else [], id=_label(s)) for s in USES],
)
def test_snippet_runs(snippet, tmp_path):
    proc = _run(SETUP + "\n" + snippet, tmp_path, {**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the setup's CPU branch: a machine without a GPU"
)
def test_setup_switches_on_the_interpreter_itself(tmp_path):
    """Without TRITON_INTERPRET in the environment the setup lines set it, on a CPU-only machine."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = SETUP + textwrap.dedent(
        """
        import cnnkernels.functional as CF
        x = torch.randn(1, 2, 5, 5, device=device)
        y = CF.conv2d_relu(x, torch.randn(3, 2, 3, 3, device=device))
        assert device == "cpu" and y.shape == (1, 3, 3, 3)
        """
    )
    proc = _run(code, tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torch_compile_under_the_interpreter_is_refused_in_one_line(tmp_path):
    """What the README says: refused with a clear reason, not a graph without the kernels."""
    code = SETUP + textwrap.dedent(
        """
        import cnnkernels.functional as CF
        x = torch.randn(1, 2, 5, 5, device=device)
        w = torch.randn(3, 2, 3, 3, device=device)
        try:
            torch.compile(lambda a, b: CF.conv2d_relu(a, b, None, padding=1))(x, w)
        except Exception as exc:
            print("REFUSED:", exc)
        else:
            print("COMPILED")
        """
    )
    proc = _run(code, tmp_path, {**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED:" in proc.stdout and "COMPILED" not in proc.stdout
    assert (
        "torch.compile of cnnkernels ops needs a CUDA GPU: under TRITON_INTERPRET=1 Triton kernels cannot be "
        "captured into a compiled graph; call the model without torch.compile"
    ) in proc.stdout
