"""Whole-model CUDA graphs: a forward, or a whole training step, captured once and replayed.

PyTorch's whole-network recipe: warm up on a side stream (settling autotuning, the fast path's
plans and the allocator), capture, replay with inputs copied into static buffers (one graph per
input shape). At batch 1 this removes the per-kernel launch cost.

    forward = cnnkernels.graphs.capture_forward(model.eval(), x)
    logits = forward(x)            # a static output buffer, overwritten by the next call
    step = cnnkernels.graphs.capture_train_step(model, optimizer, loss_fn, x, y)
    loss = step(x, y)              # a tensor, valid until the next replay
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
    if steps < 1:
        raise ValueError(f"warmup must be at least 1 (it settles autotuning before capture), got {steps}")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(steps):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def _copy_in(pairs: list[tuple[Tensor, Tensor, str]]) -> None:
    """Checks every (static buffer, argument, name) pair before copying any, so a bad argument
    leaves the static inputs as they were."""
    for static, t, name in pairs:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != static.shape or t.dtype != static.dtype:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} and dtype {t.dtype}; the graph was captured for "
                f"{tuple(static.shape)} {static.dtype}"
            )
    for static, t, _ in pairs:
        static.copy_(t)


class GraphedForward:
    """``model(x)`` captured as one CUDA graph for inputs shaped like ``example``; a call copies
    ``x`` into the static input, replays and returns the static output."""

    def __init__(self, model: nn.Module, example: Tensor, warmup: int = 3):
        _need_cuda(example, "example")
        self.static_input = example.detach().clone()
        with torch.no_grad():
            _warm_up(lambda: model(self.static_input), warmup)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_output = model(self.static_input)

    def __call__(self, x: Tensor) -> Tensor:
        _copy_in([(self.static_input, x, "x")])
        self.graph.replay()
        return self.static_output


class GraphedTrainStep:
    """Forward, ``loss_fn(output, target)``, backward and ``optimizer.step()`` captured as one CUDA graph
    (the optimizer must be capturable: SGD, Adam with ``capturable=True``); a call returns the loss."""

    def __init__(self, model, optimizer, loss_fn, example_input: Tensor, example_target: Tensor, warmup: int = 3):
        _need_cuda(example_input, "example_input")
        _need_cuda(example_target, "example_target")
        self.static_input = example_input.detach().clone()
        self.static_target = example_target.detach().clone()
        self.optimizer = optimizer

        def step() -> Tensor:
            loss = loss_fn(model(self.static_input), self.static_target)
            loss.backward()
            optimizer.step()
            return loss

        _warm_up(lambda: (optimizer.zero_grad(set_to_none=True), step()), warmup)
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = step()

    def __call__(self, x: Tensor, target: Tensor) -> Tensor:
        _copy_in([(self.static_input, x, "x"), (self.static_target, target, "target")])
        self.graph.replay()
        return self.static_loss


def capture_forward(model: nn.Module, example: Tensor, warmup: int = 3) -> GraphedForward:
    """``model``'s forward captured as a CUDA graph (see ``GraphedForward``)."""
    return GraphedForward(model, example, warmup)


def capture_train_step(model, optimizer, loss_fn, example_input, example_target, warmup: int = 3) -> GraphedTrainStep:
    """A whole training step captured as a CUDA graph (see ``GraphedTrainStep``)."""
    return GraphedTrainStep(model, optimizer, loss_fn, example_input, example_target, warmup)
