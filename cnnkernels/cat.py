"""Concatenation: the ``cnnkernels::cat`` op (one strided-copy launch per input) and
``CatFunction``, whose backward returns views ``dY.narrow(dim, offset_i, size_i)`` (no copy)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from cnnkernels.kernels import cat as _k

from ._utils import FLOAT_DTYPES, as_int


def output_memory_format(tensors: Sequence[Tensor]) -> torch.memory_format:
    """torch.cat's rule: the inputs' common suggested memory format (channels_last when every
    input is channels_last), else contiguous."""
    fmt = None
    for t in tensors:
        f = suggest_memory_format(t)
        if f == torch.contiguous_format or (fmt is not None and f != fmt):
            return torch.contiguous_format
        fmt = f
    return fmt


@torch.library.triton_op("cnnkernels::cat", mutates_args=())
def cat_op(tensors: list[Tensor], dim: int) -> Tensor:
    return _k.cat_forward(list(tensors), dim, output_memory_format(tensors))


class CatFunction(torch.autograd.Function):
    """Y = cat(tensors, dim) on the ``cnnkernels`` op; arguments checked by ``cat_args``."""

    @staticmethod
    def forward(ctx, dim, *tensors):
        _setup_cat(ctx, (tensors, dim), None)
        return torch.ops.cnnkernels.cat(list(tensors), dim)

    @staticmethod
    def backward(ctx, grad_y):
        return (None, *_slices(ctx, grad_y))


def _slices(ctx, grad_y) -> list[Tensor]:
    grads, offset = [], 0
    for size in ctx.sizes:  # None: a legacy 1-D empty input, which took no part
        grads.append(grad_y.new_empty((0,)) if size is None else grad_y.narrow(ctx.dim, offset, size))
        offset += size or 0
    return grads


def _setup_cat(ctx, inputs, output):
    tensors, dim = inputs
    ctx.dim = dim
    ctx.sizes = [None if _k.is_legacy_empty(t, tensors) else t.shape[dim] for t in tensors]


def _cat_op_backward(ctx, grad_y):
    return _slices(ctx, grad_y), None


# The op is differentiable on its own too, for callers of torch.ops.cnnkernels.
torch.library.register_autograd("cnnkernels::cat", _cat_op_backward, setup_context=_setup_cat)


def cat_args(tensors, dim) -> tuple[list[Tensor], int]:
    """Validate ``torch.cat`` arguments; return the tensors as a list and ``dim`` made
    non-negative. As in torch, 1-D empty tensors are skipped when other inputs have another rank."""
    if isinstance(tensors, Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"tensors must be a list or tuple of tensors, got {type(tensors).__name__}")
    tensors = list(tensors)
    if not tensors:
        raise ValueError("tensors must be a non-empty list of tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"tensors[{i}] must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.dim() == 0:
            raise ValueError(f"tensors[{i}] is zero-dimensional and cannot be concatenated")
        if t.dtype != tensors[0].dtype:
            raise TypeError(f"tensors[{i}] has dtype {t.dtype} but tensors[0] has {tensors[0].dtype}")
        if t.device != tensors[0].device:
            raise ValueError(f"tensors[{i}] is on {t.device} but tensors[0] is on {tensors[0].device}")
    skip = [_k.is_legacy_empty(t, tensors) for t in tensors]
    ref_i = skip.index(False)
    ref = tensors[ref_i]
    rank = ref.dim()
    dim = as_int(dim, "dim")
    if not -rank <= dim < rank:
        raise ValueError(f"dim {dim} is out of range for tensors of rank {rank} (expected {-rank} .. {rank - 1})")
    dim %= rank
    for i, t in enumerate(tensors):
        if skip[i]:
            continue
        if t.dim() != rank:
            raise ValueError(f"tensors[{i}] has rank {t.dim()} but tensors[{ref_i}] has rank {rank}")
        for d in range(rank):
            if d != dim and t.shape[d] != ref.shape[d]:
                raise ValueError(
                    f"tensors[{i}] has shape {tuple(t.shape)}, which differs from tensors[{ref_i}]'s "
                    f"{tuple(ref.shape)} in dim {d}; only dim {dim} may differ"
                )
    return tensors, dim


def cat(tensors, dim=0):
    """``torch.cat`` for float tensors of one dtype and device: any dim and rank >= 1, NCHW or
    channels_last (the output's layout as torch's); the backward returns views of the gradient."""
    tensors, dim = cat_args(tensors, dim)
    return CatFunction.apply(dim, *tensors)
