"""The eager fast path: an op call replayed from a plan recorded on its first call.

The first call of an op for a given key (shapes, strides, dtypes, devices, arguments, grad mode,
TF32 switch) runs the full path: argument checks, the autograd function, the ``torch.library``
op, the launcher and Triton's autotuner. While it runs, every launch is recorded (kernel, grid,
arguments, the config the autotuner chose), and from the record a ``LaunchPlan`` is built: which
launch argument is which input, which tensors the launchers allocated (and which are views of
which), the grid already resolved. Later calls with the same key allocate the outputs and call
the chosen kernel directly: no checks (they passed for this key), no dispatch, no autotuner.

Anything the key does not cover misses the cache and takes the full path: a new shape, stride,
dtype, device or argument, autocast, ``torch.compile`` tracing, tensor subclasses (fake tensors,
functional tensors). Only ops whose forward is "allocate, then launch" are planned (a tensor
computed by a torch op between launches would not be replayed), and a recorded call that does
anything else is refused a plan (see ``LaunchPlan.build``).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor
from torch.nn import Parameter

from cnnkernels.kernels import _common

_PLANS: dict = {}
_MAX_PLANS = 4096
enabled = True  # a switch for tests and for measuring the full path

# Looked up once: the key is built on every eager call.
_autocast = torch._C._is_any_autocast_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_tracing = torch._C._get_tracing_state
_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
_tf32 = torch._C._get_cudnn_allow_tf32
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_f32 = torch.float32
_current_cuda_device = getattr(torch._C, "_cuda_getDevice", None)  # called for a CUDA tensor only
_guards = getattr(getattr(torch._C, "_dynamo", None), "guards", None)


def _allocator(device: torch.device):
    """``alloc(shape, stride, dtype)`` on ``device``: without torch's argument parsing (as
    compiled graphs allocate) on the CPU, and on CUDA's current device, which the key holds;
    ``torch.empty_strided`` where this torch lacks those allocators."""
    fast = None
    if device.type == "cpu":
        fast = getattr(_guards, "_empty_strided_cpu", None)
    elif device.type == "cuda" and device.index == torch.cuda.current_device():
        fast = getattr(_guards, "_empty_strided_cuda", None)
    return fast or (lambda shape, stride, dtype: torch.empty_strided(shape, stride, dtype=dtype, device=device))


class Unplannable(Exception):
    """The recorded call did something a launch plan cannot replay."""


def lookup(args: tuple, a: Tensor, *more: Tensor | None):
    """(key, plan) of a call with tensors ``a``, ``*more`` (None allowed) and other arguments
    ``args``: plan None on a miss, key None when the call must take the full path and plan
    nothing. That is: a tensor that is not a plain ``Tensor`` or ``Parameter`` (fake, functional
    or another subclass, a vmap or grad transform's wrapper), a meta input, autocast on, a
    dispatch or torch-function mode active (which must see the ops), ``torch.jit.trace``,
    forward-mode AD, ``torch.compile`` tracing, ``a`` neither a CPU tensor nor on the current
    CUDA device, an unhashable argument (a list). Besides each tensor's shape, strides, dtype
    and device (``a``'s: the current CUDA device or None for the CPU), the key holds whether
    TF32 is allowed (fp32 on CUDA) and, last, whether autograd will record the call."""
    if (
        not enabled
        or _autocast()
        or _dispatch_modes()
        or _function_modes()
        or _tracing() is not None
        or _forward_ad._current_level >= 0
        or _compiling()
    ):
        return None, None
    kind = type(a)
    if (kind is not Tensor and kind is not Parameter) or _wrapped(a):
        return None, None
    dtype = a.dtype
    if a.is_cpu:  # (under Triton's interpreter, which ignores the TF32 switch)
        dev = tf32 = None
    elif a.is_cuda:  # the key holds the current device, the input's (its launcher would switch)
        dev = _current_cuda_device()
        if a.get_device() != dev:
            return None, None
        tf32 = dtype is _f32 and _tf32()
    else:  # meta (shapes only: nothing to replay), another device type: the full path
        return None, None
    if not more:
        key = (args, a.shape, a.stride(), dtype, dev, tf32, _grad_enabled() and a.requires_grad)
    else:
        record = _grad_enabled()
        grad = record and a.requires_grad
        key = (args, a.shape, a.stride(), dtype, dev, tf32)
        for t in more:
            if t is None:
                key += (None,)
                continue
            kind = type(t)
            if (kind is not Tensor and kind is not Parameter) or _wrapped(t):
                return None, None
            key += (t.shape, t.stride(), t.dtype, t.device)
            grad = grad or (record and t.requires_grad)
        key += (grad,)
    try:
        return key, _PLANS.get(key)
    except TypeError:  # an unhashable argument: always the full path
        return None, None


def put(key, plan) -> None:
    _PLANS[key] = plan
    if len(_PLANS) > _MAX_PLANS:
        del _PLANS[next(iter(_PLANS))]


def clear() -> None:
    _PLANS.clear()


def planned(key, call, plan):
    """``call()``, with its launches recorded (they run); unless ``key`` is None,
    ``plan(record, result)`` is stored under ``key``, or nothing when it raises ``Unplannable``."""
    record: list = []
    stack = _common.RECORDING.__dict__.setdefault("stack", [])
    stack.append(record)
    try:
        out = call()
    finally:
        stack.remove(record)
    if key is not None:
        try:
            put(key, plan(record, out))
        except Unplannable:
            pass
    return out


def written(record: list, like: Tensor, dtype: torch.dtype) -> Tensor:
    """The one tensor of ``dtype`` shaped like ``like`` that the recorded launches were handed
    (an output the op keeps to itself, such as a max pool's argmax); Unplannable unless unique."""
    found = {id(a): a for _, _, args, _, _ in record for a in args if isinstance(a, Tensor) and a.dtype == dtype}
    found = [a for a in found.values() if a.shape == like.shape]
    if len(found) != 1:
        raise Unplannable(f"{len(found)} launch arguments of {dtype} shaped {tuple(like.shape)}")
    return found[0]


class Plan:
    """A planned op call: its ``LaunchPlan`` and, for a call autograd records, the autograd
    function replaying it, called as ``function.apply(x, *tensors, plan)``; ``state`` holds what
    that function reads. ``plan(x, *tensors)`` returns what the replay or the function does."""

    def __init__(self, launches: LaunchPlan, function=None, **state):
        self.launches, self.function = launches, function
        self.__dict__.update(state)

    @staticmethod
    def of(unbatched: bool, launches: LaunchPlan, function=None, **state):
        """The plan to store: for a batched call without autograd, the replay itself (no call in
        between); an ``UnbatchedPlan`` for a (C, H, W) input."""
        if function is None and not unbatched:
            return launches.replay
        return (UnbatchedPlan if unbatched else Plan)(launches, function, **state)

    def __call__(self, x, *tensors):
        if self.function is None:
            return self.launches.replay(x, *tensors)
        return self.function.apply(x, *tensors, self)


class UnbatchedPlan(Plan):
    """A plan recorded from a (C, H, W) input: unsqueezed to a batch of one, outputs squeezed."""

    def __call__(self, x, *tensors):
        out = Plan.__call__(self, x.unsqueeze(0), *tensors)
        return out.squeeze(0) if isinstance(out, Tensor) else tuple(t.squeeze(0) for t in out)


class LaunchPlan:
    """The launches of one recorded call, replayable with new input tensors of the same key.

    ``replay(*inputs)`` allocates every tensor the recorded call allocated (same shape, strides,
    dtype, device; views of them rebuilt with ``as_strided``), looks up the kernel state a
    launch keeps across calls (a tensor with a ``replay_lookup``: the split tile counters of the
    current stream), launches each kernel with its
    chosen config and the recorded non-tensor arguments, and returns the output (a tuple of them
    when there are several). It is straight-line code written for the plan (``_compile``):
    no loop over slots, every constant bound once; ``launches`` refers back to the plan."""

    def __init__(self, n_in, allocs, views, launches, outputs, state=()):
        self.allocs, self.views, self.launches, self.outputs = allocs, views, launches, outputs
        self.state = state
        self.replay = _compile(self, n_in)
        self.replay.launches = self  # the replay stands for its plan in ``_PLANS``

    @classmethod
    def build(cls, record: list, inputs: tuple, outputs: tuple, derived: tuple = ()) -> LaunchPlan:
        """``derived``: tensors the recorded call computed from its inputs with torch ops (not
        launches); the caller recomputes them and passes them after the inputs to ``run``."""
        try:
            return cls._build(record, (*inputs, *derived), outputs)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a record this cannot read
            raise Unplannable(f"{type(exc).__name__}: {exc}") from exc

    @classmethod
    def _build(cls, record: list, inputs: tuple, outputs: tuple) -> LaunchPlan:
        # Each tensor's name in the replay's code: i<k> the k-th input, a<j> an allocation, v<j> a view.
        slots: dict[int, str] = {id(t): f"i{i}" for i, t in enumerate(inputs) if t is not None}
        if len(slots) != sum(t is not None for t in inputs):
            # One tensor passed as two inputs: the key cannot tell, so a later call with two
            # distinct tensors would read one of them from the other's slot.
            raise Unplannable("an input passed twice")
        allocs: list = []
        views: list = []
        state: list = []  # kernel state kept across launches (tile counters): looked up, not allocated
        keep = []  # recorded tensors stay alive while building, so their ids stay unique

        def slot(t: Tensor) -> str:
            keep.append(t)
            if id(t) in slots:
                return slots[id(t)]
            lookup = getattr(t, "replay_lookup", None)
            if lookup is not None:
                slots[id(t)] = f"s{len(state)}"
                state.append(lookup)
                return slots[id(t)]
            base = t._base if t._base is not None else t
            keep.append(base)
            if getattr(base, "replay_derived", False):  # computed by a torch op, which no replay runs
                raise Unplannable("a launch reads a tensor a torch op computed")
            if slots.get(id(base), "a").startswith("i"):
                raise Unplannable("a launch reads a view of an input")
            if id(base) not in slots:
                slots[id(base)] = f"a{len(allocs)}"
                allocs.append((_allocator(base.device), tuple(base.shape), base.stride(), base.dtype))
            if base is not t:
                slots[id(t)] = f"v{len(views)}"
                views.append((slots[id(base)], tuple(t.shape), t.stride(), t.storage_offset()))
            return slots[id(t)]

        launches = []
        for kernel, grid, args, kwargs, cfg in record:
            if cfg is None and hasattr(kernel, "configs"):
                raise Unplannable("an autotuned kernel that chose no config (it did not run)")
            fn = kernel.fn if cfg is not None else kernel
            if cfg is not None and cfg.pre_hook is not None:
                raise Unplannable("a config with a pre-hook")
            kw = dict(kwargs)
            if cfg is not None:
                kw.update(cfg.all_kwargs())
            if callable(grid):
                grid = tuple(grid({**dict(zip(fn.arg_names, args)), **kw}))
            # Constexprs go positionally after the arguments (fewer keywords per launch); the
            # launch options (num_warps, num_stages, ...) stay keywords.
            names = list(fn.arg_names)
            template = list(args)
            for name in names[len(args) :]:
                if name not in kw:
                    break
                template.append(kw.pop(name))
            tensor_slots = [(i, slot(a)) for i, a in enumerate(args) if isinstance(a, Tensor)]
            for i, _ in tensor_slots:
                template[i] = None  # the plan holds no tensor of the recorded call (its memory is freed)
            launches.append((fn, template, tensor_slots, {"grid": grid, "warmup": False, **kw}))
        for t in outputs:
            if id(t) not in slots and t.numel() != 0:
                raise Unplannable("an output no launch wrote")
        return cls(len(inputs), allocs, views, launches, [slot(t) for t in outputs], tuple(state))

    def run(self, inputs: tuple):
        """The output(s), for ``inputs`` (then the derived tensors, see ``build``)."""
        return self.replay(*inputs)


def _compile(plan: LaunchPlan, n_in: int):
    """``plan``'s replay as a function of its inputs, e.g. for one allocation and one launch
    ``def replay(i0): a0 = alloc0(shape0, stride0, dtype0); fn0.run(i0, a0, *args0_1, **kw0);
    return a0``. The kernel's ``run`` is looked up at each call (``cnnkernels.host`` counts
    launches by replacing it)."""
    env: dict = {}
    lines = []
    for j, (alloc, shape, stride, dtype) in enumerate(plan.allocs):
        env.update({f"alloc{j}": alloc, f"shape{j}": shape, f"stride{j}": stride, f"dtype{j}": dtype})
        lines.append(f"a{j} = alloc{j}(shape{j}, stride{j}, dtype{j})")
    for j, lookup in enumerate(plan.state):
        env[f"lookup{j}"] = lookup
        lines.append(f"s{j} = lookup{j}()")
    for j, (base, shape, stride, offset) in enumerate(plan.views):
        env[f"view{j}"] = (shape, stride, offset)
        lines.append(f"v{j} = {base}.as_strided(*view{j})")
    for k, (fn, template, tensor_slots, kw) in enumerate(plan.launches):
        env.update({f"fn{k}": fn, f"kw{k}": kw})
        tensors = dict(tensor_slots)
        args, i = [], 0
        while i < len(template):
            if i in tensors:
                args.append(tensors[i])
                i += 1
                continue
            end = next((e for e in range(i, len(template)) if e in tensors), len(template))
            env[f"args{k}_{i}"] = tuple(template[i:end])
            args.append(f"*args{k}_{i}")
            i = end
        lines.append(f"fn{k}.run({', '.join(args)}, **kw{k})")
    outputs = plan.outputs
    lines.append(f"return {outputs[0]}" if len(outputs) == 1 else f"return ({', '.join(outputs)})")
    body = "".join(f"\n        {line}" for line in lines)
    inputs = ", ".join(f"i{i}" for i in range(n_in))
    source = f"def make({', '.join(env)}):\n    def replay({inputs}):{body}\n    return replay"
    scope: dict = {}
    exec(source, scope)  # noqa: S102 - code written above from the plan's own names
    return scope["make"](**env)
