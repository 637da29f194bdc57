"""The eager fast path (``cnnkernels._fast``): a call replayed from the plan recorded on its
first call gives the same bits as the full path, every change of key misses the cache, and bad
input raises the full path's errors."""

from __future__ import annotations

import pytest
import torch

import cnnkernels.functional as CF
from cnnkernels import _fast, host

from conftest import DEVICE


@pytest.fixture
def replays(monkeypatch):
    """Counts plan replays; starts from an empty plan cache."""
    _fast.clear()
    count = [0]
    compile_replay = _fast._compile

    def counting(plan, n_in):
        replay = compile_replay(plan, n_in)

        def counted(*inputs):
            count[0] += 1
            return replay(*inputs)

        return counted

    monkeypatch.setattr(_fast, "_compile", counting)
    yield count
    _fast.clear()


def _full_path(fn):
    _fast.enabled = False
    try:
        return fn()
    finally:
        _fast.enabled = True


def _inputs(dtype=torch.float32, channels_last=True, grad=False, shape=(2, 8, 9, 9)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype).to(DEVICE)
    w = torch.randn(16, shape[1], 3, 3, generator=g, dtype=dtype).to(DEVICE)
    b = torch.randn(16, generator=g, dtype=dtype).to(DEVICE)
    if channels_last:
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    return x.requires_grad_(grad), w.requires_grad_(grad), b.requires_grad_(grad)


OPS = {
    "conv2d_relu": lambda x, w, b: CF.conv2d_relu(x, w, b, padding=1),
    "conv2d_strided": lambda x, w, b: CF.conv2d(x, w, None, stride=2, padding=(0, 1), dilation=(1, 2)),
    "conv1x1_relu": lambda x, w, b: CF.conv2d_relu(x, w[:, :, :1, :1].contiguous(), b),
    "max_pool2d": lambda x, w, b: CF.max_pool2d(x, 3, 2, 1),
    "max_pool2d_indices": lambda x, w, b: CF.max_pool2d(x, (3, 2), 1, 1, ceil_mode=True, return_indices=True),
    "adaptive_avg_pool2d": lambda x, w, b: CF.adaptive_avg_pool2d(x, (4, 3)),
    "global_avg_pool2d": lambda x, w, b: CF.adaptive_avg_pool2d(x, 1),
    "conv2d_relu_max_pool2d": lambda x, w, b: CF.conv2d_relu_max_pool2d(x, w, b, padding=1, kernel_size=2),
    "conv2d_relu_max_pool2d_3x3s2": lambda x, w, b: CF.conv2d_relu_max_pool2d(
        x, w, b, padding=1, kernel_size=3, pool_stride=2, ceil_mode=True
    ),
    "conv1x1_chain": lambda x, w, b: CF.conv1x1_relu_conv2d_relu_max_pool2d(
        x, w[:8, :, :1, :1].contiguous(), b[:8], w, b, padding=1, kernel_size=3, pool_stride=2
    ),
}


def _flat(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name", OPS)
def test_replay_is_bit_identical_forward(name, replays):
    op = OPS[name]
    x, w, b = _inputs()
    first = _flat(op(x, w, b))
    assert replays[0] == 0
    second = _flat(op(x, w, b))
    assert replays[0] == 1, "the second call with the same key must replay the plan"
    full = _flat(_full_path(lambda: op(x, w, b)))
    for a, c, f in zip(first, second, full):
        assert a.shape == c.shape and a.stride() == c.stride() and a.dtype == c.dtype
        assert torch.equal(a, c) and torch.equal(a, f)


@pytest.mark.parametrize(
    "name",
    ["conv2d_relu", "conv1x1_relu", "max_pool2d", "global_avg_pool2d", "conv2d_relu_max_pool2d", "conv1x1_chain"],
)
def test_replay_is_bit_identical_backward(name, replays):
    op = OPS[name]
    results = []
    for _ in range(2):
        x, w, b = _inputs(grad=True)
        y = _flat(op(x, w, b))[0]
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype).to(y.device)
        grads = torch.autograd.grad(y, [t for t in (x, w, b) if t.grad_fn is None], g, allow_unused=True)
        results.append((y, grads))
    assert replays[0] == 1
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1)
    for a, c in zip(g0, g1):
        assert (a is None and c is None) or torch.equal(a, c)


