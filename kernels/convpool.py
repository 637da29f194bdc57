"""Convolution + bias + ReLU + max pooling in one kernel: only the pooled output and the int8
within-window argmax are written; the full-resolution activation never reaches memory.

Forward:   Z[n,k,p,q]  = relu(b[k] + conv(X, W)[n,k,p,q])          (the conv layer's output)
           Y[n,k,i,j]  = max over pool taps (u, v) inside Z of Z[n,k,i*ps-pp+u*pd, j*ps-pp+v*pd]
           A[n,k,i,j]  = u*PS + v of the tap taken
           The GEMM's M rows are pooled pixels; for each pool tap (a loop of constant trip count,
           not unrolled: one copy of the GEMM loop in the code) the program runs the implicit-GEMM
           main loop of ``kernels/conv.py`` (its techniques, re-implemented here: no row masks,
           in-image tests as bits, constant tap trip counts) for the conv pixels under that tap,
           adds the bias on the fp32 accumulator, rounds to the output dtype (so the comparison is
           the unfused path's, on stored values) and merges into a running max: a tap is taken
           when ``v > best`` or ``v`` is NaN, so the first of tied maxima wins and the last NaN
           (torch's scan). A tap outside the conv output repeats the nearest valid one, which
           changes neither. ReLU is monotone, so it is applied once after the loop, a max <= 0
           becoming 0 at the window's first valid tap (torch's pick among ReLU's zeros): the
           result is torch's ``max_pool2d(relu(conv2d(...)))`` with its indices.
           Non-overlapping windows of 2, 4, 8 or 16 taps (VGG's 2x2/2, ``tap_rows``) take no tap
           loop: the tile's rows are (tap, pooled pixel) pairs, BLOCK_M / taps pooled pixels,
           so one GEMM over the whole reduction computes every tap and the epilogue takes each
           pixel's max (pairwise, in torch's scan order: ``_max_over_taps``, ``_scan_max``). Every conv pixel is
           computed once: the unfused FLOPs, a quarter of the bytes, and no wgmma wait per tap
           (static, sm_90: VGG's stem 1.83 -> 0.67x the anchor's instructions per HGMMA). Overlapping
           windows (3x3/2): a conv pixel under several windows is recomputed for each (9 taps per
           pooled pixel against ~4 conv pixels: 2.25x the conv FLOPs). ``one_kernel_wins`` decides
           per layer whether that beats writing the activation once as a temporary for the
           max-pool kernel (the host side's two-kernel path), by the H100 roofline.
First layers (1- to 7-channel, one group, dilation 1 along W) take the conv's span form
(``kernels/conv.py``: ``span_tensor``, ``span_weights``, ``span_gemm``): a conv pixel's window is
R contiguous 16-byte aligned runs of a zero-padded span tensor, read as vectors with no window
test. Under overlapping 3x3 windows (AlexNet's and GoogLeNet's stems, ``NINE_TAPS``) there is no
tap loop either: one loop over the reduction feeds nine accumulators, one a tap (a step loads the
filter tile once and nine A tiles, each a scalar shift of the span rows), and the epilogue takes
the max in the tap loop's scan order; no wgmma wait inside the loop.
Backward:  (host side, ``cnnkernels/convpool.py``, from existing kernels) the pooled dY is masked
           where Y <= 0 (the pooled value is the conv output at the argmax, so this is the conv's
           ReLU mask) and db summed in the same pass; the max-pool backward scatters it to the
           argmax (gather form, no atomics), which is the conv's masked dY' for its dX and dW.

Max pool on load (``_max_pool_conv1x1_fwd_kernel``): a stride-1 max pool that keeps the size
(Inception's 3x3/1, padding 1) feeding a 1x1 convolution, in one persistent kernel: a program
(at most one an SM) pools a tile of pixels over all channels (NaN propagates) into its own
staging rows, then runs the 1x1 GEMM over them, and moves on to its next tile, rewriting the
same rows. The pooled tensor is never written out: the staging rows (programs x 128 x C) are
meant to stay in L2, so per block about 2*|X| fewer HBM bytes than a pool kernel and a GEMM, the
pool's extra loads hitting L1/L2 (neighbouring pixels share their windows). Pixels are pooled in
pairs of vertically adjacent ones from shared row maxima (4 rows x 3 loads per pair for 3x3, not
2 x 9), and taps outside the image load a clamped in-window pixel instead of being masked. The
GEMM's loop loads both operands (pipelined, no wgmma wait); pooling inside it made A a computed
operand, which Triton's pipeliner cannot multi-buffer (a wait to zero per step). Its backward (host side,
``cnnkernels/inception.py``) recomputes the pool's argmax from the saved X, so nothing pooled is
saved either.

Limits: those of ``kernels/conv.py`` (strided tensors, 32-bit offsets within one image, batch
pixel count below 2**31) and ``kernels/pool.py`` (pool padding at most half the window, so every
window holds a conv pixel). Geometry of both the conv and the pool is constexpr.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    acc_dtype,
    channels_last_copy,
    check_runnable,
    dot_precision,
    dot_upcast,
    fit_to_dtype,
    launch,
    mma,
    nchw_strides,
    on_tensor_device,
    pick_configs,
    shape_only,
    tile_of,
    tl_dtype,
    to_dtype,
    vector_factor,
)
from .conv import FLAT_BELOW, _sm_count, conv_output_size, fwd_span_width, span_gemm, span_tensor, span_weights
from .conv import prune_fwd as conv_forward_prune
from .pool import argmax_dtype, pool_output_size


def convpool_configs(flat: bool) -> list[triton.Config]:
    """GEMM tiles of the tap loop (rows are pooled pixels); the running max and argmax add two
    tiles of registers beside the accumulator, so the GPU tiles are the conv forward's smaller ones.
    Flattened (C < 32) and span form: BLOCK_K = 64 holds a 7x7 filter of one channel in one
    step; eight warps, the two warpgroups splitting N, so each thread gathers and merges half the
    tile (static, sm_90, bf16, GoogLeNet's stem, flattened: four warps 4.8x the anchor's
    instructions per HGMMA, eight 2.6x; 64x32 and 64x128 tiles spill; span form: eight warps
    1.9x, the four-warp tiles 3.1x)."""

    def cfg(bm, bn, bk, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)

    if flat:
        gpu = [cfg(64, 64, 64, 8, 2)]
    else:
        # 32 accumulator registers a thread, as many for the running max and for the argmax:
        # larger tiles spill (static, sm_90: 128x128 and 64x128 spill 400-800 registers).
        # Static, sm_90, bf16, VGG's second layer: both at 0.94-0.96x the anchor per HGMMA.
        gpu = [cfg(64, 64, 64, 4, 3), cfg(128, 64, 64, 8, 3)]
    return pick_configs(gpu=gpu, interpreter=[cfg(128, 128, 64, 4, 1)])


def nine_tap_configs() -> list[triton.Config]:
    """Tiles of the span form with a 3x3 window's nine accumulators (``NINE_TAPS``): nine 64x32
    fp32 tiles are 144 registers a thread on one warpgroup (64x64 ones spill, static, sm_90);
    nine A tiles a step, so 64-wide K slices on two stages, or 32-wide on three, fit the 227 KB
    of shared memory."""

    def cfg(bm, bn, bk, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)

    return pick_configs(gpu=[cfg(64, 32, 64, 4, 2), cfg(64, 32, 32, 4, 3)], interpreter=[cfg(128, 128, 64, 4, 1)])


def _prune(configs, named_args, **kwargs):
    """The tap loop's configs per form; with ``TAP_ROWS`` (the max in the epilogue, no running
    max across a loop) the conv forward's own, per form (``kernels/conv.py``: ``prune_fwd``);
    with ``NINE_TAPS``, ``nine_tap_configs``."""
    def arg(name):
        return kwargs.get(name, named_args.get(name))

    if arg("TAP_ROWS"):
        return conv_forward_prune(configs, named_args, **kwargs)
    first = named_args[next(iter(named_args))]
    if arg("NINE_TAPS"):
        return fit_to_dtype(nine_tap_configs(), first.element_size())
    return fit_to_dtype(convpool_configs(bool(arg("FLAT") or arg("SPAN"))), first.element_size())


def _all_configs() -> list[triton.Config]:
    if INTERPRET:
        return convpool_configs(False)
    return convpool_configs(False) + convpool_configs(True) + nine_tap_configs()


_KEY = ["N", "H", "W", "C", "K", "P", "Q", "PP", "QQ", "R", "S", "STRIDE_H", "STRIDE_W", "POOL_R", "POOL_S", "FLAT",
        "C_ALIGN", "SPAN", "TAP_ROWS", "NINE_TAPS"]


@triton.jit
def _window_bits(start, extent, SPAN: tl.constexpr):
    """Per row, bit j set where start + j lies in [0, extent), for j < SPAN (at most 31)."""
    lo = tl.minimum(tl.maximum(-start, 0), SPAN)
    hi = tl.minimum(tl.maximum(extent - start, 0), SPAN)
    return ((1 << hi) - 1) & ~((1 << lo) - 1)


@triton.jit
def _flat_lanes(t: tl.constexpr, C, stride_xc, stride_xh, stride_xw, stride_wc, stride_wr, stride_ws,
                S: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr, RSC: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """Step t's lanes of the flattened (r, s, c) reduction: X offset past the tap-(0, 0) row
    address, the pair of window bits a lane needs (bit 15 past RSC: never set), W offset, r, s
    and whether the lane is inside RSC (a lane past it reads lane 0's offsets)."""
    kk = t * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = kk < RSC
    kk = tl.where(k_ok, kk, 0)
    c = kk % C
    r = (kk // C) // S
    s = (kk // C) % S
    off = r * (DIL_H * stride_xh) + s * (DIL_W * stride_xw) + c * stride_xc
    bits = tl.where(k_ok, (1 << (r * DIL_H)) | (1 << (16 + s * DIL_W)), 1 << 15)
    w_off = c * stride_wc + r * stride_wr + s * stride_ws
    return off, bits, w_off, r, s, k_ok


@triton.jit
def _conv_tile(
    x_rows, win, ih0, iw0, w_base,
    H, W, C, stride_xc, stride_xh, stride_xw, stride_wc, stride_wr, stride_ws,
    R: tl.constexpr, S: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    FLAT: tl.constexpr, RSC: tl.constexpr, BITS: tl.constexpr, EVEN_C: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The conv forward's main loop for one tile of rows (conv pixels, each inside the conv
    output): sum over (r, s, c) of X at the row's window times W. ``x_rows``: the rows' addresses
    at tap (0, 0), which may lie outside the image (input row ih0, column iw0). With BITS,
    ``win`` holds per row bit r * DIL_H where filter row r reads inside the image and bit
    16 + s * DIL_W where filter column s does, so a lane's or a tap's test is one AND and one
    compare; without, the coordinates are compared.
    FLAT (C < 32; RSC = R * S * C, a constexpr): steps of BLOCK_K lanes of the flattened (r, s, c)
    index, unrolled; each lane's offsets and bits depend on nothing else (``_flat_lanes``), so
    they leave the pool's tap loop. Tap-wise: one tap and BLOCK_K channels a step, the tap (r, s)
    advanced without a division."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if FLAT:
        for t in tl.static_range((RSC + BLOCK_K - 1) // BLOCK_K):
            off, bits, w_off, r, s, k_ok = _flat_lanes(t, C, stride_xc, stride_xh, stride_xw, stride_wc, stride_wr,
                                                       stride_ws, S, DIL_H, DIL_W, RSC, BLOCK_K)
            if BITS:
                ok = (win[:, None] & bits[None, :]) == bits[None, :]
            else:
                ih = ih0[:, None] + (r * DIL_H)[None, :]
                iw = iw0[:, None] + (s * DIL_W)[None, :]
                ok = k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_rows[:, None] + off[None, :], mask=ok, other=0.0)
            b = tl.load(w_base[None, :] + w_off[:, None], mask=k_ok[:, None], other=0.0)
            acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)
    else:
        c0 = tl.full((), 0, tl.int32)
        tap_r = tl.full((), 0, tl.int32)
        tap_s = tl.full((), 0, tl.int32)
        for _t in range(0, R * S * tl.cdiv(C, BLOCK_K)):
            c = c0 + tl.arange(0, BLOCK_K)
            if BITS:
                tap_bits = (1 << (tap_r * DIL_H)) | (1 << (16 + tap_s * DIL_W))
                row_ok = (win & tap_bits) == tap_bits
            else:
                ih = ih0 + tap_r * DIL_H
                iw = iw0 + tap_s * DIL_W
                row_ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            tap_off = tap_r * (DIL_H * stride_xh) + tap_s * (DIL_W * stride_xw)
            w_off = c * stride_wc + tap_r * stride_wr + tap_s * stride_ws
            c0 += BLOCK_K
            next_tap = c0 >= C
            c0 = tl.where(next_tap, 0, c0)
            tap_s = tl.where(next_tap, tap_s + 1, tap_s)
            next_row = tap_s == S
            tap_s = tl.where(next_row, 0, tap_s)
            tap_r = tl.where(next_row, tap_r + 1, tap_r)
            a_ptrs = (x_rows + tap_off)[:, None] + (c * stride_xc)[None, :]
            if EVEN_C:
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
                b = tl.load(w_base[None, :] + w_off[:, None])
            else:
                k_ok = c < C
                a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(w_base[None, :] + w_off[:, None], mask=k_ok[:, None], other=0.0)
            acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)
    return acc


@triton.autotune(configs=_all_configs(), prune_configs_by={"early_config_prune": _prune}, key=_KEY)
@triton.jit
def _conv_relu_max_pool_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, arg_ptr,
    N, H, W, C, P, Q, K, PP, QQ,  # C and K per group; (P, Q) the conv output, (PP, QQ) the pooled
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_b,
    stride_yn, stride_yc, stride_yh, stride_yw,  # shared by y and arg
    # Geometry is constexpr: the window arithmetic folds and the tap loops have constant trip counts.
    R: tl.constexpr, S: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    POOL_R: tl.constexpr, POOL_S: tl.constexpr,
    POOL_STRIDE_H: tl.constexpr, POOL_STRIDE_W: tl.constexpr,
    POOL_PAD_H: tl.constexpr, POOL_PAD_W: tl.constexpr,
    POOL_DIL_H: tl.constexpr, POOL_DIL_W: tl.constexpr,
    FLAT: tl.constexpr, HAS_BIAS: tl.constexpr,
    RSC: tl.constexpr,  # R * S * C when FLAT (the flattened reduction, unrolled), else 0
    C_ALIGN: tl.constexpr,  # a power of two dividing C (at most 64): whole channel blocks need no mask
    # The conv's span form (first layers, ``kernels/conv.py``'s ``span_gemm``): x_ptr is the span
    # tensor (H its rows), w_ptr the filter rows' spans, SPAN_T wide, SPAN_RT_PAD per filter.
    SPAN: tl.constexpr, SPAN_T: tl.constexpr, SPAN_RT_PAD: tl.constexpr,
    # Windows that do not overlap, of a power-of-two tap count (``tap_rows``): that count, and the
    # tile's rows are (tap, pooled pixel) pairs, the max taken in the epilogue; else 0, a loop
    # over the taps keeping a running max.
    TAP_ROWS: tl.constexpr,
    # The span form with a 3x3 window that overlaps its neighbours (AlexNet's and GoogLeNet's
    # stems, 3x3/2): one GEMM into nine accumulators, one a tap, the max in the epilogue.
    NINE_TAPS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """A pool tap outside the conv output runs the conv pixel of the nearest tap inside it
    (its (u, v) clamped to the row's valid range) and is recorded as that tap: a duplicate of a
    tap the scan visits anyway, first visits in row-major order, so ``v > best`` (first maximum
    wins) and ``v`` NaN (last NaN wins) end where torch's scan over the valid taps ends. No row
    is masked (rows past M run pixel m % M and are never stored). ReLU leaves the tap loop: the
    running max is over the rounded ``b + conv`` (ReLU and rounding are monotone, so the max
    commutes with them), and a row whose max is <= 0 takes 0 at its first valid tap, torch's
    choice among the zeros ReLU leaves."""
    pid_m, pid_n = tile_of(tl.program_id(0), tl.cdiv(K, BLOCK_N))
    g = tl.program_id(2).to(tl.int64)
    MP = N * PP * QQ
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < K
    if SPAN:
        w_base = w_ptr + (offs_n % K) * SPAN_RT_PAD
    else:
        w_base = w_ptr + (g * K + offs_n % K) * stride_wk
    bias = offs_n  # read only with HAS_BIAS
    if HAS_BIAS:
        bias = tl.load(b_ptr + (g * K + offs_n) * stride_b, mask=mask_n, other=0.0).to(ACC_DTYPE)
    EVEN_C: tl.constexpr = C_ALIGN % BLOCK_K == 0
    # In-image bits over the union of a window's receptive fields: row bit j where input row
    # p0 * STRIDE_H - PAD_H + j is inside the image (the bits a tap needs are these shifted by
    # u * POOL_DIL_H * STRIDE_H), column bits likewise.
    SPAN_H: tl.constexpr = (POOL_R - 1) * POOL_DIL_H * STRIDE_H + (R - 1) * DIL_H + 1
    SPAN_W: tl.constexpr = (POOL_S - 1) * POOL_DIL_W * STRIDE_W + (S - 1) * DIL_W + 1
    BITS: tl.constexpr = SPAN_H <= 31 and SPAN_W <= 31 and (R - 1) * DIL_H <= 14 and (S - 1) * DIL_W <= 14

    if TAP_ROWS:
        # Row i of the tile is tap i // PM of pooled pixel i % PM: one GEMM over the reduction,
        # then the max over each pixel's TAP_ROWS rows in the epilogue.
        PM: tl.constexpr = BLOCK_M // TAP_ROWS
        rows = tl.arange(0, BLOCK_M)
        offs_m = pid_m.to(tl.int64) * PM + rows % PM
        n_idx, pi, pj, p0, q0, u_lo, v_lo, u_hi, v_hi = _window(offs_m % MP, P, Q, PP, QQ, POOL_R, POOL_S,
                                                                POOL_STRIDE_H, POOL_STRIDE_W, POOL_PAD_H,
                                                                POOL_PAD_W, POOL_DIL_H, POOL_DIL_W)
        rows_in, cols_in = _in_image(p0, q0, H, W, STRIDE_H, STRIDE_W, PAD_H, PAD_W, SPAN_H, SPAN_W, SPAN)
        tap = rows // PM
        u = tl.minimum(tl.maximum(tap // POOL_S, u_lo), u_hi)
        v = tl.minimum(tl.maximum(tap % POOL_S, v_lo), v_hi)
        val = _tap_values(x_ptr, w_base, bias, y_ptr, g, n_idx, p0, q0, u, v, rows_in, cols_in, H, W, C, Q, stride_xn, stride_xc,
                          stride_xh, stride_xw, stride_wc, stride_wr, stride_ws, R, S, STRIDE_H, STRIDE_W, PAD_H,
                          PAD_W, DIL_H, DIL_W, POOL_R, POOL_S, POOL_DIL_H, POOL_DIL_W, HAS_BIAS, FLAT, RSC, BITS,
                          EVEN_C, SPAN, SPAN_T, False, INPUT_PRECISION, UPCAST, ACC_DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
        taps = tl.broadcast_to((u * POOL_S + v)[:, None], (BLOCK_M, BLOCK_N))
        best, arg = _max_over_taps(val, taps, TAP_ROWS, PM, BLOCK_N)
        offs_m = pid_m.to(tl.int64) * PM + tl.arange(0, PM)  # the pooled pixels, for the epilogue
        n_idx, pi, pj, _, _, u_lo, v_lo, _, _ = _window(offs_m % MP, P, Q, PP, QQ, POOL_R, POOL_S,
                                                        POOL_STRIDE_H, POOL_STRIDE_W, POOL_PAD_H, POOL_PAD_W,
                                                        POOL_DIL_H, POOL_DIL_W)
    elif NINE_TAPS:
        tl.static_assert(SPAN and POOL_R == 3 and POOL_S == 3)
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        n_idx, pi, pj, p0, q0, u_lo, v_lo, u_hi, v_hi = _window(offs_m % MP, P, Q, PP, QQ, POOL_R, POOL_S,
                                                                POOL_STRIDE_H, POOL_STRIDE_W, POOL_PAD_H,
                                                                POOL_PAD_W, POOL_DIL_H, POOL_DIL_W)
        best, arg = _nine_taps(x_ptr, w_base, bias, y_ptr, n_idx, p0, q0, u_lo, v_lo, u_hi, v_hi, H, W, Q,
                               R, STRIDE_H, DIL_H, POOL_DIL_H, POOL_DIL_W, HAS_BIAS, SPAN_T,
                               INPUT_PRECISION, UPCAST, ACC_DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        n_idx, pi, pj, p0, q0, u_lo, v_lo, u_hi, v_hi = _window(offs_m % MP, P, Q, PP, QQ, POOL_R, POOL_S,
                                                                POOL_STRIDE_H, POOL_STRIDE_W, POOL_PAD_H,
                                                                POOL_PAD_W, POOL_DIL_H, POOL_DIL_W)
        rows_in, cols_in = _in_image(p0, q0, H, W, STRIDE_H, STRIDE_W, PAD_H, PAD_W, SPAN_H, SPAN_W, SPAN)
        best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), dtype=ACC_DTYPE)
        arg = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        # A runtime loop over the window's taps (row-major, as the max-pool kernel scans them): one
        # copy of the GEMM main loop in the code, not POOL_R*POOL_S unrolled ones (registers).
        for tap in range(0, POOL_R * POOL_S):
            u = tl.minimum(tl.maximum(tap // POOL_S, u_lo), u_hi)
            v = tl.minimum(tl.maximum(tap % POOL_S, v_lo), v_hi)
            val = _tap_values(x_ptr, w_base, bias, y_ptr, g, n_idx, p0, q0, u, v, rows_in, cols_in, H, W, C, Q, stride_xn, stride_xc,
                              stride_xh, stride_xw, stride_wc, stride_wr, stride_ws, R, S, STRIDE_H, STRIDE_W, PAD_H,
                              PAD_W, DIL_H, DIL_W, POOL_R, POOL_S, POOL_DIL_H, POOL_DIL_W, HAS_BIAS, FLAT, RSC,
                              BITS, EVEN_C, SPAN, SPAN_T, True, INPUT_PRECISION, UPCAST, ACC_DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
            take = (val > best) | (val != val)
            best = tl.where(take, val, best)
            arg = tl.where(take, (u * POOL_S + v)[:, None], arg)

    # ReLU: a max <= 0 (not NaN) becomes 0 at the first valid tap.
    zero = best <= 0.0
    best = tl.where(zero, 0.0, best)
    arg = tl.where(zero, (u_lo * POOL_S + v_lo)[:, None], arg)
    y_off = (n_idx * stride_yn + pi * stride_yh + pj * stride_yw)[:, None] + ((g * K + offs_n) * stride_yc)[None, :]
    mask = (offs_m < MP)[:, None] & mask_n[None, :]
    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(arg_ptr + y_off, arg.to(arg_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tap_mma(acc, a_ptrs, ok, lane_ok, b, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc += A @ b, A loaded at ``a_ptrs`` on the rows where the tap is ``ok`` (and ``lane_ok``)."""
    a = tl.load(a_ptrs, mask=ok[:, None] & lane_ok[None, :], other=0.0)
    return mma(a, b, acc, INPUT_PRECISION, UPCAST)


@triton.jit
def _nine_step(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, acc8, a_ptrs, du, dv,
               ok0, ok1, ok2, ok3, ok4, ok5, ok6, ok7, ok8, lane_ok, b,
               INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One step of ``_nine_taps``: tap (u, v) reads A at ``a_ptrs`` + u*du + v*dv."""
    acc0 = _tap_mma(acc0, a_ptrs, ok0, lane_ok, b, INPUT_PRECISION, UPCAST)
    acc1 = _tap_mma(acc1, a_ptrs + dv, ok1, lane_ok, b, INPUT_PRECISION, UPCAST)
    acc2 = _tap_mma(acc2, a_ptrs + 2 * dv, ok2, lane_ok, b, INPUT_PRECISION, UPCAST)
    acc3 = _tap_mma(acc3, a_ptrs + du, ok3, lane_ok, b, INPUT_PRECISION, UPCAST)
    acc4 = _tap_mma(acc4, a_ptrs + du + dv, ok4, lane_ok, b, INPUT_PRECISION, UPCAST)
    acc5 = _tap_mma(acc5, a_ptrs + du + 2 * dv, ok5, lane_ok, b, INPUT_PRECISION, UPCAST)
    acc6 = _tap_mma(acc6, a_ptrs + 2 * du, ok6, lane_ok, b, INPUT_PRECISION, UPCAST)
    acc7 = _tap_mma(acc7, a_ptrs + 2 * du + dv, ok7, lane_ok, b, INPUT_PRECISION, UPCAST)
    acc8 = _tap_mma(acc8, a_ptrs + 2 * du + 2 * dv, ok8, lane_ok, b, INPUT_PRECISION, UPCAST)
    return acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, acc8


@triton.jit
def _tap_merge(best, arg, acc, ok, tap: tl.constexpr, bias, y_ptr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """The running max and argmax after tap ``tap`` (row-major), whose value is b + acc rounded to
    the output dtype (the unfused path's values); rows where the tap lies outside the conv
    output skip it."""
    if HAS_BIAS:
        acc += bias[None, :]
    val = to_dtype(acc, y_ptr.dtype.element_ty).to(ACC_DTYPE)
    take = ok[:, None] & ((val > best) | (val != val))
    return tl.where(take, val, best), tl.where(take, tap, arg)


@triton.jit
def _nine_taps(xs_ptr, w_rows, bias, y_ptr, n_idx, p0, q0, u_lo, v_lo, u_hi, v_hi, HS, RT, Q,
               R: tl.constexpr, STRIDE_H: tl.constexpr, DIL_H: tl.constexpr,
               POOL_DIL_H: tl.constexpr, POOL_DIL_W: tl.constexpr, HAS_BIAS: tl.constexpr, T: tl.constexpr,
               INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(max, tap) over a 3x3 window of the span form's conv values: one loop over the reduction
    feeds nine accumulators, tap (u, v) reading conv pixel (p0 + u*dh, q0 + v*dw), a scalar shift
    of the span rows; each step loads the filter tile once and one A tile a tap, so no wgmma
    waits inside the loop (a GEMM a tap merged into a running max waits for each: 3 waits to
    zero per step on AlexNet's stem, static, sm_90). Rows whose tap lies outside the conv output
    load nothing and skip it; the scan order is the tap loop's."""
    row_step = DIL_H * Q * T
    x0 = xs_ptr + ((n_idx * HS + p0 * STRIDE_H) * Q + q0) * T  # tap (0, 0); may lie outside
    du = POOL_DIL_H * STRIDE_H * Q * T  # one tap down: POOL_DIL_H conv rows
    dv = POOL_DIL_W * T  # one tap right: POOL_DIL_W conv columns
    # Per row, whether tap (u, v) lies inside the conv output: u in [u_lo, u_hi], v in [v_lo, v_hi].
    u0, u1, u2 = u_lo <= 0, (u_lo <= 1) & (u_hi >= 1), u_hi >= 2
    v0, v1, v2 = v_lo <= 0, (v_lo <= 1) & (v_hi >= 1), v_hi >= 2
    ok0, ok1, ok2, ok3, ok4, ok5, ok6, ok7, ok8 = u0 & v0, u0 & v1, u0 & v2, u1 & v0, u1 & v1, u1 & v2, u2 & v0, u2 & v1, u2 & v2
    kk = tl.arange(0, BLOCK_K)
    # Runs of 8 lanes contiguous and 8-aligned (T and row_step are multiples of 8), as span_gemm.
    lanes = tl.max_contiguous(tl.multiple_of((kk // T) * row_step + kk % T, 8), 8)
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc4 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc5 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc6 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc7 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc8 = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # Whole steps, then the last partial one under a constexpr lane mask (``span_gemm``).
    TAIL: tl.constexpr = (R * T) % BLOCK_K
    full = RT - TAIL
    for k0 in range(0, full, BLOCK_K):
        step = tl.multiple_of((k0 // T) * row_step + k0 % T, 8)
        b = tl.load(w_rows[None, :] + (k0 + kk)[:, None])
        acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, acc8 = _nine_step(
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, acc8, x0[:, None] + (step + lanes)[None, :], du, dv,
            ok0, ok1, ok2, ok3, ok4, ok5, ok6, ok7, ok8, kk < BLOCK_K, b, INPUT_PRECISION, UPCAST)
    if TAIL > 0:
        b = tl.load(w_rows[None, :] + (full + kk)[:, None])
        acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, acc8 = _nine_step(
            acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, acc8, x0[:, None] + ((full // T) * row_step + lanes)[None, :],
            du, dv, ok0, ok1, ok2, ok3, ok4, ok5, ok6, ok7, ok8, kk < TAIL, b, INPUT_PRECISION, UPCAST)
    best = tl.full((BLOCK_M, BLOCK_N), float("-inf"), dtype=ACC_DTYPE)
    arg = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    best, arg = _tap_merge(best, arg, acc0, ok0, 0, bias, y_ptr, HAS_BIAS, ACC_DTYPE)
    best, arg = _tap_merge(best, arg, acc1, ok1, 1, bias, y_ptr, HAS_BIAS, ACC_DTYPE)
    best, arg = _tap_merge(best, arg, acc2, ok2, 2, bias, y_ptr, HAS_BIAS, ACC_DTYPE)
    best, arg = _tap_merge(best, arg, acc3, ok3, 3, bias, y_ptr, HAS_BIAS, ACC_DTYPE)
    best, arg = _tap_merge(best, arg, acc4, ok4, 4, bias, y_ptr, HAS_BIAS, ACC_DTYPE)
    best, arg = _tap_merge(best, arg, acc5, ok5, 5, bias, y_ptr, HAS_BIAS, ACC_DTYPE)
    best, arg = _tap_merge(best, arg, acc6, ok6, 6, bias, y_ptr, HAS_BIAS, ACC_DTYPE)
    best, arg = _tap_merge(best, arg, acc7, ok7, 7, bias, y_ptr, HAS_BIAS, ACC_DTYPE)
    best, arg = _tap_merge(best, arg, acc8, ok8, 8, bias, y_ptr, HAS_BIAS, ACC_DTYPE)
    return best, arg


@triton.jit
def _max_over_taps(val, taps, TAP_ROWS: tl.constexpr, PM: tl.constexpr, BLOCK_N: tl.constexpr):
    """(max, tap) over the TAP_ROWS row blocks of PM rows of ``val`` (row i: tap i // PM of
    pixel i % PM), as [PM, BLOCK_N] tiles: the taps moved to the last axis and halved pairwise,
    elementwise (``_scan_max`` is a total order, so any pairing gives torch's pick; a
    ``tl.reduce`` with this combine runs element by element under the interpreter)."""
    v = tl.permute(tl.reshape(val, (TAP_ROWS, PM, BLOCK_N)), (1, 2, 0))
    t = tl.permute(tl.reshape(taps, (TAP_ROWS, PM, BLOCK_N)), (1, 2, 0))
    for _ in tl.static_range(TAP_ROWS.bit_length() - 1):
        v0, v1 = tl.split(tl.reshape(v, (PM, BLOCK_N, v.shape[2] // 2, 2)))
        t0, t1 = tl.split(tl.reshape(t, (PM, BLOCK_N, t.shape[2] // 2, 2)))
        v, t = _scan_max(v0, t0, v1, t1)
    return tl.reshape(v, (PM, BLOCK_N)), tl.reshape(t, (PM, BLOCK_N))


@triton.jit
def _scan_max(a, ia, b, ib):
    """Combines (value, tap) pairs as torch's max-pool scan over the taps in row-major order
    picks: NaN above every number and the later of two NaNs (the scan's last NaN), otherwise the
    larger value and, of equal ones, the earlier tap (its first maximum). A total order, so the
    reduction's grouping does not change the pick."""
    a_nan = a != a
    b_nan = b != b
    take_b = tl.where(a_nan, b_nan & (ib > ia), b_nan | (b > a) | ((b == a) & (ib < ia)))
    return tl.where(take_b, b, a), tl.where(take_b, ib, ia)


@triton.jit
def _window(m, P, Q, PP, QQ, POOL_R: tl.constexpr, POOL_S: tl.constexpr,
            POOL_STRIDE_H: tl.constexpr, POOL_STRIDE_W: tl.constexpr, POOL_PAD_H: tl.constexpr,
            POOL_PAD_W: tl.constexpr, POOL_DIL_H: tl.constexpr, POOL_DIL_W: tl.constexpr):
    """Pooled pixels ``m``: image, row, column, the window's first conv pixel (p0, q0) and the
    range [u_lo, u_hi] x [v_lo, v_hi] of its taps inside the conv output (conv pixels
    p0 + u * POOL_DIL_H, q0 + v * POOL_DIL_W)."""
    n_idx = m // (PP * QQ)
    ij = (m % (PP * QQ)).to(tl.int32)
    pi = ij // QQ
    pj = ij % QQ
    p0 = pi * POOL_STRIDE_H - POOL_PAD_H
    q0 = pj * POOL_STRIDE_W - POOL_PAD_W
    u_lo = tl.maximum(-p0 + (POOL_DIL_H - 1), 0) // POOL_DIL_H
    v_lo = tl.maximum(-q0 + (POOL_DIL_W - 1), 0) // POOL_DIL_W
    u_hi = tl.minimum((P - 1 - p0) // POOL_DIL_H, POOL_R - 1)
    v_hi = tl.minimum((Q - 1 - q0) // POOL_DIL_W, POOL_S - 1)
    return n_idx, pi, pj, p0, q0, u_lo, v_lo, u_hi, v_hi


@triton.jit
def _in_image(p0, q0, H, W, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr,
              PAD_W: tl.constexpr, SPAN_H: tl.constexpr, SPAN_W: tl.constexpr, SPAN: tl.constexpr):
    """The window's in-image bits over rows and columns (``_window_bits``); the span form needs
    none (its span tensor holds the zeros)."""
    if SPAN:
        return p0, q0
    rows_in = _window_bits(p0 * STRIDE_H - PAD_H, H, min(SPAN_H, 31))
    cols_in = _window_bits(q0 * STRIDE_W - PAD_W, W, min(SPAN_W, 31))
    return rows_in, cols_in


@triton.jit
def _tap_values(x_ptr, w_base, bias, y_ptr, g, n_idx, p0, q0, u, v, rows_in, cols_in, H, W, C, Q,
                stride_xn, stride_xc, stride_xh, stride_xw, stride_wc, stride_wr, stride_ws,
                R: tl.constexpr, S: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
                PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
                POOL_R: tl.constexpr, POOL_S: tl.constexpr, POOL_DIL_H: tl.constexpr, POOL_DIL_W: tl.constexpr,
                HAS_BIAS: tl.constexpr, FLAT: tl.constexpr, RSC: tl.constexpr, BITS: tl.constexpr,
                EVEN_C: tl.constexpr, SPAN: tl.constexpr, SPAN_T: tl.constexpr, UNROLL: tl.constexpr,
                INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """b + conv(X, W) at conv pixels (p0 + u * POOL_DIL_H, q0 + v * POOL_DIL_W) of the rows'
    images, rounded to the output dtype (the max compares stored values, so ties are the unfused
    path's), in ACC_DTYPE. UNROLL: the span form's steps as straight-line code (in the tap loop);
    else its steps are a loop whose bound W is the runtime R * SPAN_T. ``rows_in``, ``cols_in``:
    the window's in-image bits (``_window_bits``; with BITS)."""
    p = p0 + u * POOL_DIL_H
    q = q0 + v * POOL_DIL_W
    if SPAN:
        # Conv pixel (p, q) reads span rows p*STRIDE_H + r*DIL_H of its column q.
        x_rows = x_ptr + ((n_idx * H + p * STRIDE_H) * Q + q) * SPAN_T
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        acc = span_gemm(x_rows, w_base, DIL_H * Q * SPAN_T, acc, W, R * SPAN_T, SPAN_T, UNROLL,
                        INPUT_PRECISION, UPCAST, BLOCK_K)
    else:
        # The window's in-image bits shifted to this tap: row bit r * DIL_H, column bit 16 + s * DIL_W.
        sh_h = u * (POOL_DIL_H * STRIDE_H)
        sh_w = v * (POOL_DIL_W * STRIDE_W)
        if BITS:
            win = ((rows_in >> sh_h) & 0x7FFF) | (((cols_in >> sh_w) & 0x7FFF) << 16)
        else:
            win = rows_in
        ih0 = p0 * STRIDE_H - PAD_H + sh_h
        iw0 = q0 * STRIDE_W - PAD_W + sh_w
        x_rows = x_ptr + g * C * stride_xc + n_idx * stride_xn + ih0 * stride_xh + iw0 * stride_xw
        acc = _conv_tile(
            x_rows, win, ih0, iw0, w_base, H, W, C, stride_xc, stride_xh, stride_xw, stride_wc, stride_wr,
            stride_ws, R, S, DIL_H, DIL_W, FLAT, RSC, BITS, EVEN_C, INPUT_PRECISION, UPCAST, ACC_DTYPE,
            BLOCK_M, BLOCK_N, BLOCK_K,
        )
    if HAS_BIAS:
        acc += bias[None, :]
    return to_dtype(acc, y_ptr.dtype.element_ty).to(ACC_DTYPE)


# ----------------------------------------------------------------------------------------------
# Launchers: check -> allocate -> grid -> launch.
# ----------------------------------------------------------------------------------------------

# H100 bf16 dense tensor-core rate over HBM bandwidth (``cnnkernels.roofline``): 790e12 / 3.0e12.
FLOPS_PER_BYTE = 263


def one_kernel_wins(
    conv_pixels: int,
    pooled_pixels: int,
    c_per_group: int,
    r: int,
    s: int,
    pool_kernel: tuple[int, int],
    element_size: int,
) -> bool:
    """Whether the one-kernel forward beats conv+ReLU writing a temporary that the max-pool
    kernel reads, on the roofline, per output channel: the one kernel recomputes
    (taps * pooled - conv) pixels at 2*C*R*S FLOPs each; the two-kernel path writes and reads
    every conv pixel once more (2 * element_size bytes). Non-overlapping windows recompute
    nothing and always win."""
    extra_flops = max(pool_kernel[0] * pool_kernel[1] * pooled_pixels - conv_pixels, 0) * 2 * c_per_group * r * s
    extra_bytes = 2 * element_size * conv_pixels
    return extra_flops <= FLOPS_PER_BYTE * extra_bytes


def _geometry(weight, stride, padding, dilation, pool_kernel, pool_stride, pool_padding, pool_dilation) -> dict:
    return {
        "R": weight.shape[2], "S": weight.shape[3],
        "STRIDE_H": stride[0], "STRIDE_W": stride[1],
        "PAD_H": padding[0], "PAD_W": padding[2],
        "DIL_H": dilation[0], "DIL_W": dilation[1],
        "POOL_R": pool_kernel[0], "POOL_S": pool_kernel[1],
        "POOL_STRIDE_H": pool_stride[0], "POOL_STRIDE_W": pool_stride[1],
        "POOL_PAD_H": pool_padding[0], "POOL_PAD_W": pool_padding[1],
        "POOL_DIL_H": pool_dilation[0], "POOL_DIL_W": pool_dilation[1],
    }


def output_sizes(
    h, w, weight, stride, padding, dilation, pool_kernel, pool_stride, pool_padding, pool_dilation, ceil_mode
) -> tuple[int, int, int, int]:
    """(P, Q) of the conv and (PP, QQ) of the pool after it."""
    p = conv_output_size(h, weight.shape[2], stride[0], padding[0] + padding[1], dilation[0])
    q = conv_output_size(w, weight.shape[3], stride[1], padding[2] + padding[3], dilation[1])
    pp = pool_output_size(p, pool_kernel[0], pool_stride[0], pool_padding[0], pool_dilation[0], ceil_mode)
    qq = pool_output_size(q, pool_kernel[1], pool_stride[1], pool_padding[1], pool_dilation[1], ceil_mode)
    return p, q, pp, qq


@on_tensor_device
def conv2d_relu_max_pool2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    pool_kernel: tuple[int, int],
    pool_stride: tuple[int, int],
    pool_padding: tuple[int, int],
    pool_dilation: tuple[int, int],
    ceil_mode: bool,
    memory_format: torch.memory_format = torch.channels_last,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y, A): max_pool2d(relu(conv2d(X, W) + b)) and its within-window argmax (int8 for windows
    of up to 127 taps), in one kernel. ``padding`` is the conv's (top, bottom, left, right)."""
    check_runnable("input", x)
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError("conv2d_relu_max_pool2d takes a 4-D input and a 4-D weight")
    if x.dtype != weight.dtype:
        raise TypeError(f"input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    n, _, h, w = x.shape
    k_out, cg, r, s = weight.shape
    p, q, pp, qq = output_sizes(
        h, w, weight, stride, padding, dilation, pool_kernel, pool_stride, pool_padding, pool_dilation, ceil_mode
    )
    y = torch.empty((n, k_out, pp, qq), device=x.device, dtype=x.dtype, memory_format=memory_format)
    arg = torch.empty_strided(y.shape, y.stride(), device=x.device, dtype=argmax_dtype(pool_kernel))
    if y.numel() == 0 or shape_only(x):
        return y, arg
    kg = k_out // groups
    b_arg = bias if bias is not None else weight  # never read without HAS_BIAS
    geometry = _geometry(weight, stride, padding, dilation, pool_kernel, pool_stride, pool_padding, pool_dilation)
    flat = cg < FLAT_BELOW
    span_t = fwd_span_width(x, weight, dilation, groups)
    if span_t:
        x = span_tensor(x, r, s, p, q, stride, padding, dilation, span_t)
        weight = span_weights(weight, span_t)
        h, w, flat = x.shape[1], r * span_t, False  # W: the span loop's runtime bound
    taps = tap_rows(pool_kernel, pool_stride, pool_dilation)
    nine = span_t > 0 and not taps and tuple(pool_kernel) == (3, 3)

    def grid(meta):  # tile_of; with TAP_ROWS a tile holds BLOCK_M / taps pooled pixels
        pixels = meta["BLOCK_M"] // max(taps, 1)
        return (triton.cdiv(n * pp * qq, pixels) * triton.cdiv(kg, meta["BLOCK_N"]), 1, groups)

    launch(_conv_relu_max_pool_fwd_kernel, grid,
        x, weight, b_arg, y, arg,
        n, h, w, cg, p, q, kg, pp, qq,
        *nchw_strides(x), *nchw_strides(weight),
        bias.stride(0) if bias is not None else 0,
        *nchw_strides(y),
        **geometry,
        FLAT=flat, HAS_BIAS=bias is not None,
        RSC=r * s * cg if flat else 0, C_ALIGN=vector_factor(cg, cap=64),
        SPAN=span_t > 0, SPAN_T=span_t, SPAN_RT_PAD=weight.shape[1] * span_t if span_t else 0, TAP_ROWS=taps,
        NINE_TAPS=nine,
        INPUT_PRECISION=dot_precision(x.dtype), UPCAST=dot_upcast(x.dtype), ACC_DTYPE=tl_dtype(acc_dtype(x.dtype)),
    )
    return y, arg


def tap_rows(pool_kernel, pool_stride, pool_dilation) -> int:
    """The window's tap count when windows do not overlap (VGG's 2x2/2) and it is a power of two
    of at most 16, else 0. Then each conv pixel belongs to at most one window, and the fused
    kernel's tile rows are (tap, pooled pixel): one GEMM over the whole reduction, the max over a
    pixel's taps in the epilogue, instead of a GEMM per tap whose result the running max waits
    for (a wgmma wait to zero per tap, static, sm_90)."""
    taps = pool_kernel[0] * pool_kernel[1]
    disjoint = all(st >= (k - 1) * d + 1 for k, st, d in zip(pool_kernel, pool_stride, pool_dilation))
    return taps if disjoint and taps <= 16 and taps & (taps - 1) == 0 else 0


# ----------------------------------------------------------------------------------------------
# Max pool on load: a stride-1 max pool feeding a 1x1 convolution (Inception's fourth branch).
# ----------------------------------------------------------------------------------------------


def poolconv_configs() -> list[triton.Config]:
    """Tiles of the pool-on-load 1x1 conv (``_max_pool_conv1x1_fwd_kernel``): BLOCK_M pixels as
    BLOCK_M / 2 vertical pairs (the pooling's loads mostly hit L1/L2: neighbouring pixels share
    their windows), eight warps, each pooling BLOCK_M * BLOCK_K / 256 elements a step; the GEMM
    over the staged rows pipelined like a plain one. At most ``STAGE_ROWS`` rows."""

    def cfg(bm, bn, bk, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)

    return pick_configs(
        gpu=[cfg(128, 128, 64, 8, 3), cfg(128, 64, 64, 8, 3), cfg(128, 128, 32, 8, 4)],
        interpreter=[cfg(256, 128, 64, 4, 1)],
    )


# Staged rows a program of the pool-on-load kernel holds: the largest BLOCK_M of its configs
# (and the smallest, which bounds the number of tiles).
STAGE_ROWS = max(cfg.kwargs["BLOCK_M"] for cfg in poolconv_configs())
STAGE_MIN_ROWS = min(cfg.kwargs["BLOCK_M"] for cfg in poolconv_configs())


_INTERPRET = tl.constexpr(INTERPRET)


@triton.jit
def _max_nan(a, b):
    """Elementwise max, NaN propagating (torch's max pool). Compiled, 16-bit operands take one
    packed ``max.NaN`` per pair of elements, as they sit in registers (a plain ``tl.maximum``
    is unpacked and repacked around each pair); the interpreter (and fp32, fp64) take
    ``tl.maximum``."""
    if _INTERPRET:
        return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)
    elif a.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise("max.NaN.bf16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.bfloat16,
                                         is_pure=True, pack=2)
    elif a.dtype == tl.float16:
        return tl.inline_asm_elementwise("max.NaN.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float16,
                                         is_pure=True, pack=2)
    else:
        return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _pool_pair_tile(x_img, h, w, c0, C, H, W, stride_xc, stride_xh, stride_xw,
                    POOL_R: tl.constexpr, POOL_S: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
                    EVEN_C: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_K: tl.constexpr):
    """The pooled A tile of channels c0 .. c0 + BLOCK_K for the pixel pairs at rows ``h`` (even)
    and ``h + 1``, columns ``w``: upper pixels in the first half of the rows, lower ones in the
    second, in X's dtype (see ``_max_pool_conv1x1_fwd_kernel``)."""
    c = c0 + tl.arange(0, BLOCK_K)
    k_ok = c < C
    x_c = (c * stride_xc)[None, :]
    for d in tl.static_range(POOL_R + 1):
        hh = tl.minimum(tl.maximum(h + (d - PAD_H), 0), H - 1)
        for v in tl.static_range(POOL_S):
            ww = tl.minimum(tl.maximum(w + (v - PAD_W), 0), W - 1)
            ptrs = (x_img + (hh * stride_xh + ww * stride_xw))[:, None] + x_c
            if EVEN_C:
                t = tl.load(ptrs)
            else:
                t = tl.load(ptrs, mask=k_ok[None, :], other=0.0)
            if UPCAST:
                # Under the interpreter bf16 comparisons act on raw bit patterns.
                t = t.to(ACC_DTYPE)
            if v == 0:
                row = t
            else:
                row = _max_nan(row, t)
        # Rows 0 .. POOL_R - 1 are the upper pixel's window, rows 1 .. POOL_R the lower's; the
        # rows they share are reduced once.
        if d == 0:
            first = row
        elif d == 1:
            mid = row
        elif d < POOL_R:
            mid = _max_nan(mid, row)
        else:
            last = row
    top = _max_nan(first, mid)
    bot = _max_nan(mid, last)
    both = tl.reshape(tl.permute(tl.join(top, bot), (2, 0, 1)), (2 * top.shape[0], BLOCK_K))
    return both.to(x_img.dtype.element_ty)


@triton.jit
def _w_tile(w_base, c0, C, stride_wc, EVEN_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows c0 .. c0 + BLOCK_K of the 1x1 weight as the GEMM's (BLOCK_K, BLOCK_N) B tile."""
    c = c0 + tl.arange(0, BLOCK_K)
    if EVEN_C:
        return tl.load(w_base[None, :] + (c * stride_wc)[:, None])
    return tl.load(w_base[None, :] + (c * stride_wc)[:, None], mask=(c < C)[:, None], other=0.0)


def _prune_poolconv(configs, named_args, **kwargs):
    """``fit_to_dtype`` (the launcher hands the kernel channels_last inputs only)."""
    x = named_args.get("x_ptr", kwargs.get("x_ptr"))
    return fit_to_dtype(list(configs), x.element_size())


@triton.autotune(configs=poolconv_configs(), prune_configs_by={"early_config_prune": _prune_poolconv},
                 key=["N", "H", "W", "C", "K", "POOL_R", "POOL_S", "C_ALIGN"])
@triton.jit
def _max_pool_conv1x1_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, stage_ptr,
    N, H, W, C, K,
    C_STAGE,  # a staged row's length: C rounded up to a multiple of 64 (every BLOCK_K)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc,
    stride_b,
    stride_yn, stride_yc, stride_yh, stride_yw,
    # The pool's geometry is constexpr: its taps unroll and the window arithmetic folds.
    POOL_R: tl.constexpr, POOL_S: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    C_ALIGN: tl.constexpr,  # a power of two dividing C (at most 64): whole channel blocks need no mask
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Y[n,k,h,w] = act(b[k] + sum_c W[k,c] * max_{u,v} X[n,c,h+u-ph,w+v-pw]) over the taps inside
    X (NaN propagates, as torch's max pool), the pooled tensor never written to the output's
    memory: each program pools a tile of pixels over all channels into its own staging rows
    (``stage_ptr``, BLOCK_M x C_STAGE a program: a few MB in all, one program per SM, rewritten
    tile after tile), then runs the 1x1 GEMM over them for every block of filters. The GEMM's
    loop loads both operands (16-byte asynchronous copies, pipelined, no wgmma wait); pooling in
    that loop instead had a computed operand, which Triton's pipeliner cannot multi-buffer (a
    wgmma wait to zero per step) and 1.6-2.5x the anchor's instructions per HGMMA (static, sm_90).
    Persistent: program i takes tiles i, i + programs, ...

    A tile's BLOCK_M pixels are pairs of vertically adjacent pixels (h, w) and (h + 1, w), h
    even: rows 0 .. BLOCK_M / 2 - 1 are the upper pixel of each pair, the rest the lower one.
    The pool is separable: the row maxima of the POOL_R + 1 image rows under a pair are loaded
    once and feed both pixels' windows (per pair POOL_S * (POOL_R + 1) loads, not
    2 * POOL_R * POOL_S).
    A tap outside the image loads the window's nearest pixel inside it instead (coordinates
    clamped to the image: a member of the same window, since the pool keeps the size), which
    leaves the max unchanged, so no tap is masked; pairs past the batch load pair s % S and the
    lower pixel of a pair on an odd image's last row loads clamped rows (neither is stored);
    channels past C stage zeros (their filter rows are masked too)."""
    HALF: tl.constexpr = BLOCK_M // 2
    HS = (H + 1) // 2
    S = N * HS * W  # pixel pairs
    EVEN_C: tl.constexpr = C_ALIGN % BLOCK_K == 0
    kk = tl.arange(0, BLOCK_K)
    r = tl.arange(0, BLOCK_M)
    stage_rows = stage_ptr + tl.program_id(0).to(tl.int64) * BLOCK_M * C_STAGE + (r * C_STAGE)[:, None]
    for tile in range(tl.program_id(0), tl.cdiv(S, HALF), tl.num_programs(0)):
        s0 = tl.zeros((), tl.int64) + tile * HALF  # the tile's first pair (an int under the interpreter)
        offs_s = s0 + tl.arange(0, HALF)
        n_idx = (offs_s % S) // (HS * W)
        sw = (offs_s % (HS * W)).to(tl.int32)
        x_img = x_ptr + n_idx * stride_xn
        for c0 in range(0, C, BLOCK_K):
            a = _pool_pair_tile(x_img, (sw // W) * 2, sw % W, c0, C, H, W, stride_xc, stride_xh, stride_xw,
                                POOL_R, POOL_S, PAD_H, PAD_W, EVEN_C, UPCAST, ACC_DTYPE, BLOCK_K)
            tl.store(stage_rows + (c0 + kk)[None, :], a)
        tl.debug_barrier()  # the tile's staged rows, written by every warp, before any reads them

        s_r = s0 + r % HALF
        sw_r = (s_r % (HS * W)).to(tl.int32)
        h_r = (sw_r // W) * 2 + r // HALF
        y_row = (s_r // (HS * W)) * stride_yn + h_r * stride_yh + (sw_r % W) * stride_yw
        row_ok = (s_r < S) & (h_r < H)
        for n0 in range(0, K, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < K
            w_base = w_ptr + (offs_n % K) * stride_wk
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
            for c0 in range(0, C, BLOCK_K):
                a = tl.load(stage_rows + (c0 + kk)[None, :])
                acc = mma(a, _w_tile(w_base, c0, C, stride_wc, EVEN_C, BLOCK_K), acc, INPUT_PRECISION, UPCAST)
            if HAS_BIAS:
                acc += tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0.0).to(ACC_DTYPE)[None, :]
            if ACTIVATION == "relu":
                acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
            tl.store(y_ptr + y_row[:, None] + (offs_n * stride_yc)[None, :], to_dtype(acc, y_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & mask_n[None, :])
        tl.debug_barrier()  # every warp done reading the staged rows before the next tile's are written


@on_tensor_device
def max_pool_conv1x1_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pool_kernel: tuple[int, int],
    pool_padding: tuple[int, int],
    activation: str = "relu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Y = act(conv1x1(max_pool2d(X, pool_kernel, stride 1, pool_padding), W) + b) without writing
    the pooled tensor. The pool must keep the size (2 * padding = kernel - 1, odd kernel). ``out``
    may be any strided (N, K, H, W) view, e.g. Inception's channel slice."""
    check_runnable("input", x)
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise ValueError("max_pool_conv1x1 takes a 4-D input and a 1x1 conv weight")
    if x.dtype != weight.dtype:
        raise TypeError(f"input dtype {x.dtype} and weight dtype {weight.dtype} differ")
    if any(2 * p != k - 1 for k, p in zip(pool_kernel, pool_padding)):
        raise ValueError(f"pool_kernel {pool_kernel} with pool_padding {pool_padding} must keep the size")
    n, c, h, w = x.shape
    k = weight.shape[0]
    if weight.shape[1] != c:
        raise ValueError(f"weight takes {weight.shape[1]} channels, input has {c}")
    if out is None:
        out = torch.empty((n, k, h, w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    elif tuple(out.shape) != (n, k, h, w) or out.dtype != x.dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}, expected {(n, k, h, w)} {x.dtype}")
    if out.numel() == 0 or shape_only(x):
        return out
    if x.stride(1) != 1:
        # Channels not contiguous (NCHW): copied channels_last once, so the pooled tile's loads
        # stay 16 bytes wide (gathered 2 bytes at a time, the 128-row tile spills 1200+
        # registers; static, sm_90).
        x = channels_last_copy(x)

    # At most one program an SM (4 under the interpreter) and one a tile, each with BLOCK_M <=
    # STAGE_ROWS staged rows (C_STAGE each): e.g. 132 x 128 x 512 bf16, 17 MB, for GoogLeNet's
    # 14x14 blocks at batch 128; one program's 213 KB for its 7x7x832 block at batch 1.
    pairs = n * ((h + 1) // 2) * w
    programs = min(4 if INTERPRET else _sm_count(), triton.cdiv(pairs, STAGE_MIN_ROWS // 2))
    c_stage = triton.cdiv(c, 64) * 64
    stage = torch.empty((programs * STAGE_ROWS * c_stage,), device=x.device, dtype=x.dtype)

    def grid(meta):  # a tile's BLOCK_M pixels are BLOCK_M / 2 vertical pairs
        return (min(programs, triton.cdiv(pairs, meta["BLOCK_M"] // 2)),)

    launch(_max_pool_conv1x1_fwd_kernel, grid,
        x, weight, bias if bias is not None else weight, out, stage,
        n, h, w, c, k, c_stage,
        *nchw_strides(x), weight.stride(0), weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        *nchw_strides(out),
        POOL_R=pool_kernel[0], POOL_S=pool_kernel[1], PAD_H=pool_padding[0], PAD_W=pool_padding[1],
        HAS_BIAS=bias is not None, ACTIVATION=activation, C_ALIGN=vector_factor(c, cap=64),
        INPUT_PRECISION=dot_precision(x.dtype), UPCAST=dot_upcast(x.dtype), ACC_DTYPE=tl_dtype(acc_dtype(x.dtype)),
    )
    return out
