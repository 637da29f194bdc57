"""Host cost (``cnnkernels.host``): an op call or a model call with every Triton launch replaced by
a counter. Marked ``host``: runs on any machine; ops carry torch's cost for the same op too."""

from __future__ import annotations

import pytest

from cnnkernels import host

pytestmark = pytest.mark.host

OPS = [name for name, _, _ in host.op_cases()]


@pytest.mark.parametrize("name", OPS)
def test_host_op(benchmark, name):
    _, ours, theirs = next(case for case in host.op_cases() if case[0] == name)
    cost, ref = host.measure(name, ours), host.measure("torch " + name, theirs)
    benchmark.extra_info.update(
        python_calls=cost.python_calls, launches=cost.launches, torch_us=round(ref.us, 2), ratio=cost.us / ref.us
    )
    with host.launches_stubbed(), host.single_thread():
        benchmark(ours)


@pytest.mark.parametrize("train", [False, True], ids=["forward", "train_step"])
@pytest.mark.parametrize("model", ["alexnet", "vgg", "nin", "googlenet"])
def test_host_model(benchmark, model, train):
    fn = host.model_case(model, train)
    cost = host.measure(model, fn, repeats=1)
    benchmark.extra_info.update(python_calls=cost.python_calls, launches=cost.launches)
    with host.launches_stubbed(), host.single_thread():
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