@pytest.mark.parametrize(
    "change",
    [
        "shape",
        "dtype",
        "memory_format",
        "grad_mode",
        "requires_grad",
        "autocast",
        "argument",
        "unbatched",
    ],
)
def test_every_change_of_key_misses_the_cache(change, replays):
    x, w, b = _inputs(grad=change == "grad_mode")  # grad mode matters where a tensor requires grad
    CF.conv2d_relu(x, w, b, padding=1)
    plans = len(_fast._PLANS)
    padding = 1
    ctx = torch.no_grad() if change == "grad_mode" else torch.enable_grad()
    if change == "shape":
        x, w, b = _inputs(shape=(3, 8, 7, 9))
    elif change == "dtype":
        x, w, b = _inputs(dtype=torch.float64)
    elif change == "memory_format":
        x, w, b = _inputs(channels_last=False)
    elif change == "requires_grad":
        x, w, b = _inputs(grad=True)
    elif change == "argument":
        padding = (1, 0)
    elif change == "unbatched":
        x = x[0]
    if change == "autocast":
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            y = CF.conv2d_relu(x, w, b, padding=1)
        ref = _full_path(lambda: _autocast(lambda: CF.conv2d_relu(x, w, b, padding=1)))
        assert len(_fast._PLANS) == plans, "autocast takes the full path and plans nothing"
    else:
        with ctx:
            y = CF.conv2d_relu(x, w, b, padding=padding)
            ref = _full_path(lambda: CF.conv2d_relu(x, w, b, padding=padding))
        assert len(_fast._PLANS) == plans + 1, "a new key must make a new plan"
    assert replays[0] == 0, "no stale plan may be replayed"
    assert y.dtype == ref.dtype and y.shape == ref.shape and y.stride() == ref.stride()
    assert torch.equal(y, ref)
    assert (y.grad_fn is None) == (ref.grad_fn is None)


def _autocast(fn):
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        return fn()


def test_tf32_switch_is_part_of_the_key(replays):
    """On CUDA (fp32): Triton's interpreter ignores the switch, so on the CPU it is not keyed."""
    x, w, b = _inputs()
    first = CF.conv2d(x, w, b)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = not saved
    try:
        again = CF.conv2d(x, w, b)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    if x.is_cuda:
        assert replays[0] == 0 and len(_fast._PLANS) == 2
    else:
        assert replays[0] == 1 and len(_fast._PLANS) == 1 and torch.equal(first, again)


@pytest.mark.parametrize(
    "bad",
    [
        lambda x, w, b: CF.conv2d_relu(x[:, :5], w, b, padding=1),  # channel count
        lambda x, w, b: CF.conv2d_relu(x, w.double(), b, padding=1),  # dtype
        lambda x, w, b: CF.conv2d_relu(x, w, b, padding=-1),  # negative padding
        lambda x, w, b: CF.conv2d_relu(x[..., :1, :1], w, b),  # kernel larger than the input
        lambda x, w, b: CF.conv2d_relu(x, w, b[:3], padding=1),  # bias length
        lambda x, w, b: CF.max_pool2d(x, 3, 2, 2),  # padding over half the kernel
        lambda x, w, b: CF.max_pool2d(x.int(), 3),  # dtype
        lambda x, w, b: CF.adaptive_avg_pool2d(x, 0),  # output size
    ],
)
def test_fast_path_raises_the_full_paths_errors(bad, replays):
    x, w, b = _inputs()
    for op in ("conv2d_relu", "max_pool2d", "global_avg_pool2d"):
        OPS[op](x, w, b)
        OPS[op](x, w, b)
    assert replays[0] == 3
    with pytest.raises((TypeError, ValueError)) as full:
        _full_path(lambda: bad(x, w, b))
    with pytest.raises(type(full.value)) as fast:
        bad(x, w, b)
    assert str(fast.value) == str(full.value)


