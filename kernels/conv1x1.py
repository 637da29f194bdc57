"""1x1 convolution (stride 1, no padding, groups 1) as a plain GEMM, with two-way outputs.

The input is read as an [N*H*W, C] matrix through its strides (channels_last makes each row
contiguous). Several 1x1 convolutions of one input (Inception's b1_1, b2_1 and b3_1) run as one
GEMM over their concatenated weights, so the input is read once; output columns below ``SPLIT``
go to ``y0`` and the rest to ``y1`` (e.g. a channel slice of the block's output and a scratch
buffer). Backward takes dY from the same two places.

Forward:  Y[m, j] = act(b[j] + sum_c X[m, c] W[j, c])
dX:       dX[m, c] = sum_j dY'[m, j] W[j, c]
dW, db:   dW[j, c] = sum_m dY'[m, j] X[m, c] over M split in chunks, the partials summed in split
          order by the program that finishes each tile last (``conv.store_split_tile``); db comes
          from ``conv2d_backward_prep``.
dY' = dY * (Y > 0) under ReLU, Y being the saved output.

Limits: offsets within one image are 32-bit (H*W*C < 2**31); batch offsets are 64-bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import conv as _conv
from ._common import (
    INTERPRET,
    as_multiples,
    channels_last_copy,
    check_runnable,
    launch,
    mma,
    narrow_tiles,
    nchw_strides,
    on_tensor_device,
    pick_configs,
    pixel_strides,
    prune_by_dtype,
    shape_only,
    short_reduction,
    tile_of,
    to_dtype,
    vector_factor,
)
from .conv import store_split_tile


def conv1x1_configs(kernel: str) -> list[triton.Config]:
    """Per kernel ("fwd", "bwd_input", "bwd_weight"); each listed config compiles for sm_90
    without spills (``cnnkernels.report``). The two-way epilogue holds two pointer tiles, so the
    forward stays at 64-wide tiles on one side."""

    def cfg(bm, bn, bk, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)

    gpu = {
        "fwd": [cfg(64, 128, 64, 8, 3), cfg(64, 64, 64, 4, 4), cfg(64, 64, 64, 4, 3)],
        "bwd_input": [cfg(128, 128, 64, 8, 3), cfg(64, 128, 64, 4, 4), cfg(64, 64, 64, 4, 3)],
        # One warpgroup per 128x128 tile: with two (8 warps) Triton 3.6 serialises the wgmma (C7515).
        "bwd_weight": [cfg(128, 128, 64, 4, 3), cfg(64, 64, 64, 4, 3)],
    }[kernel]
    return pick_configs(gpu=gpu, interpreter=[cfg(256, 128, 128, 4, 1)])


@triton.jit
def _pixel_offsets(offs_m, HW, W, stride_n, stride_h, stride_w):
    """Offset of output pixel m = (n, h, w) in a strided NCHW/NHWC tensor (64-bit)."""
    n = offs_m // HW
    hw = (offs_m % HW).to(tl.int32)
    return n * stride_n + (hw // W) * stride_h + (hw % W) * stride_w


# A reduction of at most this many channels is passed as a constexpr (``SHORT``): then
# ``short_reduction`` gives it a K slice of its own length, a single MMA with no loop.
SHORT_MAX = 64


def _prune_fwd(configs, named_args, **kwargs):
    """``prune_by_dtype``; at most 64 output channels keep the 64-wide tiles (``narrow_tiles``)
    and a reduction over fewer than 64 channels a shorter K slice (``short_reduction``): NiN's
    10 -> 10 layer spilled 772-852 registers (static, sm_90); for 4-byte operands (TF32) the
    64x128 tile runs on one warpgroup: on two, Triton 3.6 serialises its wgmma (C7515)."""
    configs = prune_by_dtype("x_ptr")(configs, named_args, **kwargs)
    k, c = (named_args.get(name, kwargs.get(name)) for name in ("K", "C"))
    configs = short_reduction(narrow_tiles(configs, k, "BLOCK_N"), c)
    if INTERPRET or named_args.get("x_ptr", kwargs.get("x_ptr")).element_size() != 4:
        return configs
    return [
        triton.Config(cfg.kwargs, num_warps=4 if cfg.kwargs["BLOCK_N"] == 128 else cfg.num_warps, num_stages=cfg.num_stages)
        for cfg in configs
    ]


@triton.autotune(configs=conv1x1_configs("fwd"), prune_configs_by={"early_config_prune": _prune_fwd}, key=["M", "C", "K", "SPLIT"])
@triton.jit
def _conv1x1_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y0_ptr, y1_ptr,
    M, HW, W, C, K, SPLIT,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_b,
    stride_y0n, stride_y0c, stride_y0h, stride_y0w,
    stride_y1n, stride_y1c, stride_y1h, stride_y1w,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, TWO_WAY: tl.constexpr,
    SHORT: tl.constexpr,  # C when at most SHORT_MAX, else 0
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """SHORT <= BLOCK_K: the reduction is one K slice, one MMA and no loop (NiN's 10-channel
    layer; a loop of one step carried the pipeline's bookkeeping and a wait to zero)."""
    pid_m, pid_n = tile_of(tl.program_id(0), tl.cdiv(K, BLOCK_N))
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < K
    x_rows = x_ptr + _pixel_offsets(offs_m, HW, W, stride_xn, stride_xh, stride_xw)
    w_cols = w_ptr + offs_n * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if SHORT > 0 and SHORT <= BLOCK_K:
        c = tl.arange(0, BLOCK_K)
        c_ok = c < SHORT
        a = tl.load(x_rows[:, None] + (c * stride_xc)[None, :], mask=mask_m[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(w_cols[None, :] + (c * stride_wc)[:, None], mask=c_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)
    else:
        for c0 in range(0, C, BLOCK_K):
            c = c0 + tl.arange(0, BLOCK_K)
            c_ok = c < C
            a = tl.load(x_rows[:, None] + (c * stride_xc)[None, :], mask=mask_m[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_cols[None, :] + (c * stride_wc)[:, None], mask=c_ok[:, None] & mask_n[None, :], other=0.0)
            acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0.0).to(ACC_DTYPE)[None, :]
    if ACTIVATION == "relu":
        # NaN stays NaN, as torch's relu (a plain max would return the 0).
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    mask = mask_m[:, None] & mask_n[None, :]
    pix0 = _pixel_offsets(offs_m, HW, W, stride_y0n, stride_y0h, stride_y0w)
    tl.store(y0_ptr + pix0[:, None] + (offs_n * stride_y0c)[None, :], to_dtype(acc, y0_ptr.dtype.element_ty),
             mask=mask & (offs_n < SPLIT)[None, :])
    if TWO_WAY:
        pix1 = _pixel_offsets(offs_m, HW, W, stride_y1n, stride_y1h, stride_y1w)
        tl.store(y1_ptr + pix1[:, None] + ((offs_n - SPLIT) * stride_y1c)[None, :], to_dtype(acc, y1_ptr.dtype.element_ty),
                 mask=mask & (offs_n >= SPLIT)[None, :])


def _prune_bwd_input(configs, named_args, **kwargs):
    """``prune_by_dtype``; at most 64 input channels (NiN's 10-class layer) keep the 64-wide
    tiles only (a 128-wide tile is mostly idle and spills 404-877 registers; static, sm_90), and
    a reduction over fewer than 64 output channels a shorter K slice (``short_reduction``)."""
    configs = prune_by_dtype("w_ptr")(configs, named_args, **kwargs)
    c, k = (named_args.get(name, kwargs.get(name)) for name in ("C", "K"))
    return short_reduction(narrow_tiles(configs, c, "BLOCK_N"), k)


@triton.autotune(configs=conv1x1_configs("bwd_input"), prune_configs_by={"early_config_prune": _prune_bwd_input}, key=["M", "C", "K"])
@triton.jit
def _conv1x1_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    M, HW, W, C, K,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_wk, stride_wc,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    K_MULT: tl.constexpr, DY_MULT: tl.constexpr,  # factors of K and of dY's pixel strides
    SHORT: tl.constexpr,  # K when at most SHORT_MAX, else 0
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dX[m, c] = sum_j dY'[m, j] W[j, c], dY' masked beforehand (``conv2d_backward_prep``).
    SHORT <= BLOCK_K: the reduction is one K slice, one MMA and no loop."""
    # With their factors visible to Triton, a dY' of K = 280 channels (GoogLeNet's stacked 1x1s)
    # loads 8 channels per vector and the reduction tail's mask keeps them whole.
    if K_MULT < 16:  # 16: Triton marks it itself
        K = K // K_MULT * K_MULT
    if DY_MULT < 16:
        stride_dyn, stride_dyh, stride_dyw = as_multiples(stride_dyn, stride_dyh, stride_dyw, DY_MULT)
    pid_m, pid_n = tile_of(tl.program_id(0), tl.cdiv(C, BLOCK_N))
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_c = offs_c < C
    # Rows past M load pixel m % M and columns past C load column c % C (no mask for them in
    # the loop, only the reduction tail's); their results are never stored.
    pix_dy = _pixel_offsets(offs_m % M, HW, W, stride_dyn, stride_dyh, stride_dyw)[:, None]
    w_cols = (offs_c % C) * stride_wc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if SHORT > 0 and SHORT <= BLOCK_K:
        j = tl.arange(0, BLOCK_K)
        j_ok = j < SHORT
        a = tl.load(dy_ptr + pix_dy + (j * stride_dyc)[None, :], mask=j_ok[None, :], other=0.0)
        b = tl.load(w_ptr + (j * stride_wk)[:, None] + w_cols[None, :], mask=j_ok[:, None], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)
    else:
        # Whole K slices unmasked, then the tail's (K = 280, GoogLeNet's stacked dY': the mask
        # in every step cost 30 instructions a step, 1.38x the anchor's per HGMMA; static, sm_90).
        k_full = K // BLOCK_K * BLOCK_K
        for k0 in range(0, k_full, BLOCK_K):
            j = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(dy_ptr + pix_dy + (j * stride_dyc)[None, :])
            b = tl.load(w_ptr + (j * stride_wk)[:, None] + w_cols[None, :])
            acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)
        if k_full < K:
            j = k_full + tl.arange(0, BLOCK_K)
            j_ok = j < K
            a = tl.load(dy_ptr + pix_dy + (j * stride_dyc)[None, :], mask=j_ok[None, :], other=0.0)
            b = tl.load(w_ptr + (j * stride_wk)[:, None] + w_cols[None, :], mask=j_ok[:, None], other=0.0)
            acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)

    pix_dx = _pixel_offsets(offs_m, HW, W, stride_dxn, stride_dxh, stride_dxw)
    dx_ptrs = dx_ptr + pix_dx[:, None] + (offs_c * stride_dxc)[None, :]
    tl.store(dx_ptrs, to_dtype(acc, dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


def _prune_bwd_weight(configs, named_args, **kwargs):
    """``prune_by_dtype``, and the 128x128 tile on two warpgroups for 4-byte operands (TF32): on
    one, it spills."""
    # At most 64 output channels (NiN's 10-class layer): 64-row tiles (``narrow_tiles``).
    configs = narrow_tiles(prune_by_dtype("x_ptr")(configs, named_args, **kwargs), named_args.get("K", kwargs.get("K")), "BLOCK_M")
    if named_args.get("x_ptr", kwargs.get("x_ptr")).element_size() < 4 or INTERPRET:
        return configs
    return [
        triton.Config(cfg.kwargs, num_warps=8 if cfg.kwargs["BLOCK_M"] == 128 else cfg.num_warps, num_stages=cfg.num_stages)
        for cfg in configs
    ]


@triton.autotune(configs=conv1x1_configs("bwd_weight"), prune_configs_by={"early_config_prune": _prune_bwd_weight}, key=["M", "C", "K", "CHUNK"])
@triton.jit
def _conv1x1_bwd_weight_kernel(
    x_ptr, dy_ptr, dw_ptr, dw_part_ptr, count_ptr,
    M, C, K, CHUNK, SPLITS,
    stride_xc, stride_xw, stride_dyc, stride_dyw,
    stride_wk, stride_wc,
    # stride_xw and stride_dyw arrive divided by these constexpr factors: a channel slice of a
    # wider NHWC buffer (pixels of e.g. 152 channels) is then known 16-byte aligned.
    XW_MULT: tl.constexpr, DYW_MULT: tl.constexpr,
    K_MULT: tl.constexpr, C_MULT: tl.constexpr,  # known factors of K and C (e.g. 8 of K = 280)
    # 0, or 16 channels of dY' (of X) readable at every pixel (``conv.readable_channels``)
    K_READ: tl.constexpr, C_READ: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Partial dW[j, c] over the pixels of split ``program_id(2)``; tile rows j, columns c. dY'
    masked and db summed beforehand (``conv2d_backward_prep``): the loop holds the MMA only.
    X and dY' are pixel-linear (pixel m at m * stride_w, NHWC with whole images, channel slices
    allowed; the launcher copies any other layout so), so the loop advances pointers like a plain
    GEMM and decodes no pixel index."""
    stride_xw = stride_xw * XW_MULT
    stride_dyw = stride_dyw * DYW_MULT
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    offs_j = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = offs_c < C

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    start = split.to(tl.int64) * CHUNK
    end = tl.minimum(start + CHUNK, M)
    # Rows past K and columns past C load row j % K and column c % C (no mask but the pixel
    # count in the loop); their results are never stored.
    i = tl.arange(0, BLOCK_K)
    # K and C rebuilt with their factor visible, so the wrapped index stays 8-wide contiguous;
    # with K_READ (C_READ) rows j % 16 (columns c % 16): a pixel's 16 channels as whole vectors,
    # those past K (C) its padding (NiN's 10-class layer).
    rows = offs_j % K_READ if K_READ > 0 else offs_j % ((K // K_MULT) * K_MULT)
    cols = offs_c % C_READ if C_READ > 0 else offs_c % ((C // C_MULT) * C_MULT)
    dy_ptrs = dy_ptr + (rows * stride_dyc)[:, None] + ((start + i) * stride_dyw)[None, :]
    x_ptrs = x_ptr + (cols * stride_xc)[None, :] + ((start + i) * stride_xw)[:, None]
    left = (end - start).to(tl.int32)
    for _ in range(0, tl.cdiv(left, BLOCK_K)):
        a = tl.load(dy_ptrs, mask=(i < left)[None, :], other=0.0)
        xb = tl.load(x_ptrs, mask=(i < left)[:, None], other=0.0)
        acc = mma(a, xb, acc, INPUT_PRECISION, UPCAST)
        dy_ptrs += BLOCK_K * stride_dyw
        x_ptrs += BLOCK_K * stride_xw
        left -= BLOCK_K

    # Partials are laid out [split, k, c], contiguous; the last split's program sums them (fixed order).
    tile = pid_m + tl.num_programs(0) * pid_n
    store_split_tile(acc, dw_part_ptr, K * C, C, offs_c, dw_ptr, stride_wk, offs_c * stride_wc,
                     pid_m * BLOCK_M, K - pid_m * BLOCK_M, mask_c, count_ptr + tile, split, SPLITS, BLOCK_M, 32)


# ----------------------------------------------------------------------------------------------
# Launchers: check -> allocate -> grid -> launch.
# ----------------------------------------------------------------------------------------------


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    check_runnable("input", x)
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[2:] != (1, 1):
        raise ValueError("conv1x1 launchers take a 4-D input and a [K, C, 1, 1] weight")
    if x.dtype != weight.dtype:
        raise TypeError(f"input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[1]} channels, weight expects {weight.shape[1]}")


@on_tensor_device
def conv1x1_forward(x, weight, bias, activation, y0, y1=None):
    """Y = act(X W^T + b) for a [K, C, 1, 1] weight; output channels ``< y0.shape[1]`` go to
    ``y0``, the rest to ``y1`` (both any strided (N, *, H, W) views). Returns nothing."""
    _check(x, weight)
    n, c, h, w = x.shape
    k = weight.shape[0]
    split = y0.shape[1]
    two_way = y1 is not None
    if split + (y1.shape[1] if two_way else 0) != k:
        raise ValueError(f"outputs have {split} + {y1.shape[1] if two_way else 0} channels, weight has {k}")
    m = n * h * w
    if m == 0 or k == 0 or shape_only(x):
        return
    y1 = y1 if two_way else y0
    if c > 1 and x.stride(1) != 1:
        # Channels not contiguous (NCHW: GoogLeNet's batch-1 blocks under full backward hooks,
        # after torch's layout rule turns a pooled image NCHW): copied channels_last once, so
        # the A tile loads 16 bytes at a time (gathered 2 at a time it was 1.96-2.13x the
        # anchor's instructions per HGMMA with a wait to zero per step; static, sm_90).
        x = channels_last_copy(x)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_N"]),)  # tile_of

    launch(_conv1x1_fwd_kernel, grid,
        x, weight, bias if bias is not None else weight, y0, y1,
        m, h * w, w, c, k, split,
        *nchw_strides(x), weight.stride(0), weight.stride(1), bias.stride(0) if bias is not None else 0,
        *nchw_strides(y0), *nchw_strides(y1),
        HAS_BIAS=bias is not None, ACTIVATION=activation, TWO_WAY=two_way, SHORT=c if c <= SHORT_MAX else 0,
        **_conv._dot_args(x.dtype),
    )


@on_tensor_device
def conv1x1_backward_input(dy0, y0, weight, dx, activation, dy1=None, y1=None):
    """dX = dY' W written into ``dx``. dY comes from ``dy0`` (output channels below its width)
    and ``dy1`` (the rest); under ReLU it is masked once by ``conv2d_backward_prep`` with the
    saved outputs ``y0``/``y1``."""
    _check(dx, weight)
    n, c, h, w = dx.shape
    k = weight.shape[0]
    if dx.numel() == 0 or shape_only(dy0):
        return dx
    dy = _prepared(dy0, y0, activation, dy1, y1)

    def grid(meta):
        return (triton.cdiv(n * h * w, meta["BLOCK_M"]) * triton.cdiv(c, meta["BLOCK_N"]),)  # tile_of

    launch(_conv1x1_bwd_input_kernel, grid,
        dy, weight, dx,
        n * h * w, h * w, w, c, k,
        *nchw_strides(dy), weight.stride(0), weight.stride(1), *nchw_strides(dx),
        K_MULT=vector_factor(k), DY_MULT=vector_factor(*pixel_strides(dy)), SHORT=k if k <= SHORT_MAX else 0,
        **_conv._dot_args(dx.dtype),
    )
    return dx


def _prepared(dy0, y0, activation, dy1, y1):
    """One dY' tensor for the GEMMs: masked under ReLU, and the two-way halves joined."""
    if activation == "relu" or dy1 is not None:
        masked, _ = _conv.conv2d_backward_prep(
            dy0, y0, activation if activation == "relu" else "copy", False, dy1, y1
        )
        return masked
    return dy0


@on_tensor_device
def conv1x1_backward_weight(x, dy0, y0, weight_like, activation, need_bias, dy1=None, y1=None):
    """(dW, db) with dW shaped and strided like ``weight_like`` ([K, C, 1, 1]). dY is masked
    (under ReLU) and db summed by ``conv2d_backward_prep``; a caller that already did so passes
    activation "none" and need_bias False."""
    _check(x, weight_like)
    n, c, h, w = x.shape
    k = weight_like.shape[0]
    m = n * h * w
    dw = torch.empty_like(weight_like)
    db = None
    if activation == "relu" or need_bias or dy1 is not None:
        mode = activation if activation == "relu" else ("copy" if dy1 is not None else "none")
        masked, db = _conv.conv2d_backward_prep(dy0, y0, mode, need_bias, dy1, y1)
        dy = dy0 if masked is None else masked
    else:
        dy = dy0
    if shape_only(x):
        return dw, db
    if dw.numel() == 0 or m == 0:
        return dw.zero_(), db
    chunk = _conv._dw_chunk(m, triton.cdiv(k, 128) * triton.cdiv(c, 128))
    splits = triton.cdiv(m, chunk)
    dw_part = _conv._split_partials(splits, k * c, dw)
    counters = _conv.split_counters(x.device, triton.cdiv(k, 64) * triton.cdiv(c, 64))

    # An operand whose pixels are not linear (NCHW with several channels: the batch-1 inputs of
    # GoogLeNet's 1x1 convs) is copied channels_last once, so the loop advances pointers like a
    # plain GEMM (16-byte loads) instead of decoding every pixel per step.
    # (A fresh channels_last tensor: ``contiguous`` would return an (N, C, 1, 1) NCHW tensor as it
    # is, its pixel stride 1 instead of C.)
    if c < 16 and c * x.element_size() % 16 and not _conv.readable_channels(x):
        # Fewer than 16 channels, a pixel not whole 16-byte vectors (NiN's 10-class layer: 20
        # bytes, 4-byte loads, 2.05x the anchor's instructions per HGMMA at batch 1, static,
        # sm_90): copied once into pixels of 16 channels (the prep pass's "copy", one launch).
        x, _ = _conv.conv2d_backward_prep(x, None, "copy", False)
    elif not _conv._pixel_linear(x):
        x = channels_last_copy(x)
    if not _conv._pixel_linear(dy):
        dy = channels_last_copy(dy)
    xw_mult = vector_factor(x.stride(3))
    dyw_mult = vector_factor(dy.stride(3))

    def grid(meta):
        return (triton.cdiv(k, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_N"]), splits)

    launch(_conv1x1_bwd_weight_kernel, grid,
        x, dy, dw, dw_part, counters,
        m, c, k, chunk, splits,
        x.stride(1), x.stride(3) // xw_mult, dy.stride(1), dy.stride(3) // dyw_mult,
        dw.stride(0), dw.stride(1),
        XW_MULT=xw_mult, DYW_MULT=dyw_mult, K_MULT=vector_factor(k), C_MULT=vector_factor(c),
        K_READ=_conv.readable_channels(dy), C_READ=_conv.readable_channels(x),
        **_conv._dot_args(x.dtype),
    )
    return dw, db
