"""The benchmarks time compiled kernels on a CUDA GPU; without one every item is collected and
skipped with the reason (the host and memory items run anywhere). For ``gpu_check.py``:
``GPU_CHECK_ROWS`` names a file that gets each finished item's outcome and ``extra_info`` as a JSON
line; items that would start after ``GPU_CHECK_DEADLINE`` (Unix time) are skipped."""

import gc
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnkernels.testing import log_report

# pytest's default (prepend) import mode puts this folder on the import path, so `import _common`
# works here and in the suites; gpu_check.py, run as a script, has it as its own folder.
from _common import SKIP_REASON

HERE = Path(__file__).resolve().parent


HAS_CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"

if "pytest_benchmark" not in sys.modules:  # the plugin is absent (or disabled): a stand-in runs each item once

    class _Benchmark:
        """What the suites use of pytest-benchmark's fixture, without its statistics."""

        def __init__(self):
            self.group, self.extra_info = None, {}

        def __call__(self, fn, *args, **kwargs):
            return fn(*args, **kwargs)

        def pedantic(self, fn, args=(), kwargs=None, **_):
            return fn(*args, **(kwargs or {}))

    @pytest.fixture
    def benchmark():
        return _Benchmark()


if HAS_CUDA:  # cuDNN picks its fastest algorithm per shape (during each benchmark's warm-up calls)
    torch.backends.cudnn.benchmark = True
else:  # the host-cost benchmarks run anywhere: the kernels' host path, interpreted
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
    bench = item.funcargs.get("benchmark")
    log_report(item, report, **(bench.extra_info if bench is not None else {}))


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    if HAS_CUDA:
        gc.collect()
        torch._dynamo.reset()
        torch.cuda.empty_cache()
