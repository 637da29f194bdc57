"""The benchmarks time compiled kernels on a CUDA GPU. Without one every item is collected (so
``pytest benchmarks --collect-only`` lists the full grid) and skipped with the reason: the
Triton interpreter says nothing about speed.

For ``gpu_check.py``: with ``GPU_CHECK_ROWS`` set, every item's outcome and ``extra_info`` is
appended to that file as one JSON line as soon as it finishes (a run stopped later keeps them);
with ``GPU_CHECK_DEADLINE`` (Unix time) set, items that would start after it are skipped."""

import gc
import json
import os
import sys
import time
from pathlib import Path

import pytest

# pytest's default (prepend) import mode puts this folder on the import path, so `import _common`
# works here and in the suites; gpu_check.py, run as a script, has it as its own folder.
from _common import SKIP_REASON

HERE = Path(__file__).resolve().parent


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


HAS_CUDA = _has_cuda()

if "pytest_benchmark" not in sys.modules:  # the plugin is absent (or disabled): a stand-in runs each item once

    class _Benchmark:
        """What the suites use of pytest-benchmark's fixture; without its statistics, ``measure``
        reports the ``cnnkernels.timing`` median."""

        stats = None

        def __init__(self):
            self.group, self.extra_info = None, {}

        def __call__(self, fn, *args, **kwargs):
            return fn(*args, **kwargs)

        def pedantic(self, fn, args=(), kwargs=None, **_):
            return fn(*args, **(kwargs or {}))

    @pytest.fixture
    def benchmark():
        return _Benchmark()


if not HAS_CUDA:  # the host-cost benchmarks run anywhere: the kernels' host path, interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(item.path).resolve().parents and not ({"host", "memory"} & set(item.keywords)):
            item.add_marker(skip)


def pytest_runtest_setup(item):
    deadline = os.environ.get("GPU_CHECK_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("the gpu check's time budget for this section is spent")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    path = os.environ.get("GPU_CHECK_ROWS")
    if path and (report.when == "call" or not report.passed):
        bench = item.funcargs.get("benchmark")
        row = {"test": item.nodeid, "outcome": report.outcome, **(bench.extra_info if bench is not None else {})}
        if report.skipped and isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
            row["message"] = report.longrepr[2].removeprefix("Skipped: ")
        elif not report.passed:
            row["message"] = report.longreprtext[-3000:]
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=str) + "\n")


@pytest.fixture(scope="session", autouse=True)
def _cudnn_autotune():
    """cuDNN picks its fastest algorithm per shape (during each benchmark's warm-up calls)."""
    if HAS_CUDA:
        import torch

        torch.backends.cudnn.benchmark = True
    yield


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    if HAS_CUDA:
        import torch

        gc.collect()
        torch._dynamo.reset()
        torch.cuda.empty_cache()
