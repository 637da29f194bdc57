"""Bytes saved for backward (``cnnkernels.memory``): the instrument against hand counts, and the
issue's targets for the four models (bf16, batch 128, 224x224, on the meta device)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkernels import memory

MIB = 2**20


def _meta(module: nn.Module) -> nn.Module:
    return module.to("meta")


def test_counts_a_hand_built_model():
    """Conv2d saves its input (its weight is a parameter: excluded), ReLU saves its output:
    2*3*8*8 + 2*4*8*8 elements of 4 bytes."""
    model = _meta(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    assert memory.saved_bytes(model, (2, 3, 8, 8), torch.float32) == (2 * 3 * 8 * 8 + 2 * 4 * 8 * 8) * 4


def test_each_storage_counted_once():
    """A tensor saved twice and a view of it are one storage; the parameter is excluded."""

    class SavesTwice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x, x, x[:, :1])
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(5, device="meta"))

        def forward(self, x):
            y = x * self.scale  # saves x (and the parameter, not counted)
            return SavesTwice.apply(y).exp()  # y, once; exp saves its output

    assert memory.saved_bytes(Model(), (4, 5), torch.bfloat16) == 3 * 4 * 5 * 2


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="model"):
        memory.saved_bytes("net", (1, 1))
    with pytest.raises(TypeError, match="dtype"):
        memory.saved_bytes(nn.ReLU(), (1, 1), torch.int32)
    with pytest.raises(ValueError, match="meta"):
        memory.saved_bytes(nn.Linear(2, 2), (1, 2))
    with pytest.raises(ValueError, match="name"):
        memory.compare("ResNet")


# The twins' figures counted by hand from the layer shapes would repeat the models; instead the
# twin of AlexNet is checked against torch's own layers counted one by one (input, each conv's
# output saved by its ReLU, each pool's input and int64 indices, the head), and every fused model
# against the ratios.
def test_alexnet_twin_against_a_hand_count():
    n, b = 128, 2  # batch, bytes per bf16 element
    conv = [(96, 54), (256, 26), (384, 12), (384, 12), (256, 12)]
    pools = [(96, 26), (256, 12), (256, 5)]
    total = n * 224 * 224 * b  # the image, saved by the first conv
    total += sum(n * c * s * s * b for c, s in conv)  # ReLU outputs (each also the next layer's input)
    total += sum(n * c * s * s * 8 for c, s in pools)  # max-pool indices (int64)
    total += sum(n * c * s * s * b for c, s in pools)  # pooled outputs (the next conv's input)
    # Per hidden layer: ReLU output, dropout output and mask (in the input's dtype on the meta
    # device, where dropout is a multiply by a random mask; a CUDA device keeps a bool mask).
    total += 2 * 3 * n * 4096 * b
    twin = memory.saved_bytes(memory._build("AlexNet", False), (n, 1, 224, 224))
    assert twin == total


@pytest.mark.parametrize("name, limit", [("AlexNet", 0.5), ("VGG", 0.35), ("NiN", 0.5), ("GoogLeNet", 0.35)])
def test_fused_models_meet_the_targets(name, limit):
    row = memory.compare(name)
    assert row.twin > 0 and row.fused > 0
    assert row.ratio <= limit, f"{name}: {row.fused / MIB:.0f} MiB vs twin {row.twin / MIB:.0f} MiB"


def test_summary_train_prints_the_measurement(capsys):
    from cnnkernels import cli

    assert cli.main(["summary", "alexnet", "--train", "--input", "4,1,96,96"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    row = memory.compare("AlexNet", shape=(4, 1, 96, 96))
    assert f"training step: {row.fused / MIB:,.1f} MiB saved for backward" in text
    assert f"{row.twin / MIB:,.1f} MiB for the torch.nn twin ({row.ratio:.2f}x" in text
    assert 0 < row.fused < row.twin
