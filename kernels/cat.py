"""Concatenation as a strided copy: each input is copied into its slice of the output.

Copy:      Y.narrow(dim, offset_i, size_i)[...] = X_i[...], one launch per input. Before the
           launch, both tensors' dims are ordered by the destination's strides (outermost first)
           and merged wherever they are contiguous in both, so an NCHW channel concatenation is
           a 2-D copy (N, C_i*H*W) and a channels_last one a 2-D copy (N*H*W, C_i): the inner
           axis is the one contiguous in memory, and the outer index needs at most two
           divisions per row.
Backward:  dX_i = dY.narrow(dim, offset_i, size_i), a view: no kernel, no copy.

Limits: up to 4 dims after merging go to the kernel; a copy that needs more is split over its
outermost dim into several launches (views, no copies). Row offsets are 64-bit. The copy moves
elements bit for bit: the dtypes of source and destination are equal.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_runnable, launch, on_tensor_device, pick_configs, shape_only


def cat_configs() -> list[triton.Config]:
    """BLOCK_R rows x BLOCK_I inner elements per program; autotuning picks the shape that fits
    the inner extent (C_i channels for channels_last, C_i*H*W for NCHW). Each GPU config compiles
    for sm_90 without spills (``cnnkernels.report``)."""

    def cfg(br, bi, warps):
        return triton.Config({"BLOCK_R": br, "BLOCK_I": bi}, num_warps=warps, num_stages=1)

    return pick_configs(
        gpu=[cfg(1, 2048, 8), cfg(8, 256, 4), cfg(32, 64, 4), cfg(128, 16, 4)],
        interpreter=[cfg(64, 256, 4)],
    )


MAX_DIMS = 4


@triton.autotune(configs=cat_configs(), key=["D0", "D1", "D2", "D3"])
@triton.jit
def _cat_copy_kernel(
    x_ptr, y_ptr,
    D0, D1, D2, D3,
    stride_x0, stride_x1, stride_x2, stride_x3,
    stride_y0, stride_y1, stride_y2, stride_y3,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """Y[i0,i1,i2,i3] = X[i0,i1,i2,i3]; rows are the flattened (i0, i1, i2), i3 the inner axis.
    A 1-D grid (rows blocks x inner blocks), so neither extent meets the 65535 limit of grid
    axes 1 and 2."""
    pid = tl.program_id(0).to(tl.int64)
    blocks_i = tl.cdiv(D3, BLOCK_I)
    pid_r = pid // blocks_i
    pid_i = pid % blocks_i

    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (rows < D0 * D1 * D2)[:, None] & (cols < D3)[None, :]
    i2 = rows % D2
    i01 = rows // D2
    i1 = i01 % D1
    i0 = i01 // D1
    x_off = (i0 * stride_x0 + i1 * stride_x1 + i2 * stride_x2)[:, None] + (cols * stride_x3)[None, :]
    y_off = (i0 * stride_y0 + i1 * stride_y1 + i2 * stride_y2)[:, None] + (cols * stride_y3)[None, :]
    v = tl.load(x_ptr + x_off, mask=mask)
    tl.store(y_ptr + y_off, v, mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers: check -> allocate -> grid -> launch.
# ----------------------------------------------------------------------------------------------


def copy_dims(shape, x_strides, y_strides) -> list[tuple[int, int, int]]:
    """(size, x stride, y stride) per dim: size-1 dims dropped, ordered by the destination's
    strides (outermost first), then neighbours merged where both tensors are contiguous across
    them. An empty list means a single element."""
    dims = [(n, sx, sy) for n, sx, sy in zip(shape, x_strides, y_strides) if n != 1]
    dims.sort(key=lambda d: (d[2], d[1]), reverse=True)
    merged: list[tuple[int, int, int]] = []
    for n, sx, sy in dims:
        if merged:
            pn, psx, psy = merged[-1]
            if psx == sx * n and psy == sy * n:
                merged[-1] = (pn * n, sx, sy)
                continue
        merged.append((n, sx, sy))
    return merged


@on_tensor_device
def copy_into(x: torch.Tensor, y: torch.Tensor) -> None:
    """Y[...] = X[...] for two strided tensors of one shape and dtype (Y must not overlap X)."""
    check_runnable("input", x)
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"copy_into: {tuple(x.shape)} {x.dtype} into {tuple(y.shape)} {y.dtype}")
    if x.numel() == 0 or shape_only(x):
        return
    dims = copy_dims(x.shape, x.stride(), y.stride())
    if len(dims) > MAX_DIMS:
        # Split over the destination's outermost dim: each part has one dim fewer.
        d = max(range(x.dim()), key=lambda i: (y.stride(i) if x.shape[i] != 1 else -1, x.stride(i)))
        for j in range(x.shape[d]):
            copy_into(x.select(d, j), y.select(d, j))
        return
    dims = [(1, 0, 0)] * (MAX_DIMS - len(dims)) + dims
    sizes = [d[0] for d in dims]
    rows = sizes[0] * sizes[1] * sizes[2]

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_R"]) * triton.cdiv(sizes[3], meta["BLOCK_I"]),)

    launch(_cat_copy_kernel, grid,
        x, y,
        *sizes,
        *(d[1] for d in dims),
        *(d[2] for d in dims),
    )


def is_legacy_empty(t: torch.Tensor, tensors) -> bool:
    """torch.cat skips 1-D empty tensors when some input has another rank (a legacy rule)."""
    return t.dim() == 1 and t.shape[0] == 0 and any(u.dim() != 1 for u in tensors)


@on_tensor_device
def cat_forward(tensors: list[torch.Tensor], dim: int, memory_format: torch.memory_format) -> torch.Tensor:
    """torch.cat(tensors, dim) for tensors of one dtype and device, of one rank and equal sizes
    off ``dim`` (``dim`` already non-negative) once legacy 1-D empties are set aside; the
    output is allocated in ``memory_format``."""
    parts = [t for t in tensors if not is_legacy_empty(t, tensors)]
    first = parts[0]
    check_runnable("tensors[0]", first)
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for t in parts)
    y = torch.empty(shape, device=first.device, dtype=first.dtype, memory_format=memory_format)
    offset = 0
    for t in parts:
        size = t.shape[dim]
        copy_into(t, y.narrow(dim, offset, size))
        offset += size
    return y