def test_unhashable_arguments_take_the_full_path(replays):
    x, w, b = _inputs()
    ref = CF.conv2d_relu(x, w, b, padding=[1, 1])
    again = CF.conv2d_relu(x, w, b, padding=[1, 1])
    assert replays[0] == 0 and torch.equal(ref, again)


def test_host_cost_counts_launches_without_running_them():
    x, w, b = _inputs()
    out = torch.full((1,), 7.0)

    def call():
        out[0] = CF.conv2d_relu(x, w, b, padding=1).numel()

    cost = host.measure("conv2d_relu", call, repeats=1, min_time=0.001)
    assert cost.launches == 1
    assert 0 < cost.python_calls < 40
    assert cost.us > 0


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_inception_replay_is_bit_identical(grad, replays):
    from cnnkernels.nn import Inception

    torch.manual_seed(0)
    block = Inception(4, (3, 5), (2, 3), 4).to(DEVICE).double()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, device=DEVICE).to(memory_format=torch.channels_last)
    _full_path(lambda: block(x))  # materialises the lazy convs
    results = []
    for _ in range(3):
        xi = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            y = block(xi)
        grads = torch.autograd.grad(y, [xi, *block.parameters()], torch.ones_like(y)) if grad else ()
        results.append((y.detach(), grads))
    from cnnkernels.nn import InceptionPlan

    assert sum(isinstance(p, InceptionPlan) for p in _fast._PLANS.values()) == 1
    assert replays[0] == 2  # the block's plan on the second and third calls (its pool branch pools on load)
    for y, grads in results[1:]:
        assert torch.equal(y, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))
    ref = _full_path(lambda: block(x))
    assert torch.equal(results[0][0], ref.detach())
    # A weight changed in place (an optimizer step; a write through .data, which moves no version
    # counter) reaches the replay.
    with torch.no_grad():
        block.b2_1.weight.add_(0.5)
    again = block(x)
    assert torch.equal(again.detach(), _full_path(lambda: block(x)).detach())
    assert not torch.equal(again.detach(), ref.detach())
    block.b3_1.weight.data.mul_(-1.0)
    flipped = block(x)
    assert torch.equal(flipped.detach(), _full_path(lambda: block(x)).detach())
    assert not torch.equal(flipped.detach(), again.detach())


def test_dispatch_modes_and_transforms_see_the_ops(replays):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x, w, b = _inputs()
    CF.conv2d_relu(x, w, b, padding=1)
    CF.conv2d_relu(x, w, b, padding=1)
    assert replays[0] == 1
    with Seen() as seen:
        y = CF.conv2d_relu(x, w, b, padding=1)
    assert replays[0] == 1, "under a dispatch mode the call takes the full path"
    assert any("cnnkernels.conv2d" in op for op in seen.ops), seen.ops
    assert torch.equal(y, CF.conv2d_relu(x, w, b, padding=1))


def test_a_change_of_device_misses_the_cache(replays):
    x, w, b = _inputs()
    CF.conv2d_relu(x, w, b, padding=1)
    xm, wm, bm = (t.to("meta") for t in (x, w, b))
    y = CF.conv2d_relu(xm, wm, bm, padding=1)
    assert y.device.type == "meta" and y.shape == (2, 16, 9, 9)
    assert replays[0] == 0 and len(_fast._PLANS) == 1, "meta calls take the full path and plan nothing"


def test_recording_is_per_thread(replays):
    """A launch on another thread never lands in this thread's record (replicas of a model may
    run on threads, one per GPU)."""
    import threading

    x, w, b = _inputs(shape=(2, 8, 24, 24))
    # Every call of the other thread has a new key, so each takes the full path and launches.
    other = threading.Thread(target=lambda: [CF.max_pool2d(x[..., :k], 2) for k in range(2, 24)])
    # Launches counted, not run: Triton's interpreter itself runs one kernel at a time.
    with host.launches_stubbed() as launched:
        other.start()
        for k in range(3, 24):
            CF.conv2d(x[..., :k, :], w, b, padding=1)
        other.join()
    assert sum("max_pool" in name for name in launched) == 22
    # Each plan was built from its own call's launches alone.
    kernels = [[fn.__name__ for fn, *_ in plan.launches.launches] for plan in _fast._PLANS.values()]
    assert len(kernels) == 43
    assert sorted(map(tuple, kernels)) == [("_conv_fwd_kernel",)] * 21 + [("_max_pool2d_fwd_kernel",)] * 22


