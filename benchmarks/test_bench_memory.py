"""Training memory (``cnnkernels.memory``): bytes saved for backward, fused model against its
``torch.nn`` twin, bf16, batch 128, 224x224, on the meta device (marked ``memory``: runs anywhere);
fails when a model misses its target."""

from __future__ import annotations

import pytest
import torch

from cnnkernels import memory

pytestmark = pytest.mark.memory

# Targets: every model at most half its twin; VGG-11 and GoogLeNet at most 0.35x.
TARGETS = {"AlexNet": 0.5, "VGG": 0.35, "NiN": 0.5, "GoogLeNet": 0.35}


@pytest.mark.parametrize("name", memory.MODELS)
def test_saved_bytes(benchmark, name):
    benchmark.group = "memory:saved_for_backward:bf16:batch128"
    row = benchmark.pedantic(memory.compare, args=(name, 128, 224, torch.bfloat16), rounds=1, iterations=1)
    benchmark.extra_info.update(
        model=name,
        dtype="bf16",
        shape=[128, 1, 224, 224],
        fused_bytes=row.fused,
        twin_bytes=row.twin,
        fused_mib=round(row.fused / memory.MIB, 1),
        twin_mib=round(row.twin / memory.MIB, 1),
        ratio=round(row.ratio, 4),
        target=TARGETS[name],
        method="saved_tensors_hooks on the meta device, each storage once, parameters excluded",
    )
    assert row.ratio <= TARGETS[name], f"{name}: {row.ratio:.3f}x its twin, target {TARGETS[name]}x"
