"""The benchmarks time compiled kernels on a CUDA GPU. Without one every item is collected (so
``pytest benchmarks --collect-only`` lists the full grid) and skipped with the reason: the
Triton interpreter says nothing about speed."""

import gc
import os
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


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


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