@pytest.mark.parametrize("name", ["conv2d_relu", "max_pool2d", "conv2d_relu_max_pool2d"])
def test_a_plan_keeps_no_tensor_of_its_first_call_alive(name, replays):
    import gc
    import weakref

    x, w, b = _inputs()
    first = _flat(OPS[name](x, w, b))[0]
    assert len(_fast._PLANS) >= 1
    alive = [weakref.ref(t) for t in (first, x, w, b)]
    del first, x, w, b
    gc.collect()
    assert all(ref() is None for ref in alive), "a plan must not pin its first call's tensors in memory"


def test_a_tensor_passed_twice_builds_no_plan(replays):
    x, w, b = _inputs()
    w1 = w[:8, :, :1, :1].contiguous()
    shared = b[:8].clone()
    chain = CF.conv1x1_relu_conv2d_relu_max_pool2d
    chain(x, w1, shared, w[:, :8].contiguous(), torch.cat([shared, shared]), padding=1, kernel_size=3, pool_stride=2)
    w2, b1, b2 = w[:8, :8].contiguous(), b[:8].clone(), b[8:].clone()
    chain(x, w1, b1, w2, b1, padding=1, kernel_size=3, pool_stride=2)  # b1 twice: no plan from this call
    y = chain(x, w1, b1, w2, b2, padding=1, kernel_size=3, pool_stride=2)
    ref = _full_path(lambda: chain(x, w1, b1, w2, b2, padding=1, kernel_size=3, pool_stride=2))
    assert torch.equal(y, ref)


def test_a_launcher_copy_builds_no_plan(replays):
    """A 1x1 conv on an NCHW input: its launcher copies X channels_last with a torch op, which a
    plan cannot replay, so every call takes the full path and reads its own input."""
    w = torch.randn(6, 5, 1, 1, device=DEVICE)
    b = torch.randn(6, device=DEVICE)
    for seed in range(3):
        x = torch.randn(2, 5, 4, 3, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(seed))
        y = CF.conv2d_relu(x, w, b)
        assert torch.allclose(y, torch.relu(torch.nn.functional.conv2d(x, w, b)), atol=1e-5)
    assert replays[0] == 0


def test_forward_mode_ad_takes_the_full_path(replays):
    import torch.autograd.forward_ad as fwAD

    x, w, b = _inputs()
    CF.conv2d(x, w, b)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        with pytest.raises(Exception) as fast:
            CF.conv2d(dual, w, b)
        with pytest.raises(Exception) as full:
            _full_path(lambda: CF.conv2d(dual, w, b))
    assert type(fast.value) is type(full.value)
    assert replays[0] == 0


def test_flag_types_and_module_geometry_are_part_of_the_key(replays):
    from cnnkernels.nn import Inception

    x, w, b = _inputs()
    CF.max_pool2d(x, 2, ceil_mode=True)
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        CF.max_pool2d(x, 2, ceil_mode=1)
    block = Inception(4, (3, 5), (2, 3), 4).to(DEVICE)
    block(x)
    block(x)
    block.b2_2.padding = (0, 0)
    with pytest.raises(ValueError, match="b2_2"):
        block(x)


def test_inception_with_a_parametrized_weight(replays):
    from torch.nn.utils.parametrizations import weight_norm

    from cnnkernels.nn import Inception

    x, _, _ = _inputs()
    block = Inception(4, (3, 5), (2, 3), 4).to(DEVICE)
    block(x)
    weight_norm(block.b2_2)
    try:
        outs = [block(x) for _ in range(3)]
    except ValueError as exc:  # the block may refuse a parametrized branch: then in one line, every call
        with pytest.raises(ValueError, match=str(exc)[:20]):
            _full_path(lambda: block(x))
        return
    ref = _full_path(lambda: block(x))
    assert all(torch.equal(o, ref) for o in outs)
