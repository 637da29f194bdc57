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

import contextlib
from collections import OrderedDict

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor
from torch.nn import Parameter

from cnnkernels.kernels import _common

_PLANS: OrderedDict = OrderedDict()
_MAX_PLANS = 4096
enabled = True  # a switch for tests and for measuring the full path


class Unplannable(Exception):
    """The recorded call did something a launch plan cannot replay."""


def key(args: tuple, a: Tensor, *more: Tensor | None):
    """The cache key of a call with tensors ``a``, ``*more`` (None allowed) and other arguments
    ``args``, or None when the call must take the full path: a tensor that is not a
    plain ``Tensor`` or ``Parameter`` (fake, functional or another subclass, a vmap or grad
    transform's wrapper), autocast on, a dispatch or torch-function mode active (which must see
    the ops), ``torch.compile`` tracing. Besides each tensor's shape, strides,
    dtype and device, the key holds whether autograd will record the call, the current CUDA
    device (triton launches there) and, for fp32, whether TF32 is allowed."""
    if (
        not enabled
        or torch._C._is_any_autocast_enabled()
        or torch._C._len_torch_dispatch_stack()  # a dispatch mode (FlopCounterMode, fake mode) sees the ops
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._get_tracing_state() is not None  # torch.jit.trace records the ops
        or _forward_ad._current_level >= 0  # dual tensors: forward-mode AD must see the ops
        or torch.compiler.is_compiling()
    ):
        return None
    grad = False
    record = torch.is_grad_enabled()
    parts = []
    for t in (a, *more):
        if t is None:
            parts.append(None)
            continue
        kind = type(t)
        if (kind is not Tensor and kind is not Parameter) or _wrapped(t):  # subclass, vmap/grad wrapper
            return None
        parts.append((t.shape, t.stride(), t.dtype, t.device))
        grad = grad or (record and t.requires_grad)
    if a.is_meta:  # shapes only: nothing to replay (and no launch to record without the interpreter)
        return None
    dev = torch.cuda.current_device() if a.is_cuda else None
    if dev is not None and a.get_device() != dev:  # the launchers switch devices: not replayed
        return None
    tf32 = torch._C._get_cudnn_allow_tf32() if a.dtype == torch.float32 else None
    return (args, grad, dev, tf32, *parts)  # unhashable arguments: see ``get``


_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def get(key):
    """The plan for ``key``, or None (also for a key holding an unhashable argument, a list:
    such a call always takes the full path)."""
    try:
        return _PLANS.get(key)
    except TypeError:
        return None


def put(key, plan) -> None:
    try:
        _PLANS[key] = plan
    except TypeError:  # an unhashable argument
        return
    if len(_PLANS) > _MAX_PLANS:
        _PLANS.popitem(last=False)


def clear() -> None:
    _PLANS.clear()


@contextlib.contextmanager
def recording():
    """Record every launch inside the block (they still run) into the yielded list."""
    record: list = []
    stack = _common.RECORDING.__dict__.setdefault("stack", [])
    stack.append(record)
    try:
        yield record
    finally:
        stack.remove(record)


def written(record: list, like: Tensor, dtype: torch.dtype) -> Tensor:
    """The one tensor of ``dtype`` shaped like ``like`` that the recorded launches were handed
    (an output the op keeps to itself, such as a max pool's argmax); Unplannable unless unique."""
    found = {id(a): a for _, _, args, _, _ in record for a in args if isinstance(a, Tensor) and a.dtype == dtype}
    found = [a for a in found.values() if a.shape == like.shape]
    if len(found) != 1:
        raise Unplannable(f"{len(found)} launch arguments of {dtype} shaped {tuple(like.shape)}")
    return found[0]


class LaunchPlan:
    """The launches of one recorded call, replayable with new input tensors of the same key.

    ``run(inputs)`` allocates every tensor the recorded call allocated (same shape, strides,
    dtype, device; views of them rebuilt with ``as_strided``), launches each kernel with its
    chosen config and the recorded non-tensor arguments, and returns the outputs."""

    def __init__(self, allocs, views, launches, outputs):
        self.allocs, self.views, self.launches, self.outputs = allocs, views, launches, outputs

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
        slots: dict[int, int] = {id(t): i for i, t in enumerate(inputs) if t is not None}
        if len(slots) != sum(t is not None for t in inputs):
            # One tensor passed as two inputs: the key cannot tell, so a later call with two
            # distinct tensors would read one of them from the other's slot.
            raise Unplannable("an input passed twice")
        n_in = len(inputs)
        allocs: list = []
        views: list = []
        keep = []  # recorded tensors stay alive while building, so their ids stay unique

        def slot(t: Tensor) -> int:
            keep.append(t)
            if id(t) in slots:
                return slots[id(t)]
            base = t._base if t._base is not None else t
            keep.append(base)
            if isinstance(slots.get(id(base)), int):
                raise Unplannable("a launch reads a view of an input")
            if id(base) not in slots:
                slots[id(base)] = ("a", len(allocs))
                allocs.append((tuple(base.shape), base.stride(), base.dtype, base.device))
            if base is t:
                return slots[id(t)]
            slots[id(t)] = ("v", len(views))
            views.append((slots[id(base)][1], tuple(t.shape), t.stride(), t.storage_offset()))
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
            launches.append((fn, template, tensor_slots, grid, kw))
        out_slots = []
        for t in outputs:
            if id(t) not in slots and t.numel() != 0:
                raise Unplannable("an output no launch wrote")
            out_slots.append(slot(t))
        # Final positions: inputs, then allocations, then views.
        n_alloc = len(allocs)

        def pos(s):
            if isinstance(s, int):
                return s
            return n_in + s[1] if s[0] == "a" else n_in + n_alloc + s[1]

        launches = [(fn, tpl, [(i, pos(s)) for i, s in ts], grid, kw) for fn, tpl, ts, grid, kw in launches]
        return cls(allocs, views, launches, [pos(s) for s in out_slots])

    def run(self, inputs: tuple) -> list:
        """The outputs, for ``inputs`` (then the derived tensors, see ``build``)."""
        pool = list(inputs)
        for shape, stride, dtype, device in self.allocs:
            pool.append(torch.empty_strided(shape, stride, dtype=dtype, device=device))
        n_in = len(inputs)
        for base, shape, stride, offset in self.views:
            pool.append(pool[n_in + base].as_strided(shape, stride, offset))
        for fn, template, tensor_slots, grid, kw in self.launches:
            args = template.copy()
            for i, s in tensor_slots:
                args[i] = pool[s]
            fn.run(*args, grid=grid, warmup=False, **kw)
        out = []
        for s in self.outputs:
            out.append(pool[s])
        return out
