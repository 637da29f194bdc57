"""Without a CUDA device the tests run the real Triton kernels under Triton's interpreter on
CPU tensors: TRITON_INTERPRET must be set before triton is first imported."""

import os

import pytest


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


HAS_CUDA = _has_cuda()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

DEVICE = "cuda" if HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def pytest_collection_modifyitems(config, items):
    if DEVICE == "cuda":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: runs the compiled kernels against cuDNN")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each finished item's outcome to ``GPU_CHECK_ROWS`` when set (``make gpu-check``)."""
    from cnnkernels.testing import log_report

    log_report(item, (yield).get_result())


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
