"""Bytes saved for backward in one training step, measured exactly on the ``meta`` device.

Every tensor autograd keeps for the backward passes through
``torch.autograd.graph.saved_tensors_hooks``, which records its storage once (views, repeated saves
and outputs sharing a buffer count once), parameters excluded. Nothing is computed, so the figure
is the same on any machine. ``saved_bytes`` measures one model, ``compare`` a fused model against
its ``torch.nn`` twin; ``python -m cnnkernels.memory`` prints the four models.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from unittest import mock

import torch
from torch import nn

from cnnkernels.roofline import MODELS

__all__ = ["SavedBytes", "saved_bytes", "compare", "MODELS"]

MIB = 2**20


@dataclass(frozen=True)
class SavedBytes:
    """One model's measurement: ``fused`` and ``twin`` bytes saved for backward."""

    name: str
    fused: int
    twin: int

    @property
    def ratio(self) -> float:
        return self.fused / self.twin


def saved_bytes(model: nn.Module, shape, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes autograd saves for backward when ``model`` (on the ``meta`` device, in its current
    mode) runs a forward on a ``shape`` input of ``dtype``; parameters excluded, each storage once."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if any(
        p.device.type != "meta" for p in model.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)
    ):
        raise ValueError("model must live on the meta device (build it under torch.device('meta'))")
    x = torch.empty(tuple(shape), device="meta", dtype=dtype)
    if hasattr(model, "materialize"):  # lazy layers get their sizes first (a shape-only twin run)
        model.materialize(x.shape)
    model.to(dtype)
    with _full_path(), torch.no_grad():  # a first call may re-lay out weights (channels_last): settle them first
        model(x)
    state = [*model.parameters(), *model.buffers()]  # held: their storages' addresses stay theirs
    params = {t.untyped_storage()._cdata for t in state}
    storages: dict[int, int] = {}  # the StorageImpl's address (one per storage, also on meta) -> bytes

    def pack(t: torch.Tensor) -> torch.Tensor:
        if (key := t.untyped_storage()._cdata) not in params:
            storages[key] = t.untyped_storage().nbytes()
        return t

    with _full_path(), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)  # held until counted: the graph (and every tensor it saved) stays alive
    del out
    return sum(storages.values())


def _full_path():
    """The eager fast path off (``cnnkernels._fast``): its plans come from launches meta tensors never make."""
    from cnnkernels import _fast

    return mock.patch.object(_fast, "enabled", False)


def _build(name: str, fused: bool, **kwargs) -> nn.Module:
    from cnnkernels import models

    if name not in MODELS:
        raise ValueError(f"name must be one of {', '.join(MODELS)}, got {name!r}")
    with torch.device("meta"):
        return getattr(models if fused else models.reference, name)(**kwargs).train()


def compare(
    name: str, batch: int = 128, size: int = 224, dtype: torch.dtype = torch.bfloat16, *, shape=None
) -> SavedBytes:
    """Saved bytes of ``cnnkernels.models.<name>`` and of its ``torch.nn`` twin, both in training
    mode, on a (batch, 1, size, size) input (the course's one-channel images), or on ``shape``."""
    shape = (batch, 1, size, size) if shape is None else tuple(shape)
    return SavedBytes(name, *(saved_bytes(_build(name, fused), shape, dtype) for fused in (True, False)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bytes saved for backward per training step, fused vs torch.nn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    print(f"saved for backward, one training step, bf16, batch {args.batch}, {args.size}x{args.size} (MiB)")
    print(f"{'model':<10} {'fused':>8} {'twin':>8} {'ratio':>6}")
    for r in (compare(name, args.batch, args.size) for name in MODELS):
        print(f"{r.name:<10} {r.fused / MIB:>8,.0f} {r.twin / MIB:>8,.0f} {r.ratio:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
