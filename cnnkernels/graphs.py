"""Whole-model CUDA graphs: a forward, or a whole training step, captured once and replayed.

At batch 1 a GPU finishes most of these networks' kernels in microseconds, so launching them one
by one from Python costs more than running them. A captured CUDA graph replays every launch of a
forward (or of forward, backward and optimizer step) with one call and no Python in between.

The recipe is PyTorch's whole-network capture: warm up on a side stream (which settles the
autotuner's choices, the eager fast path's plans and the caching allocator), capture into a
``torch.cuda.CUDAGraph``, then replay with inputs copied into static buffers. The kernels are
capture-safe: no host synchronisation, no autotuning once warmed up (a new shape would autotune:
capture each shape separately), and allocations come from the graph's private memory pool.

    step = cnnkernels.graphs.capture_train_step(model, optimizer, loss_fn, x, y)
    for x, y in loader:
        loss = step(x, y)          # a tensor, valid until the next replay

    forward = cnnkernels.graphs.capture_forward(model.eval(), x)
    logits = forward(x)            # a static output buffer, overwritten by the next call

``torch.compile(model, mode="reduce-overhead")`` also captures CUDA graphs over the ``cnnkernels``
ops (they are ``torch.library.triton_op``s).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _need_cuda(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"{name} is on {t.device}: CUDA graphs need CUDA tensors")


def _warm_up(fn: Callable[[], object], steps: int) -> None:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(steps):
            fn()
    torch.cuda.current_stream().wait_stream(side)


class GraphedForward:
    """``model(x)`` captured as one CUDA graph for inputs shaped like ``example``. Call it with a
    tensor of the same shape, dtype and device: it is copied into the static input, the graph
    replays, and the static output (overwritten by the next call) is returned."""

    def __init__(self, model: nn.Module, example: Tensor, warmup: int = 3):
        _need_cuda(example, "example")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (it settles autotuning before capture), got {warmup}")
        self.static_input = example.detach().clone()
        with torch.no_grad():
            _warm_up(lambda: model(self.static_input), warmup)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_output = model(self.static_input)

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape != self.static_input.shape or x.dtype != self.static_input.dtype:
            raise ValueError(
                f"x has shape {tuple(x.shape)} and dtype {x.dtype}; the graph was captured for "
                f"{tuple(self.static_input.shape)} {self.static_input.dtype}"
            )
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


class GraphedTrainStep:
    """One training step (forward, ``loss_fn(output, target)``, backward, ``optimizer.step()``)
    captured as one CUDA graph. Gradients are set to None before capture, so the captured backward
    allocates them from the graph's pool; the optimizer must be capturable (e.g. SGD, or Adam with
    ``capturable=True``). Returns the static loss tensor."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        example_input: Tensor,
        example_target: Tensor,
        warmup: int = 3,
    ):
        _need_cuda(example_input, "example_input")
        _need_cuda(example_target, "example_target")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (it settles autotuning before capture), got {warmup}")
        self.static_input = example_input.detach().clone()
        self.static_target = example_target.detach().clone()
        self.optimizer = optimizer

        def step() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(self.static_input), self.static_target)
            loss.backward()
            optimizer.step()
            return loss

        _warm_up(step, warmup)
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = loss_fn(model(self.static_input), self.static_target)
            self.static_loss.backward()
            optimizer.step()

    def __call__(self, x: Tensor, target: Tensor) -> Tensor:
        for t, static, name in ((x, self.static_input, "x"), (target, self.static_target, "target")):
            if t.shape != static.shape or t.dtype != static.dtype:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)} and dtype {t.dtype}; the graph was captured for "
                    f"{tuple(static.shape)} {static.dtype}"
                )
        self.static_input.copy_(x)
        self.static_target.copy_(target)
        self.graph.replay()
        return self.static_loss


def capture_forward(model: nn.Module, example: Tensor, warmup: int = 3) -> GraphedForward:
    """``model``'s forward captured as a CUDA graph (see ``GraphedForward``)."""
    return GraphedForward(model, example, warmup)


def capture_train_step(model, optimizer, loss_fn, example_input, example_target, warmup: int = 3) -> GraphedTrainStep:
    """A whole training step captured as a CUDA graph (see ``GraphedTrainStep``)."""
    return GraphedTrainStep(model, optimizer, loss_fn, example_input, example_target, warmup)
