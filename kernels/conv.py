"""Direct 2-D convolution as an implicit GEMM, with a fused bias + ReLU epilogue.

Forward:   Y[n,p,q,k] = act(b[k] + sum_{r,s,c} X[n, p*sh - pt + r*dh, q*sw - pl + s*dw, c] W[k,c,r,s])
           GEMM with M = N*P*Q output pixels, N = K/groups output channels; the reduction runs tap
           by tap over channel blocks, or (below 16 channels) over the flattened (r, s, c) index.
           From 16 to 63 channels a K slice is the channels rounded up to a power of two, and 16
           or 32 channels take two taps a step (PAIRS: lanes [0, C) tap t, [C, 2C) tap t + 1).
           Whole channel blocks (a power of two dividing C is a multiple of BLOCK_K) load unmasked.
           First layers (1 to 7 channels, one group, dilation 1 along W) take the span form: one
           fill launch writes each output column's filter-row spans of the zero-padded input
           (``span_tensor``) and one the weights' (``span_weights``), so a filter row is one
           contiguous 16-byte aligned run of T = S*C rounded up to a power of two, read in vectors
           with no window test (``span_gemm``). Layers with few tiles and a long reduction (small M
           at batch 1) split the reduction over programs (``fwd_splits``); the tile's last
           program sums the fp32 partials in split order and runs the epilogue.
Order:     the forward and dX grids run the N tiles of one M tile consecutively (``tile_of``), so
           the activation tile they share is read from HBM once.
dX:        gather form over the flattened (r, s, k) index: input pixel h receives from output row
           p = (h + pt - r*dh) / sh only where that division is exact; the stride is handled by
           that divisibility mask, never by inserting zeros into dY. A tile whose result is
           non-finite is recomputed tap by tap without the (pixel, tap) pairs that no output
           reaches, so a NaN or inf weight poisons exactly the pixels it touches, as in torch.
dW:        GEMM reducing over N*P*Q, split into chunks for parallelism; each chunk writes an fp32
           partial and the program that finishes a tile last (an atomic count per tile) sums the
           tile's partials in split order and writes dW (``store_split_tile``): bit-reproducible
           run to run, one launch. Layers on pixel-linear NHWC tensors run row-tiled
           (``_conv_bwd_weight_rows_kernel``: no pixel decode in the loop, any stride and
           padding; below 32 channels with narrow tiles when the channels are whole 16-byte
           vectors). Layers whose
           channels are not (1- and 3-channel first layers) run the generic kernel's span form on
           a zero-padded copy of X that holds each output column's filter-row spans
           (``span_tensor``): 16-byte loads, pointers moved by scalars, no window test.
ReLU, db:  one elementwise pass (``_conv_bwd_prep_kernel``) masks dY with ``Y > 0`` of the saved
           output and writes per-block column sums of dY' for db (summed in a fixed order); the
           dX and dW loops then load dY' alone and hold the MMA alone (both wgmma operands from
           shared memory, no reduction in the loop). dY' is allocated with a pixel stride of a
           whole number of 16 channels (``empty_padded_channels``).
Vectors:   Triton marks an integer argument only when it is a multiple of 16. Where a channel
           count or stride is a multiple of 8, 4 or 2 only (GoogLeNet's 24-channel 5x5 inputs,
           280-channel stacked dY'), the launcher passes that factor as a constexpr and the
           kernel writes the value as ``v // F * F``, so loads of F contiguous channels stay
           whole vectors. The flattened forward also takes C as a constexpr (C < 16), so its
           lane decode divides by constants.

Limits: tensors are addressed through explicit strides (NCHW, channels_last or a channel slice
of a larger buffer all work without copies); batch offsets are 64-bit, offsets within one image
are 32-bit (H*W*C < 2**31 elements per image), and the pixel count of the whole batch stays
below 2**31 (N*H*W and N*P*Q, far above these models' sizes). Geometry is constexpr: each layer shape is its
own specialisation, so index arithmetic folds to constants.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    acc_dtype,
    as_multiples,
    check_runnable,
    dot_precision,
    dot_upcast,
    empty_padded_channels,
    fit_to_dtype,
    launch,
    mma,
    narrow_tiles,
    nchw_strides,
    nonfinite,
    on_tensor_device,
    pick_configs,
    pixel_strides,
    shape_only,
    tile_of,
    tl_dtype,
    to_dtype,
    vector_factor,
)


def conv_configs(flat: bool) -> list[triton.Config]:
    """Configs for the three GEMM kernels (forward, dX, dW), per reduction form.

    The flattened (r, s, c) form carries 2-D window arithmetic per tile element, so it gets
    smaller tiles; each listed config compiles for sm_90 without spills (``cnnkernels.report``).
    """

    def cfg(bm, bn, bk, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)

    if flat:
        gpu = [cfg(64, 64, 32, 4, 2), cfg(128, 64, 32, 8, 2), cfg(64, 64, 32, 4, 3)]
    else:
        gpu = [cfg(128, 128, 64, 8, 3), cfg(64, 128, 64, 4, 4), cfg(64, 64, 64, 4, 3)]
    return pick_configs(gpu=gpu, interpreter=[cfg(256, 128, 64, 4, 1)])


def _all_conv_configs() -> list[triton.Config]:
    if INTERPRET:
        return conv_configs(False)
    return conv_configs(False) + conv_configs(True)


def _prune_by_form(configs, named_args, **kwargs):
    """Autotune only over the configs of the reduction form this launch uses, fitted to its
    dtype (``fit_to_dtype``)."""
    flat = kwargs.get("FLAT", named_args.get("FLAT"))
    first = named_args[next(iter(named_args))]  # the first pointer argument
    return fit_to_dtype(conv_configs(bool(flat)), first.element_size())


def prune_fwd(configs, named_args, **kwargs):
    """``_prune_by_form``; the span form keeps its one-warpgroup tiles; at most 64 filters per
    group (NiN's 10-class layer) keep the 64-wide tiles only (a 128-wide tile is mostly idle and
    spills: 382-592 registers, static, sm_90);
    for 4-byte operands (TF32) the 128x128 tile becomes 128x64 on one warpgroup: on two, Triton
    3.6 serialises the 128x128 TF32 wgmma (C7515)."""
    kept = narrow_tiles(_prune_by_form(configs, named_args, **kwargs), named_args.get("K", kwargs.get("K")), "BLOCK_N")
    c = named_args.get("C", kwargs.get("C"))
    flat_or_span = kwargs.get("FLAT", named_args.get("FLAT")) or kwargs.get("SPAN", named_args.get("SPAN"))
    if not flat_or_span and c < 64:
        kept = narrow_channels(kept, c, named_args[next(iter(named_args))].element_size())
    if kwargs.get("SPAN", named_args.get("SPAN")) and not INTERPRET:
        # The span form on two warpgroups: Triton 3.6 serialises its wgmma (C7515; static, sm_90).
        kept = [cfg for cfg in kept if cfg.num_warps == 4] or kept
    if INTERPRET or named_args[next(iter(named_args))].element_size() != 4:
        return kept
    wide = [cfg.kwargs["BLOCK_M"] == 128 and cfg.kwargs["BLOCK_N"] == 128 for cfg in kept]
    return [
        triton.Config({**cfg.kwargs, "BLOCK_N": 64}, num_warps=4, num_stages=cfg.num_stages) if w else cfg
        for cfg, w in zip(kept, wide)
    ]


def narrow_channels(configs: list[triton.Config], c: int, element_size: int) -> list[triton.Config]:
    """Tap-wise configs for 16 to 63 channels: a K slice of the channels rounded up to a power of
    two, or of two taps' channels when C is one (16 -> 32, 32 -> 64: the kernel's PAIRS); 16 for
    4-byte operands. Below 64, 128-row tiles of one warpgroup, so a step's HGMMAs share its fixed
    cost (static, sm_90, bf16, GoogLeNet's 16-channel 5x5 at one tap of 16 channels a step: 64x64
    tiles 2.5x the anchor's instructions per HGMMA, 128x64 ones 1.45x; two taps a step: 1.55x
    and 0.96x)."""
    pow2 = 1 << (c - 1).bit_length()
    bk = max(16, min(64, 2 * c if c == pow2 else pow2))
    if element_size >= 4 and not INTERPRET:
        bk = 16

    def cfg(bm, bn, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)

    if bk == 64:
        return configs
    if INTERPRET:  # the interpreter's large tile, with the GPU's K slice (fewer loop steps)
        return [cfg(256, 128, 4, 1)]
    wide = any(cf.kwargs["BLOCK_N"] > 64 for cf in configs)  # narrow_tiles kept 128-wide tiles
    return [cfg(128, 128, 4, 4), cfg(128, 64, 4, 4)] if wide else [cfg(128, 64, 4, 4), cfg(128, 64, 4, 3)]


def reduce_configs() -> list[triton.Config]:
    return pick_configs(
        gpu=[triton.Config({"BLOCK": 1024}, num_warps=4), triton.Config({"BLOCK": 256}, num_warps=2)],
        interpreter=[triton.Config({"BLOCK": 4096}, num_warps=4)],
    )


_GEOMETRY_KEY = ["R", "S", "STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W", "FLAT"]  # RESIDUE follows from these

# Below this many channels per group the reduction runs over the flattened (r, s, c) index;
# at or above it, tap by tap over channel chunks (1-D index math per tap, fewer registers).
FLAT_BELOW = 32
# The forward's own: from 16 channels it runs tap-wise with a K slice of the channels rounded up
# to a power of two (``prune_fwd``); its flattened lane decode cost 1.9-2.0x the anchor's
# instructions per HGMMA on GoogLeNet's 16- and 24-channel 5x5 layers (static, sm_90).
FWD_FLAT_BELOW = 16


@triton.autotune(configs=_all_conv_configs(), prune_configs_by={"early_config_prune": prune_fwd}, key=["N", "H", "W", "C", "K", "P", "Q", *_GEOMETRY_KEY, "SPAN"])
@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    part_ptr, count_ptr,  # SPLITS > 1: fp32 partials [SPLITS, N*P*Q, G*K] and per-tile counters
    N, H, W, C, P, Q, K,  # C and K are per group
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_b,
    stride_yn, stride_yc, stride_yh, stride_yw,
    # Geometry is constexpr so the tap decomposition and the window arithmetic fold.
    R: tl.constexpr, S: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    FLAT: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    FLAT_C: tl.constexpr,  # C when FLAT (its divisions fold), else 0
    C_VEC: tl.constexpr,  # X's pixel and W's filter strides are multiples of this (``flat_vector``)
    C_ALIGN: tl.constexpr,  # tap-wise: a power of two dividing C, at most 64 (whole channel blocks need no mask)
    C_POW2: tl.constexpr,  # C when a power of two below 64, else 0: BLOCK_K = 2 * C_POW2 takes two taps a step
    # The span form (first layers, ``conv2d_forward``): x_ptr is the span tensor (H its rows),
    # w_ptr the filter rows' spans, SPAN_T wide, each filter SPAN_RT_PAD long; W is R*SPAN_T,
    # the reduction's length (a runtime bound: a loop of a few steps stays a loop, measurable).
    SPAN: tl.constexpr, SPAN_T: tl.constexpr, SPAN_RT_PAD: tl.constexpr,
    # Tap-wise only: axis 1 splits the reduction's steps into SPLITS equal runs (``fwd_splits``).
    SPLITS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """SPLITS > 1 (few tiles, a long reduction: a small-M layer at batch 1): each program sums
    its run of the steps into an fp32 partial, and the program that finishes a tile last sums the
    tile's partials in split order and runs the epilogue (``split_done``, ``split_sum``): the same
    bits whichever program that is."""
    tl.static_assert(SPLITS == 1 or not (FLAT or SPAN), "only the tap-wise form splits its reduction")
    pid_m, pid_n = tile_of(tl.program_id(0), tl.cdiv(K, BLOCK_N))
    g = tl.program_id(2).to(tl.int64)
    if SPAN:
        _conv_fwd_span(x_ptr, w_ptr, b_ptr, y_ptr, N, H, W, P, Q, K, stride_b, stride_yn, stride_yc, stride_yh, stride_yw,
                       pid_m, pid_n, R, STRIDE_H, DIL_H, SPAN_T, SPAN_RT_PAD, HAS_BIAS, ACTIVATION,
                       INPUT_PRECISION, UPCAST, ACC_DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
        return
    if FLAT:
        C = FLAT_C
    if C_VEC > 1 and C_VEC < 16:
        # The host checked that these are multiples of C_VEC; written so, Triton knows it too
        # (it marks only multiples of 16), and C_VEC lanes of one tap are one vector load.
        stride_xn, stride_xh, stride_xw = as_multiples(stride_xn, stride_xh, stride_xw, C_VEC)
        stride_wk, stride_wr, stride_ws = as_multiples(stride_wk, stride_wr, stride_ws, C_VEC)
        if not FLAT:  # a channel block's mask then keeps C_VEC-lane vectors whole
            C = C // C_VEC * C_VEC
    EVEN_C: tl.constexpr = (not FLAT) and C_ALIGN % BLOCK_K == 0
    # Two taps a step: lanes [0, C) read tap t, lanes [C, 2C) tap t + 1 (GoogLeNet's 16- and
    # 32-channel 5x5 layers: one step of a tap and a K slice of 16 or 32 had 1.5-2.5x the
    # anchor's instructions per HGMMA, static, sm_90).
    PAIRS: tl.constexpr = (not FLAT) and C_POW2 > 0 and BLOCK_K == 2 * C_POW2

    M, offs_m, offs_n, mask_m, mask_n, n_idx, pq = _out_tile(pid_m, pid_n, N, P, Q, K, BLOCK_M, BLOCK_N)
    ih0 = (pq // Q) * STRIDE_H - PAD_H
    iw0 = (pq % Q) * STRIDE_W - PAD_W
    x_base = x_ptr + g * C * stride_xc + n_idx * stride_xn
    x_rows = x_base + ih0 * stride_xh + iw0 * stride_xw  # tap (0, 0); may point before the image
    w_base = w_ptr + (g * K + offs_n % K) * stride_wk
    # Tap-wise with at most 31 taps: bit r*S + s of a pixel's tap_bits says whether tap (r, s)
    # reads inside the image, fixed per program; a step tests it against one scalar bit.
    TAP_BITS: tl.constexpr = (not FLAT) and R * S <= 31
    if TAP_BITS:
        tap_bits = tl.zeros((BLOCK_M,), tl.int32)
        for tap in tl.static_range(R * S):
            ih = ih0 + (tap // S) * DIL_H
            iw = iw0 + (tap % S) * DIL_W
            tap_bits |= tl.where((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W), 1 << tap, 0)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if FLAT:
        steps = tl.cdiv(R * S * C, BLOCK_K)
    elif PAIRS:
        c_blocks = tl.cdiv(C, BLOCK_K)  # 1, a runtime value: the loop stays a loop (LLVM unrolled a constant 13)
        steps = (R * S + 1) // 2 * c_blocks
        lanes = tl.arange(0, BLOCK_K)
        second = lanes // C_POW2  # 1 on the lanes of the step's second tap
        ch = lanes % C_POW2
    else:
        c_blocks = tl.cdiv(C, BLOCK_K)
        steps = R * S * c_blocks
    # Tap-wise position (tap_r, tap_s, channel block c0), advanced without a division per step.
    c0 = tl.full((), 0, tl.int32)
    tap_r = tl.full((), 0, tl.int32)
    tap_s = tl.full((), 0, tl.int32)
    tap_bit = tl.full((), 1, tl.int32)
    step0 = tl.full((), 0, tl.int32)
    if SPLITS > 1:
        # This split's run of steps; its starting position decoded once.
        chunk = tl.cdiv(steps, SPLITS)
        step0 = tl.program_id(1) * chunk
        steps = tl.minimum(steps, step0 + chunk)
        tap0 = step0 * 2 if PAIRS else step0 // c_blocks
        c0 = 0 if PAIRS else (step0 - tap0 * c_blocks) * BLOCK_K
        tap_r = tap0 // S
        tap_s = tap0 - tap_r * S
        tap_bit = tl.where(tap0 < 31, 1 << tl.minimum(tap0, 30), 0)
    for t in range(step0, steps):
        if FLAT:
            # Reduction index kk = (r*S + s)*C + c: 2-D window arithmetic, no padding lanes.
            kk = t * BLOCK_K + tl.arange(0, BLOCK_K)
            # C is constexpr here: a tap's channels are contiguous lanes, as Triton's analysis sees.
            k_ok = kk < R * S * C
            tap = kk // C
            c = kk % C
            r = tap // S
            s = tap % S
            ih = ih0[:, None] + (r * DIL_H)[None, :]
            iw = iw0[:, None] + (s * DIL_W)[None, :]
            mask_a = mask_m[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a_ptrs = x_base[:, None] + ih * stride_xh + iw * stride_xw + (c * stride_xc)[None, :]
            w_off = c * stride_wc + r * stride_wr + s * stride_ws
        elif PAIRS:
            # Taps t = (tap_r, tap_s) and t + 1 = (r1, s1); past the last tap (R*S odd) r1 = R,
            # read by no lane: its rows' bits are 0 and its filter lanes masked.
            wrap = tap_s + 1 == S
            r1 = tl.where(wrap, tap_r + 1, tap_r)
            s1 = tl.where(wrap, 0, tap_s + 1)
            # Lane offsets as base + second * delta (not a select of two offsets), so Triton's
            # analysis sees C contiguous lanes per tap: 16-byte loads.
            if TAP_BITS:
                mask_a = (tap_bits[:, None] & (tap_bit << second)[None, :]) != 0
            else:
                ih = ih0 + tap_r * DIL_H
                iw = iw0 + tap_s * DIL_W
                ok0 = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                ih = ih0 + r1 * DIL_H
                iw = iw0 + s1 * DIL_W
                ok1 = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & (ih0 * 0 + r1 < R)
                mask_a = tl.where(second[None, :] != 0, ok1[:, None], ok0[:, None])
            off0 = tap_r * (DIL_H * stride_xh) + tap_s * (DIL_W * stride_xw)
            off1 = r1 * (DIL_H * stride_xh) + s1 * (DIL_W * stride_xw)
            a_ptrs = x_rows[:, None] + (off0 + second * (off1 - off0) + ch * stride_xc)[None, :]
            w0 = tap_r * stride_wr + tap_s * stride_ws
            w_off = ch * stride_wc + w0 + second * (r1 * stride_wr + s1 * stride_ws - w0)
            k_ok = second * r1 < R
            wrap = s1 + 1 == S
            tap_r = tl.where(wrap, r1 + 1, r1)
            tap_s = tl.where(wrap, 0, s1 + 1)
            tap_bit = tap_bit << 2
        else:
            # One tap (r, s), channels c0 .. c0+BLOCK_K: the window test is per row only.
            r = tap_r
            s = tap_s
            c = c0 + tl.arange(0, BLOCK_K)
            k_ok = c < C
            if TAP_BITS:
                row_ok = (tap_bits & tap_bit) != 0
            else:
                ih = ih0 + r * DIL_H
                iw = iw0 + s * DIL_W
                row_ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            c0 += BLOCK_K
            next_tap = c0 >= C
            c0 = tl.where(next_tap, 0, c0)
            tap_bit = tl.where(next_tap, tap_bit << 1, tap_bit)
            tap_s = tl.where(next_tap, tap_s + 1, tap_s)
            next_row = tap_s == S
            tap_s = tl.where(next_row, 0, tap_s)
            tap_r = tl.where(next_row, tap_r + 1, tap_r)
            mask_a = row_ok[:, None] & k_ok[None, :]
            # Row addresses are built once per program; a tap moves them all by one scalar.
            tap_off = r * (DIL_H * stride_xh) + s * (DIL_W * stride_xw)
            a_ptrs = (x_rows + tap_off)[:, None] + (c * stride_xc)[None, :]
            w_off = c * stride_wc + r * stride_wr + s * stride_ws
        if PAIRS:
            a = tl.load(a_ptrs, mask=mask_a, other=0.0)
            b = tl.load(w_base[None, :] + w_off[:, None], mask=k_ok[:, None], other=0.0)
        elif EVEN_C:  # whole channel blocks: only the rows' window test
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            b = tl.load(w_base[None, :] + w_off[:, None])
        else:
            a = tl.load(a_ptrs, mask=mask_a, other=0.0)
            b = tl.load(w_base[None, :] + w_off[:, None], mask=k_ok[:, None], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)

    if SPLITS == 1:
        _fwd_epilogue(acc, b_ptr, y_ptr, g * K + offs_n, mask_m, mask_n, n_idx, pq, Q, stride_b,
                      stride_yn, stride_yc, stride_yh, stride_yw, HAS_BIAS, ACTIVATION, ACC_DTYPE)
    else:
        GK = tl.num_programs(2) * K
        offs = offs_m[:, None] * GK + (g * K + offs_n)[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
        tile_count = count_ptr + g * tl.num_programs(0) + tl.program_id(0)
        if split_done(acc, part_ptr, offs, mask, M * GK, tile_count, tl.program_id(1), SPLITS):
            total = split_sum(part_ptr, offs, mask, M * GK, SPLITS)
            _fwd_epilogue(total, b_ptr, y_ptr, g * K + offs_n, mask_m, mask_n, n_idx, pq, Q, stride_b,
                          stride_yn, stride_yc, stride_yh, stride_yw, HAS_BIAS, ACTIVATION, ACC_DTYPE)
            tl.atomic_xchg(tile_count, 0, sem="relaxed")


@triton.jit
def _out_tile(pid_m, pid_n, N, P, Q, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The forward's output tile: M = N*P*Q, its rows and columns with their masks, and each
    row's image n and pixel pq = p*Q + q. Rows past M and columns past K stand for pixel m % M
    and filter k % K (no mask for them in the loop); their results are never stored."""
    M = N * P * Q
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_idx = (offs_m % M) // (P * Q)
    pq = (offs_m % (P * Q)).to(tl.int32)
    return M, offs_m, offs_n, offs_m < M, offs_n < K, n_idx, pq


@triton.jit
def _fwd_epilogue(acc, b_ptr, y_ptr, chan, mask_m, mask_n, n_idx, pq, Q, stride_b,
                  stride_yn, stride_yc, stride_yh, stride_yw,
                  HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """On the fp32 accumulator of output pixels (n, pq) x channels ``chan``: bias, activation,
    cast, strided store."""
    if HAS_BIAS:
        bias = tl.load(b_ptr + chan * stride_b, mask=mask_n, other=0.0)
        acc += bias.to(ACC_DTYPE)[None, :]
    if ACTIVATION == "relu":
        # NaN stays NaN, as torch's relu (a plain max would return the 0).
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    y_off = n_idx * stride_yn + (pq // Q) * stride_yh + (pq % Q) * stride_yw
    y_ptrs = y_ptr + y_off[:, None] + (chan * stride_yc)[None, :]
    tl.store(y_ptrs, to_dtype(acc, y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def span_gemm(x_rows, w_rows, row_step, acc, RT, RT_C: tl.constexpr, T: tl.constexpr, UNROLL: tl.constexpr,
              INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += the GEMM over the span form's columns (r, t), col = r*T + t < RT = R*T: A row i
    reads the span tensor at x_rows[i] + r*row_step + t, filter column j the weight spans at
    w_rows[j] + col (zero past the filter row and past RT, ``span_weights``). T is a power of
    two, so T | BLOCK_K or BLOCK_K | T: a step's columns are a fixed lane pattern moved by a
    scalar, contiguous in runs of min(T, BLOCK_K) >= 8 elements (16-byte vectors). Rows r >= R of
    the last step are real input rows, so A is masked there (the weight's zeros would turn an
    inf into NaN). RT_C is RT as a constexpr; RT itself may be a runtime value (the loop's
    bound). UNROLL: the steps as straight-line code (inside another loop)."""
    kk = tl.arange(0, BLOCK_K)
    # Runs of 8 lanes are contiguous and start at a multiple of 8 (T and row_step are multiples
    # of 8): said explicitly, as Triton 3.6 does not see it through // and %.
    lanes = tl.max_contiguous(tl.multiple_of((kk // T) * row_step + kk % T, 8), 8)
    if UNROLL:
        for i in tl.static_range((RT_C + BLOCK_K - 1) // BLOCK_K):
            k0 = i * BLOCK_K
            a_ptrs = x_rows[:, None] + ((k0 // T) * row_step + k0 % T + lanes)[None, :]
            if k0 + BLOCK_K <= RT_C:
                a = tl.load(a_ptrs)
            else:
                a = tl.load(a_ptrs, mask=(kk < RT_C - k0)[None, :], other=0.0)
            b = tl.load(w_rows[None, :] + (k0 + kk)[:, None])
            acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)
    else:
        # Whole steps unmasked (a runtime bound, so the loop stays a loop), then the last partial
        # step under a constexpr mask: TAIL is a multiple of T, so the mask keeps 16-byte vectors
        # (under Triton 3.6 a mask against the loop's runtime bound became 2-byte loads).
        TAIL: tl.constexpr = RT_C % BLOCK_K
        full = RT - TAIL
        for k0 in range(0, full, BLOCK_K):
            step = tl.multiple_of((k0 // T) * row_step + k0 % T, 8)  # a whole number of vectors
            a_ptrs = x_rows[:, None] + (step + lanes)[None, :]
            b = tl.load(w_rows[None, :] + (k0 + kk)[:, None])
            acc = mma(tl.load(a_ptrs), b, acc, INPUT_PRECISION, UPCAST)
        if TAIL > 0:
            a_ptrs = x_rows[:, None] + ((full // T) * row_step + lanes)[None, :]
            a = tl.load(a_ptrs, mask=(kk < TAIL)[None, :], other=0.0)
            b = tl.load(w_rows[None, :] + (full + kk)[:, None])
            acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)
    return acc


@triton.jit
def _conv_fwd_span(xs_ptr, ws_ptr, b_ptr, y_ptr, N, HS, RT, P, Q, K, stride_b, stride_yn, stride_yc, stride_yh, stride_yw,
                   pid_m, pid_n, R: tl.constexpr, STRIDE_H: tl.constexpr, DIL_H: tl.constexpr,
                   T: tl.constexpr, RT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
                   INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The forward's span form (one group): output pixel (n, p, q) reads, for filter row r, the
    span Xs[n, p*STRIDE_H + r*DIL_H, q, :] (``span_tensor``), so its whole window is R
    contiguous, 16-byte aligned runs of T elements; no window test, no gather."""
    _, offs_m, offs_n, mask_m, mask_n, n_idx, pq = _out_tile(pid_m, pid_n, N, P, Q, K, BLOCK_M, BLOCK_N)
    x_rows = xs_ptr + ((n_idx * HS + (pq // Q) * STRIDE_H) * Q + pq % Q) * T
    w_rows = ws_ptr + (offs_n % K) * RT_PAD
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc = span_gemm(x_rows, w_rows, DIL_H * Q * T, acc, RT, R * T, T, False, INPUT_PRECISION, UPCAST, BLOCK_K)
    _fwd_epilogue(acc, b_ptr, y_ptr, offs_n, mask_m, mask_n, n_idx, pq, Q, stride_b,
                  stride_yn, stride_yc, stride_yh, stride_yw, HAS_BIAS, ACTIVATION, ACC_DTYPE)


@triton.jit
def _dx_tap(h, w, mask_m, tap, P, Q, S: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
            PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr):
    """Tap (r, s) of the dX gather and, per input pixel (h, w), the output pixel (p, q) it
    receives from through that tap, with whether one exists (the division exact, in range)."""
    r = tap // S
    s = tap % S
    ph = h + PAD_H - r * DIL_H
    pw = w + PAD_W - s * DIL_W
    p = ph // STRIDE_H
    q = pw // STRIDE_W
    ok = mask_m & (ph >= 0) & (pw >= 0) & (p * STRIDE_H == ph) & (q * STRIDE_W == pw) & (p < P) & (q < Q)
    return r, s, p, q, ok


def _prune_dx(configs, named_args, **kwargs):
    """``_prune_by_form``; at most 64 input channels per group keep the 64-wide tiles only
    (``narrow_tiles``: GoogLeNet's 24-channel 5x5 dX on a 128-wide tile, 1.31-1.33x the anchor's
    instructions per HGMMA, static, sm_90); with K_POW2, the K slice of two taps' dY' channels
    (``narrow_channels``) on tiles at most 64 wide: 128x128 on one warpgroup spills (over 900
    bytes, static, sm_90), the tile's non-finite fallback holding a second accumulator."""
    kept = narrow_tiles(_prune_by_form(configs, named_args, **kwargs), named_args["C"], "BLOCK_N")
    k_pow2 = kwargs.get("K_POW2", named_args.get("K_POW2"))
    if not k_pow2:
        return kept
    kept = [cfg for cfg in kept if cfg.kwargs["BLOCK_N"] <= 64] or kept
    return narrow_channels(kept, k_pow2, named_args["dy_ptr"].element_size())


@triton.autotune(configs=_all_conv_configs(), prune_configs_by={"early_config_prune": _prune_dx}, key=["N", "H", "W", "C", "K", "P", "Q", *_GEOMETRY_KEY, "K_POW2"])
@triton.jit
def _conv_bwd_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    N, H, W, C, P, Q, K,  # C and K are per group
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    R: tl.constexpr, S: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    FLAT: tl.constexpr, RESIDUE: tl.constexpr,
    W_MULT: tl.constexpr,  # a factor of C and of W's k, r, s strides (``vector_factor``)
    # 16 or 32 when dY' has that many channels a pixel, those past K zero (``conv2d_backward_prep``'s
    # padding), stride 1, one group: BLOCK_K = 2 * K_POW2 takes two taps a step. Else 0.
    K_POW2: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dX[n,h,w,c] = sum_{r,s,k} dY'[n,(h+pt-r*dh)/sh,(w+pl-s*dw)/sw,k] W[k,c,r,s], the divisions
    exact and in range; dY' arrives masked (``_conv_bwd_prep_kernel``), so no mask and no second
    tensor is loaded in the loop. FLAT reduces over flattened (r, s, k).

    RESIDUE (tap-wise, dilation 1): axis 0 also runs over the sh*sw residue classes of (h, w);
    all pixels of a program share h % sh and w % sw, so exactly the taps r = r0, r0+sh, ... with
    r0 = (h % sh + pt) % sh divide exactly: a stride-s layer visits R*S/(sh*sw) taps, not R*S
    mostly masked ones. With stride 1 there is one class and every tap."""
    # With their factor visible to Triton, the W tile's rows (C channels, e.g. 24 of GoogLeNet's
    # 5x5 branches) stay W_MULT-wide vectors.
    if W_MULT < 16:  # 16: Triton marks it itself
        C = C // W_MULT * W_MULT
        stride_wk, stride_wr, stride_ws = as_multiples(stride_wk, stride_wr, stride_ws, W_MULT)
    pid_m, pid_n = tile_of(tl.program_id(0), tl.cdiv(C, BLOCK_N))
    g = tl.program_id(2).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C
    if RESIDUE:
        HQ = tl.cdiv(H, STRIDE_H)
        WQ = tl.cdiv(W, STRIDE_W)
        m_blocks = tl.cdiv(N * HQ * WQ, BLOCK_M)
        cls = pid_m // m_blocks
        res_h = cls // STRIDE_W
        res_w = cls % STRIDE_W
        offs_m = (pid_m % m_blocks).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        n_idx = offs_m // (HQ * WQ)
        ij = (offs_m % (HQ * WQ)).to(tl.int32)
        h = res_h + (ij // WQ) * STRIDE_H
        w = res_w + (ij % WQ) * STRIDE_W
        mask_m = (offs_m < N * HQ * WQ) & (h < H) & (w < W)
        r0 = (res_h + PAD_H) % STRIDE_H
        s0 = (res_w + PAD_W) % STRIDE_W
        taps_r = tl.cdiv(R - r0, STRIDE_H)
        taps_s = tl.cdiv(S - s0, STRIDE_W)
    else:
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N * H * W
        n_idx = offs_m // (H * W)
        hw = (offs_m % (H * W)).to(tl.int32)
        h = hw // W
        w = hw % W
    dy_base = dy_ptr + g * K * stride_dyc + n_idx * stride_dyn
    w_base = w_ptr + g * K * stride_wk + offs_n * stride_wc
    # Two taps a step (NiN's 10-class 3x3: a flattened step of 2-byte loads through registers,
    # 2.6-2.8x the anchor's instructions per HGMMA, static, sm_90): lanes [0, K_POW2) read tap
    # t's dY' channels, lanes [K_POW2, 2 K_POW2) tap t + 1's, as whole vectors (the channels
    # past K are zeros, their filter rows masked). Stride 1: tap (r, s) reads output pixel
    # (h + pt - r*dh, w + pl - s*dw), rows built once, a tap a scalar shift; bit r*S + s of
    # tap_bits says whether that pixel is in the output.
    PAIRS: tl.constexpr = (not FLAT) and (not RESIDUE) and K_POW2 > 0 and BLOCK_K == 2 * K_POW2
    if PAIRS:
        tl.static_assert(STRIDE_H == 1 and STRIDE_W == 1 and R * S <= 31)
        # One group: no g * K channel offset (K = 10 would hide the rows' 16-byte alignment).
        dy_rows = dy_ptr + n_idx * stride_dyn + (h + PAD_H) * stride_dyh + (w + PAD_W) * stride_dyw  # tap (0, 0)
        tap_bits = tl.zeros((BLOCK_M,), tl.int32)
        for tp in tl.static_range(R * S):
            ph = h + PAD_H - (tp // S) * DIL_H
            pw = w + PAD_W - (tp % S) * DIL_W
            tap_bits |= tl.where(mask_m & (ph >= 0) & (ph < P) & (pw >= 0) & (pw < Q), 1 << tp, 0)
        lanes = tl.arange(0, BLOCK_K)
        second = lanes // K_POW2  # 1 on the lanes of the step's second tap
        ch = lanes % K_POW2
        tap_r = tl.full((), 0, tl.int32)
        tap_s = tl.full((), 0, tl.int32)
        tap_bit = tl.full((), 1, tl.int32)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if FLAT:
        steps = tl.cdiv(R * S * K, BLOCK_K)
    elif PAIRS:
        steps = tl.cdiv(K, BLOCK_K) * ((R * S + 1) // 2)  # cdiv 1, at run time: the loop stays a loop
    elif RESIDUE:
        k_blocks = tl.cdiv(K, BLOCK_K)
        steps = taps_r * taps_s * k_blocks
    else:
        k_blocks = tl.cdiv(K, BLOCK_K)
        steps = R * S * k_blocks
    for t in range(0, steps):
        if FLAT:
            kk = t * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = kk < R * S * K
            k = kk % K
            r = (kk // K) // S
            s = (kk // K) % S
            ph = h[:, None] + PAD_H - (r * DIL_H)[None, :]
            pw = w[:, None] + PAD_W - (s * DIL_W)[None, :]
            p = ph // STRIDE_H
            q = pw // STRIDE_W
            ok = (ph >= 0) & (pw >= 0) & (p * STRIDE_H == ph) & (q * STRIDE_W == pw) & (p < P) & (q < Q)
            mask_a = mask_m[:, None] & k_ok[None, :] & ok
            dy_ptrs = dy_base[:, None] + p * stride_dyh + q * stride_dyw + (k * stride_dyc)[None, :]
            w_off = k * stride_wk + r * stride_wr + s * stride_ws
        elif PAIRS:
            # Taps (tap_r, tap_s) and the next (r1, s1); past the last tap (R*S odd) r1 = R: no
            # row has its bit and its filter lanes are masked.
            wrap = tap_s + 1 == S
            r1 = tl.where(wrap, tap_r + 1, tap_r)
            s1 = tl.where(wrap, 0, tap_s + 1)
            mask_a = (tap_bits[:, None] & (tap_bit << second)[None, :]) != 0
            off0 = -(tap_r * (DIL_H * stride_dyh) + tap_s * (DIL_W * stride_dyw))
            off1 = -(r1 * (DIL_H * stride_dyh) + s1 * (DIL_W * stride_dyw))
            # base + second * delta (not a select of two offsets): K_POW2 contiguous lanes a tap.
            dy_ptrs = dy_rows[:, None] + (off0 + second * (off1 - off0) + ch * stride_dyc)[None, :]
            w0 = tap_r * stride_wr + tap_s * stride_ws
            w_off = ch * stride_wk + w0 + second * (r1 * stride_wr + s1 * stride_ws - w0)
            k_ok = (ch < K) & (second * r1 < R)
            wrap = s1 + 1 == S
            tap_r = tl.where(wrap, r1 + 1, r1)
            tap_s = tl.where(wrap, 0, s1 + 1)
            tap_bit = tap_bit << 2
        else:
            tap = t // k_blocks
            k = (t % k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = k < K
            if RESIDUE:
                r = r0 + (tap // taps_s) * STRIDE_H
                s = s0 + (tap % taps_s) * STRIDE_W
                ph = h + PAD_H - r  # divisible by STRIDE_H by construction
                pw = w + PAD_W - s
                p = ph // STRIDE_H
                q = pw // STRIDE_W
                ok = mask_m & (ph >= 0) & (pw >= 0) & (p < P) & (q < Q)
            else:
                r, s, p, q, ok = _dx_tap(h, w, mask_m, tap, P, Q, S, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W)
            mask_a = ok[:, None] & k_ok[None, :]
            dy_ptrs = (dy_base + p * stride_dyh + q * stride_dyw)[:, None] + (k * stride_dyc)[None, :]
            w_off = k * stride_wk + r * stride_wr + s * stride_ws
        a = tl.load(dy_ptrs, mask=mask_a, other=0.0)
        b = tl.load(w_base[None, :] + w_off[:, None], mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, INPUT_PRECISION, UPCAST)

    # A (pixel, tap) pair that no output reaches still multiplies its zeroed dY' lane by the
    # weight: exact for finite weights, but 0 * inf and 0 * NaN would turn pixels NaN that torch
    # leaves finite. Such a tile is non-finite, and only then is it recomputed tap by tap with
    # the unreached pixels excluded from each tap's sum (torch's col2im semantics).
    tile = mask_m[:, None] & mask_n[None, :]
    if tl.sum((nonfinite(acc) & tile).to(tl.int32)) > 0:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for tap in range(0, R * S):
            r, s, p, q, ok = _dx_tap(h, w, mask_m, tap, P, Q, S, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W)
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
            for k0 in range(0, K, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                k_ok = k < K
                mask_a = ok[:, None] & k_ok[None, :]
                pix = p * stride_dyh + q * stride_dyw
                a = tl.load((dy_base + pix)[:, None] + (k * stride_dyc)[None, :], mask=mask_a, other=0.0)
                w_off = k * stride_wk + r * stride_wr + s * stride_ws
                b = tl.load(w_base[None, :] + w_off[:, None], mask=k_ok[:, None] & mask_n[None, :], other=0.0)
                part = mma(a, b, part, INPUT_PRECISION, UPCAST)
            acc += tl.where(ok[:, None], part, 0.0)

    dx_off = n_idx * stride_dxn + h * stride_dxh + w * stride_dxw
    dx_ptrs = dx_ptr + dx_off[:, None] + ((g * C + offs_n) * stride_dxc)[None, :]
    tl.store(dx_ptrs, to_dtype(acc, dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def store_split_tile(acc, part_ptr, part_split_stride, part_row_stride, part_cols, dw_ptr, dw_row_stride, dw_cols,
                     row0, rows_left, cols_ok, count_ptr, split, SPLITS,
                     BLOCK_M: tl.constexpr, SUB_M: tl.constexpr):
    """Store a dW tile (rows row0 .. row0 + BLOCK_M, the first ``rows_left`` of them real) from the
    program of reduction split ``split`` of ``SPLITS``. One split: the tile itself, cast to dW's
    dtype. Several: this split's fp32 partial, then one count of the tile's finished splits (an
    atomic, released after every thread's partial is written); the program that finishes last
    sums the partials in split order, so the result is the same bits whichever program that is,
    writes dW and sets the count back to 0 for the next launch (a CUDA graph replays it).
    Element (i, j) of split s's partial is at ``part_ptr + s * part_split_stride + i *
    part_row_stride + part_cols[j]``, of dW at ``dw_ptr + i * dw_row_stride + dw_cols[j]``. The
    sum runs SUB_M rows at a time, so it needs few registers beside the loop's."""
    m = tl.arange(0, BLOCK_M)
    mask = (m < rows_left)[:, None] & cols_ok[None, :]
    rows = row0 + m
    if SPLITS == 1:
        dw_ptrs = dw_ptr + (rows * dw_row_stride)[:, None] + dw_cols[None, :]
        tl.store(dw_ptrs, to_dtype(acc, dw_ptr.dtype.element_ty), mask=mask)
    else:
        offs = (rows * part_row_stride)[:, None] + part_cols[None, :]
        if split_done(acc, part_ptr, offs, mask, part_split_stride, count_ptr, split, SPLITS):
            for m0 in tl.static_range(0, BLOCK_M, SUB_M):
                sub = m0 + tl.arange(0, SUB_M)
                sub_mask = (sub < rows_left)[:, None] & cols_ok[None, :]
                sub_offs = ((row0 + sub) * part_row_stride)[:, None] + part_cols[None, :]
                total = split_sum(part_ptr, sub_offs, sub_mask, part_split_stride, SPLITS)
                dw_ptrs = dw_ptr + ((row0 + sub) * dw_row_stride)[:, None] + dw_cols[None, :]
                tl.store(dw_ptrs, to_dtype(total, dw_ptr.dtype.element_ty), mask=sub_mask)
            tl.atomic_xchg(count_ptr, 0, sem="relaxed")


@triton.jit
def split_done(acc, part_ptr, offs, mask, split_stride, count_ptr, split, SPLITS):
    """Store split ``split``'s fp32 partial of a tile (element offsets ``offs`` past the split's
    base), then count it (an atomic, released after every thread's partial is written): True in
    the program whose count completes the tile's SPLITS."""
    tl.store(part_ptr + split.to(tl.int64) * split_stride + offs, acc, mask=mask)
    tl.debug_barrier()
    return tl.atomic_add(count_ptr, 1, sem="acq_rel") == SPLITS - 1


@triton.jit
def split_sum(part_ptr, offs, mask, split_stride, SPLITS):
    """The tile's partials summed in split order (the same bits whichever program runs it).
    .cg: the other programs' partials are read from L2, never from a stale L1 line."""
    ptr = part_ptr
    total = tl.load(ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
    for _ in range(1, SPLITS):
        ptr += split_stride
        total += tl.load(ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
    return total


def dw_span_configs() -> list[triton.Config]:
    """Configs of the span form of the generic dW (first layers): BLOCK_K is the step's 64 pixel
    lanes (``SPAN_LANES``) for every dtype, since the host splits rows into lanes; each keeps
    both wgmma operands in shared memory (``cnnkernels.report``)."""

    def cfg(bm, bn, bk, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)

    return pick_configs(gpu=[cfg(64, 64, SPAN_LANES, 4, 3), cfg(64, 64, SPAN_LANES, 4, 4)],
                        interpreter=[cfg(256, 128, SPAN_LANES, 4, 1)])


# Pixel lanes per step of the span form (whole output rows, or equal segments of a wider row).
SPAN_LANES = 64
_SPAN_LANES = tl.constexpr(SPAN_LANES)


def _prune_dw(configs, named_args, **kwargs):
    """``_prune_by_form``; the span form's own configs, unchanged for every dtype."""
    if kwargs.get("SPAN", named_args.get("SPAN")):
        return dw_span_configs()
    return _prune_by_form(configs, named_args, **kwargs)


@triton.autotune(configs=_all_conv_configs(), prune_configs_by={"early_config_prune": _prune_dw}, key=["N", "H", "W", "C", "K", "P", "Q", "CHUNK", *_GEOMETRY_KEY, "SPAN"])
@triton.jit
def _conv_bwd_weight_kernel(
    x_ptr, dy_ptr, dw_ptr, dw_part_ptr, count_ptr,
    N, H, W, C, P, Q, K, G, CHUNK, SPLITS,  # C and K are per group; CHUNK = output pixels per split
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    R: tl.constexpr, S: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    FLAT: tl.constexpr,
    # The span form (first layers, see ``conv2d_backward_weight``): x_ptr is the span tensor,
    # SPAN_T its span width, SPAN_Q = Q; a step is SPAN_ROWS whole output rows, or (SPAN_ROWS = 0)
    # one of SPAN_SEGS equal segments of a row.
    SPAN: tl.constexpr, SPAN_T: tl.constexpr, SPAN_Q: tl.constexpr, SPAN_ROWS: tl.constexpr, SPAN_SEGS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Partial dW[k, (r,s,c)] = sum_{i in chunk} dY'[i, k] X[i, (r,s,c)] over output pixels i, dY'
    masked beforehand and db summed there (``_conv_bwd_prep_kernel``): the loop holds the MMA only.
    Axis 1 runs over column tiles (one tap x a channel
    block, or a block of the flattened (r, s, c) index when FLAT); axis 2 over (split, group).

    SPAN (one group, dilation 1 along W, pixel-linear dY'): X arrives as the span tensor
    Xs[n, h, q, t] = Xpad[n, h, (q*STRIDE_W)*C + t] (``span_tensor``: the zero-padded input, each
    row flattened over (w, c)), so the columns (r, t), t = s*C + c < S*C, of output pixel (n, p, q)
    are row p*STRIDE_H + r*DIL_H of Xs: one contiguous span of SPAN_T elements per tap row, read
    in 16-byte vectors, with no window test. CHUNK counts output rows (n, p) per split; a step
    moves both pointers by scalars (no pixel decode), the lanes' mask is fixed per step kind."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    split = pid_z // G
    g = (pid_z % G).to(tl.int64)

    offs_k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if SPAN:
        tl.static_assert(BLOCK_K == _SPAN_LANES, "the host splits rows into SPAN_LANES pixel lanes")
        RT: tl.constexpr = R * SPAN_T
        col = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        r = col // SPAN_T
        t = col % SPAN_T
        s = t // C
        c = t % C
        col_ok = (col < RT) & (t < S * C)
        # Columns past R*SPAN_T read column col % (R*SPAN_T) and rows past K row k % K (no mask
        # for them in the loop); their results are never stored.
        colw = col % RT
        x_cols = (colw // SPAN_T) * (DIL_H * SPAN_Q * SPAN_T) + colw % SPAN_T
        # Runs of 8 columns stay in one tap row and 8-aligned span (SPAN_T and R*SPAN_T are
        # multiples of 8): 16-byte vectors, which the compiler cannot see through // and %.
        x_cols = tl.max_contiguous(tl.multiple_of(x_cols, 8), 8)
        j = tl.arange(0, BLOCK_K)
        row0 = split * CHUNK
        row_end = tl.minimum(row0 + CHUNK, N * P)
        p0 = row0 % P
        # Xs position in units of SPAN_T elements (so the compiler sees 16-byte alignment).
        xo = ((row0 // P).to(tl.int64) * H + p0 * STRIDE_H) * SPAN_Q
        dy_ptrs = dy_ptr + ((g * K + offs_k % K) * stride_dyc)[:, None] + ((row0.to(tl.int64) * SPAN_Q + j) * stride_dyw)[None, :]
        img_skip = (H - P * STRIDE_H) * SPAN_Q  # from past an image's last output row to the next image
        if SPAN_ROWS >= 1:
            x_lane = (j // SPAN_Q) * (STRIDE_H * SPAN_Q) + j % SPAN_Q
            x_ptrs = x_ptr + ((xo + x_lane) * SPAN_T)[:, None] + x_cols[None, :]
            live = j < SPAN_ROWS * SPAN_Q
            for _ in range(0, (row_end - row0) // SPAN_ROWS):
                a = tl.load(dy_ptrs, mask=live[None, :], other=0.0)
                xb = tl.load(x_ptrs, mask=live[:, None], other=0.0)
                acc = mma(a, xb, acc, INPUT_PRECISION, UPCAST)
                dy_ptrs += SPAN_ROWS * SPAN_Q * stride_dyw
                p0 += SPAN_ROWS
                wrap = p0 == P
                p0 = tl.where(wrap, 0, p0)
                x_ptrs += tl.where(wrap, img_skip + SPAN_ROWS * STRIDE_H * SPAN_Q, SPAN_ROWS * STRIDE_H * SPAN_Q) * SPAN_T
        else:
            WSEG: tl.constexpr = (SPAN_Q + SPAN_SEGS - 1) // SPAN_SEGS
            x_ptrs = x_ptr + ((xo + j) * SPAN_T)[:, None] + x_cols[None, :]
            seg = tl.full((), 0, tl.int32)
            for _ in range(0, (row_end - row0) * SPAN_SEGS):
                live = j < tl.minimum(WSEG, SPAN_Q - seg * WSEG)
                a = tl.load(dy_ptrs, mask=live[None, :], other=0.0)
                xb = tl.load(x_ptrs, mask=live[:, None], other=0.0)
                acc = mma(a, xb, acc, INPUT_PRECISION, UPCAST)
                seg += 1
                next_row = seg == SPAN_SEGS
                seg = tl.where(next_row, 0, seg)
                p0 = tl.where(next_row, p0 + 1, p0)
                wrap = p0 == P
                p0 = tl.where(wrap, 0, p0)
                dy_ptrs += tl.where(next_row, SPAN_Q - (SPAN_SEGS - 1) * WSEG, WSEG) * stride_dyw
                x_step = tl.where(next_row, STRIDE_H * SPAN_Q - (SPAN_SEGS - 1) * WSEG, WSEG) + tl.where(wrap, img_skip, 0)
                x_ptrs += x_step * SPAN_T
        part_split = G * K * RT
        part_row = RT
    else:
        NPQ = N * P * Q
        mask_k = offs_k < K
        if FLAT:
            col = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = col < R * S * C
            c = col % C
            r = (col // C) // S
            s = (col // C) % S
        else:
            c_blocks = tl.cdiv(C, BLOCK_N)
            rs = pid_n // c_blocks
            r = rs // S
            s = rs % S
            c = (pid_n % c_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = c < C
            col = rs * C + c

        dy_base = dy_ptr + (g * K + offs_k) * stride_dyc
        x_base = x_ptr + (g * C + c) * stride_xc

        start = split.to(tl.int64) * CHUNK
        end = tl.minimum(start + CHUNK, NPQ)
        for i0 in range(start, end, BLOCK_K):
            offs_i = i0 + tl.arange(0, BLOCK_K)
            mask_i = offs_i < end
            n_idx = offs_i // (P * Q)
            pq = (offs_i % (P * Q)).to(tl.int32)
            p = pq // Q
            q = pq % Q
            mask_a = mask_k[:, None] & mask_i[None, :]
            a = tl.load(dy_base[:, None] + (n_idx * stride_dyn + p * stride_dyh + q * stride_dyw)[None, :], mask=mask_a, other=0.0)
            if FLAT:
                ih = (p * STRIDE_H - PAD_H)[:, None] + (r * DIL_H)[None, :]
                iw = (q * STRIDE_W - PAD_W)[:, None] + (s * DIL_W)[None, :]
                mask_b = mask_i[:, None] & col_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_ptrs = x_base[None, :] + (n_idx * stride_xn)[:, None] + ih * stride_xh + iw * stride_xw
            else:
                ih = p * STRIDE_H - PAD_H + r * DIL_H
                iw = q * STRIDE_W - PAD_W + s * DIL_W
                row_ok = mask_i & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                mask_b = row_ok[:, None] & col_ok[None, :]
                x_ptrs = x_base[None, :] + (n_idx * stride_xn + ih * stride_xh + iw * stride_xw)[:, None]
            xb = tl.load(x_ptrs, mask=mask_b, other=0.0)
            acc = mma(a, xb, acc, INPUT_PRECISION, UPCAST)
        part_split = G * K * R * S * C
        part_row = R * S * C

    # Partials are laid out [split, g, k, column], contiguous (column: (r,s,c), or (r,t) for SPAN).
    tile = pid_m + tl.num_programs(0) * (pid_n + tl.num_programs(1) * g)
    store_split_tile(acc, dw_part_ptr, part_split, part_row, col,
                     dw_ptr, stride_wk, c * stride_wc + r * stride_wr + s * stride_ws,
                     (g * K + pid_m * BLOCK_M).to(tl.int32), K - pid_m * BLOCK_M, col_ok, count_ptr + tile, split, SPLITS,
                     BLOCK_M, 32)


def dw_rows_configs() -> list[triton.Config]:
    """Configs of the row-tiled dW kernel; each keeps both wgmma operands in shared memory and
    compiles unserialised (no C7515) under Triton 3.6 and 3.9 (``cnnkernels.report``)."""

    def cfg(bm, bn, bk, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)

    return pick_configs(gpu=[cfg(128, 128, 64, 8, 3), cfg(64, 64, 64, 4, 3)], interpreter=[cfg(256, 128, 64, 4, 1)])


def dw_rows_narrow_configs() -> list[triton.Config]:
    """Configs of the row-tiled dW for at most 32 channels per group (GoogLeNet's 5x5 branches
    read 16, 24 or 32): a 32-wide channel block, so a tap's columns are not mostly padding."""

    def cfg(bm, bn, bk, warps, stages):
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)

    return pick_configs(gpu=[cfg(64, 32, 64, 4, 3), cfg(128, 32, 64, 8, 3)], interpreter=[cfg(256, 32, 64, 4, 1)])


# Channels per group up to which the row-tiled dW takes its narrow configs.
DW_ROWS_NARROW = 32


def _prune_dw_rows(configs, named_args, **kwargs):
    """The narrow configs for at most ``DW_ROWS_NARROW`` channels per group, else the wide ones;
    fitted to the dtype (``fit_to_dtype``)."""
    c = named_args.get("C", kwargs.get("C"))
    kept = dw_rows_narrow_configs() if c <= DW_ROWS_NARROW else dw_rows_configs()
    return fit_to_dtype(kept, named_args["x_ptr"].element_size())


# Widest output row the row-tiled dW takes whole (ROWS >= 1 rows per step at BLOCK_K = 64 pixel
# lanes); wider rows are taken in segments of at most BLOCK_K columns.
DW_ROW_LANES = 64


@triton.autotune(configs=dw_rows_configs(), prune_configs_by={"early_config_prune": _prune_dw_rows}, key=["N", "C", "K", "CHUNK_ROWS", "P", "Q", "R", "S", "DIL_H", "DIL_W", "HI", "WI", "STRIDE_H", "STRIDE_W"])
@triton.jit
def _conv_bwd_weight_rows_kernel(
    x_ptr, dy_ptr, dw_ptr, dw_part_ptr, count_ptr,
    N, C, K, G, CHUNK_ROWS, SPLITS,  # C and K are per group; CHUNK_ROWS = output rows (n, p) per split
    # X and dY' are pixel-linear: pixel i at i * stride_w, passed as stride_w / W_MULT with the
    # factor W_MULT constexpr, so a channel slice of a wider NHWC buffer (pixels of e.g. 152
    # channels) is known 16-byte aligned without its stride being a multiple of 16 elements.
    stride_xc, stride_xw_div, stride_dyc, stride_dyw_div,
    stride_wk, stride_wc, stride_wr, stride_ws,
    XW_MULT: tl.constexpr, DYW_MULT: tl.constexpr,
    C_MULT: tl.constexpr,  # a known factor of C (8 of C = 24): the wrapped channel stays 8-wide contiguous
    K_READ: tl.constexpr,  # 0, or a power of two > K of dY' channels readable at every pixel (``readable_channels``)
    # P, Q (the output) and HI, WI (the input) are constexpr: the lane -> (row, column) split
    # and the periodic row-validity pattern fold to constants once per program.
    P: tl.constexpr, Q: tl.constexpr, HI: tl.constexpr, WI: tl.constexpr,
    R: tl.constexpr, S: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Partial dW[k, (r,s,c)] as ``_conv_bwd_weight_kernel``, for convolutions whose X and dY' are
    pixel-linear (NHWC with whole images, a channel slice allowed): output pixel (n, p, q) is
    i = (n*P + p)*Q + q and its input through tap (r, s) is ((n*HI + p*sh + r*dh - pt)*WI +
    q*sw + s*dw - pl), so a step's addresses are loop-invariant lanes plus one scalar, and a
    lane whose row is in the next image adds the image's skip (HI - P*sh)*WI (0 for stride-1
    'same' layers and for stride-s layers whose input is s times the output). A step covers ROWS
    whole output rows (lane j: row j // Q, column j % Q; lanes past ROWS*Q idle) or, for rows
    wider than BLOCK_K, one of SEGS equal segments of a row. Where the
    tap leaves the image is a per-lane column test fixed for the program (per segment: one bit
    each) and a per-row test read from one scalar bit pattern, so the loop decodes no pixel index
    and divides nothing.
    Splits run over whole output rows (axis 2: split, group); axis 1: one tap x a channel block."""
    ROWS: tl.constexpr = (BLOCK_K // Q) if (BLOCK_K // Q) < 32 else 32
    SEGS: tl.constexpr = (Q + BLOCK_K - 1) // BLOCK_K
    stride_xw = stride_xw_div * XW_MULT
    stride_dyw = stride_dyw_div * DYW_MULT
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    split = pid_z // G
    g = (pid_z % G).to(tl.int64)

    offs_k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    c_blocks = tl.cdiv(C, BLOCK_N)
    rs = pid_n // c_blocks
    r = rs // S
    s = rs % S
    c = (pid_n % c_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows past K and columns past C load row k % K and column c % C instead (no mask in the
    # loop); their results are never stored. With K_READ, rows k % K_READ: K_READ-wide vectors
    # of a pixel's channels (NiN's 10-class layer: 16 channels, 32 bytes, not ten 2-byte loads),
    # the rows past K reading the pixel's padding, whatever it holds.
    dy_ptrs = dy_ptr + ((g * K + offs_k % (K_READ if K_READ > 0 else K)) * stride_dyc)[:, None]
    x_ptrs = x_ptr + ((g * C + c % ((C // C_MULT) * C_MULT)) * stride_xc)[None, :]
    row0 = split * CHUNK_ROWS
    row_end = tl.minimum(row0 + CHUNK_ROWS, N * P)
    tap = (r * DIL_H - PAD_H) * WI + (s * DIL_W - PAD_W)  # input pixel shift of the tap; may be < 0
    # Output rows p in [lo, hi) read inside the image: 0 <= p*sh + r*dh - pt < HI.
    lo = tl.maximum(PAD_H - r * DIL_H + STRIDE_H - 1, 0) // STRIDE_H
    top = HI - 1 + PAD_H - r * DIL_H
    hi = tl.minimum(tl.where(top >= 0, top // STRIDE_H + 1, 0), P)
    SKIP: tl.constexpr = (HI - P * STRIDE_H) * WI  # input pixels from an image's last output row to the next image's
    ROW_X: tl.constexpr = STRIDE_H * WI  # input pixels per output row
    p0 = row0 % P
    n0 = row0 // P
    j = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptrs + ((n0.to(tl.int64) * HI * WI + p0 * ROW_X + tap) * stride_xw)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if ROWS >= 1:
        dr = j // Q
        iw = (j % Q) * STRIDE_W + s * DIL_W - PAD_W
        # Lane j's row as one bit; 0 for idle lanes (and, for X, where the tap leaves the image
        # sideways): a lane loads when its bit meets the step's bit pattern of live rows.
        bit = tl.where(dr < ROWS, 1 << tl.minimum(dr, 31), 0)
        bit_x = tl.where((iw >= 0) & (iw < WI), bit, 0)
        # Bit u: output row u mod P reads inside the image (u < 64; P + ROWS <= 65 is checked by
        # the launcher), so a step starting at row p0 reads its pattern as pat >> p0.
        u = tl.arange(0, 64)
        pat = tl.sum(tl.where((u % P >= lo) & (u % P < hi), tl.full((64,), 1, tl.uint64) << u.to(tl.uint64), 0), axis=0)
        dy_ptrs = dy_ptrs + ((row0.to(tl.int64) * Q + j) * stride_dyw)[None, :]
        x_lanes = dr * ROW_X + (j % Q) * STRIDE_W
        if SKIP == 0:  # the lanes' addresses are one tile moved by a scalar
            x_tile = x_ptrs + (x_lanes * stride_xw)[:, None]
        left = row_end - row0
        for _ in range(0, tl.cdiv(row_end - row0, ROWS)):
            live = ((tl.full((), 1, tl.int64) << tl.minimum(left, ROWS)) - 1).to(tl.int32)
            rows_x = (pat >> p0.to(tl.uint64)).to(tl.int32) & live
            a = tl.load(dy_ptrs, mask=((bit & live) != 0)[None, :], other=0.0)
            if SKIP == 0:
                xb = tl.load(x_tile, mask=((bit_x & rows_x) != 0)[:, None], other=0.0)
                x_tile += ROWS * ROW_X * stride_xw
            else:  # a lane whose row lies in a later image skips the rest of each image before it
                x_off = x_lanes + ((p0 + dr) // P) * SKIP
                xb = tl.load(x_ptrs + (x_off * stride_xw)[:, None], mask=((bit_x & rows_x) != 0)[:, None], other=0.0)
            acc = mma(a, xb, acc, INPUT_PRECISION, UPCAST)
            dy_ptrs += ROWS * Q * stride_dyw
            left -= ROWS
            p_next = p0 + ROWS % P
            if SKIP != 0:
                wraps = ROWS // P + (p_next >= P).to(tl.int32)  # images entered by this step
                x_ptrs += (ROWS * ROW_X + wraps * SKIP) * stride_xw
            p0 = tl.where(p_next >= P, p_next - P, p_next)
    else:
        # A row in SEGS segments of WSEG columns (lanes past WSEG idle). Bit k of a lane's seg_dy
        # (seg_x): in segment k the lane's column is in the row (and its tap column in the
        # image); a step tests one scalar bit, zero for X when the tap's input row is outside.
        WSEG: tl.constexpr = (Q + SEGS - 1) // SEGS
        seg_dy = tl.zeros((BLOCK_K,), tl.int32)
        seg_x = tl.zeros((BLOCK_K,), tl.int32)
        for k in tl.static_range(SEGS):
            q = k * WSEG + j
            iw = q * STRIDE_W + s * DIL_W - PAD_W
            ok = (j < WSEG) & (q < Q)
            seg_dy |= tl.where(ok, 1 << k, 0)
            seg_x |= tl.where(ok & (iw >= 0) & (iw < WI), 1 << k, 0)
        dy_ptrs = dy_ptrs + ((row0.to(tl.int64) * Q + j) * stride_dyw)[None, :]
        x_ptrs = x_ptrs + ((j * STRIDE_W) * stride_xw)[:, None]
        seg_bit = tl.full((), 1, tl.int32)
        for _ in range(0, (row_end - row0) * SEGS):
            row_bit = tl.where((p0 >= lo) & (p0 < hi), seg_bit, 0)
            a = tl.load(dy_ptrs, mask=((seg_dy & seg_bit) != 0)[None, :], other=0.0)
            xb = tl.load(x_ptrs, mask=((seg_x & row_bit) != 0)[:, None], other=0.0)
            acc = mma(a, xb, acc, INPUT_PRECISION, UPCAST)
            seg_bit = seg_bit << 1
            wrap = seg_bit == (1 << SEGS)
            # Next segment: WSEG columns on; after the last, column 0 of the next row (of the
            # next image after an image's last row).
            dy_ptrs += tl.where(wrap, Q - (SEGS - 1) * WSEG, WSEG) * stride_dyw
            seg_bit = tl.where(wrap, 1, seg_bit)
            p0 = tl.where(wrap, p0 + 1, p0)
            next_img = p0 == P
            p0 = tl.where(next_img, 0, p0)
            x_step = tl.where(wrap, ROW_X - (SEGS - 1) * WSEG * STRIDE_W, WSEG * STRIDE_W)
            x_ptrs += (x_step + tl.where(next_img, SKIP, 0)) * stride_xw

    # Partials are laid out [split, g, k, (r,s,c)], contiguous, as the generic kernel's.
    tile = pid_m + tl.num_programs(0) * (pid_n + tl.num_programs(1) * g)
    store_split_tile(acc, dw_part_ptr, G * K * R * S * C, R * S * C, rs * C + c,
                     dw_ptr, stride_wk, c * stride_wc + r * stride_wr + s * stride_ws,
                     (g * K + pid_m * BLOCK_M).to(tl.int32), K - pid_m * BLOCK_M, c < C, count_ptr + tile, split, SPLITS,
                     BLOCK_M, 32)


PREP_BLOCK_M = 256 if INTERPRET else 64


def prep_configs() -> list[triton.Config]:
    """Tiles of pixels x channels for the elementwise dY' pass (channels contiguous in NHWC)."""

    def cfg(bm, bc, warps):
        return triton.Config({"BLOCK_M": bm, "BLOCK_C": bc}, num_warps=warps, num_stages=1)

    # One BLOCK_M for every config: the db partials have one row per block of pixels, so the
    # host knows their count (and the fixed summation order) without asking the autotuner.
    return pick_configs(
        gpu=[cfg(PREP_BLOCK_M, 64, 4), cfg(PREP_BLOCK_M, 128, 4), cfg(PREP_BLOCK_M, 32, 2)],
        interpreter=[cfg(PREP_BLOCK_M, 64, 4)],
    )


@triton.jit
def _two_way_load(t0_ptr, t1_ptr, n, h, w, offs_c, mask, in0, SPLIT,
                  s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w, TWO_WAY: tl.constexpr):
    """A [pixels, channels] tile whose channels below SPLIT come from t0 and the rest from t1."""
    v = tl.load(t0_ptr + (n * s0n + h * s0h + w * s0w)[:, None] + (offs_c * s0c)[None, :], mask=mask & in0, other=0.0)
    if TWO_WAY:
        c1 = ((offs_c - SPLIT) * s1c)[None, :]
        v1 = tl.load(t1_ptr + (n * s1n + h * s1h + w * s1w)[:, None] + c1, mask=mask & ~in0, other=0.0)
        v = tl.where(in0, v, v1)
    return v


@triton.autotune(configs=prep_configs(), key=["M", "K", "SPLIT"])
@triton.jit
def _conv_bwd_prep_kernel(
    dy0_ptr, dy1_ptr, y0_ptr, y1_ptr, out_ptr, db_part_ptr,
    M, PQ, Q, K, SPLIT,  # M = N*P*Q pixels; channels below SPLIT come from dy0/y0, the rest from dy1/y1
    K_STORE,  # channels written a pixel: K, then zeros up to the out buffer's pixel stride
    stride_dy0n, stride_dy0c, stride_dy0h, stride_dy0w,
    stride_dy1n, stride_dy1c, stride_dy1h, stride_dy1w,
    stride_y0n, stride_y0c, stride_y0h, stride_y0w,
    stride_y1n, stride_y1c, stride_y1h, stride_y1w,
    stride_on, stride_oc, stride_oh, stride_ow,
    ACTIVATION: tl.constexpr, TWO_WAY: tl.constexpr, WRITE_OUT: tl.constexpr, NEED_DB: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    K_MULT: tl.constexpr, PIX_MULT: tl.constexpr,  # factors of K, SPLIT and of every pixel stride
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dY' = dY where Y > 0 else 0 under ReLU (torch's threshold_backward: a NaN in Y passes dY),
    written once for the dX and dW GEMMs so their loops load one operand and apply no mask; and
    per-program db partials, the column sums of this program's dY' rows (summed in a fixed order
    afterwards). Two-way: channels >= SPLIT come from a second tensor (Inception's 1x1 convs)."""
    # Written with their factors visible to Triton (``vector_factor``): the channel masks and
    # pixel addresses then keep K_MULT-wide vectors (K = 280: 8 channels, 16 bytes in bf16).
    if K_MULT < 16:  # 16: Triton marks them itself
        K = K // K_MULT * K_MULT
        SPLIT = SPLIT // K_MULT * K_MULT
    if PIX_MULT < 16:
        stride_dy0n, stride_dy0h, stride_dy0w = as_multiples(stride_dy0n, stride_dy0h, stride_dy0w, PIX_MULT)
        stride_dy1n, stride_dy1h, stride_dy1w = as_multiples(stride_dy1n, stride_dy1h, stride_dy1w, PIX_MULT)
        stride_y0n, stride_y0h, stride_y0w = as_multiples(stride_y0n, stride_y0h, stride_y0w, PIX_MULT)
        stride_y1n, stride_y1h, stride_y1w = as_multiples(stride_y1n, stride_y1h, stride_y1w, PIX_MULT)
        stride_on, stride_oh, stride_ow = as_multiples(stride_on, stride_oh, stride_ow, PIX_MULT)
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_m < M)[:, None] & (offs_c < K)[None, :]
    n = offs_m // PQ
    pq = (offs_m % PQ).to(tl.int32)
    h = pq // Q
    w = pq % Q
    in0 = (offs_c < SPLIT)[None, :]
    a = _two_way_load(dy0_ptr, dy1_ptr, n, h, w, offs_c, mask, in0, SPLIT,
                      stride_dy0n, stride_dy0c, stride_dy0h, stride_dy0w,
                      stride_dy1n, stride_dy1c, stride_dy1h, stride_dy1w, TWO_WAY)
    if ACTIVATION == "relu":
        yv = _two_way_load(y0_ptr, y1_ptr, n, h, w, offs_c, mask, in0, SPLIT,
                           stride_y0n, stride_y0c, stride_y0h, stride_y0w,
                           stride_y1n, stride_y1c, stride_y1h, stride_y1w, TWO_WAY)
        # Compared in ACC_DTYPE: exact, and under the interpreter bf16 compares raw bit patterns.
        a = tl.where(yv.to(ACC_DTYPE) <= 0, tl.zeros_like(a), a)
    if WRITE_OUT:  # a (zero past K) also fills the buffer's padding: the dX kernel's K_POW2 reads it
        o = (n * stride_on + h * stride_oh + w * stride_ow)[:, None] + (offs_c * stride_oc)[None, :]
        tl.store(out_ptr + o, a, mask=(offs_m < M)[:, None] & (offs_c < K_STORE)[None, :])
    if NEED_DB:
        col = tl.sum(tl.where(mask, a.to(ACC_DTYPE), 0.0), axis=0)
        tl.store(db_part_ptr + pid_m.to(tl.int64) * K + offs_c, col, mask=offs_c < K)


@triton.autotune(configs=reduce_configs(), key=["E", "SPLITS"])
@triton.jit
def _conv_bwd_reduce_kernel(
    part_ptr, out_ptr,
    E, SPLITS, C,  # E = K_total * R * S * C partial elements; C per group
    stride_ok, stride_oc, stride_or, stride_os,
    R: tl.constexpr, S: tl.constexpr,
    E_MULT: tl.constexpr,  # a factor of E: a split's partials stay 16-byte aligned for Triton
    BLOCK: tl.constexpr,
):
    """out[k, c, r, s] = sum over splits of part[split, k, (r, s, c)], in split order."""
    if E_MULT < 16:  # 16: Triton marks it itself
        E = E // E_MULT * E_MULT
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < E
    total = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for sp in range(1, SPLITS):
        total += tl.load(part_ptr + sp * E + offs, mask=mask, other=0.0)
    k = offs // (R * S * C)
    j = offs % (R * S * C)
    c = j % C
    rs = j // C
    out_off = k * stride_ok + c * stride_oc + (rs // S) * stride_or + (rs % S) * stride_os
    tl.store(out_ptr + out_off, to_dtype(total, out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers: check -> allocate -> grid -> launch.
# ----------------------------------------------------------------------------------------------


# Elements per program of the span fill: a few thousand on a GPU, many under the interpreter
# (whose cost grows with the number of programs).
SPAN_FILL_ELEMENTS = 65536 if INTERPRET else 1024


@triton.jit
def _span_fill_kernel(
    x_ptr, xs_ptr, H, W, ROWS, HS, QT,
    stride_xn, stride_xc, stride_xh, stride_xw,
    C: tl.constexpr, S: tl.constexpr, T: tl.constexpr,
    STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK: tl.constexpr,
):
    """Xs[n, h, q, j] = X[n, j % C, h - PAD_H, q*STRIDE_W - PAD_W + j // C] for j < S*C inside
    the image, else 0 (``span_tensor``). A program fills BLOCK_R of the ROWS = N*HS (n, h) rows
    (axis 0) by BLOCK of a row's Q*T elements (axis 1); T is constexpr, so (q, j) come from
    shifts."""
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    n = row // HS
    h = row % HS - PAD_H
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    j = e % T
    w = (e // T) * STRIDE_W - PAD_W + j // C
    row_ok = (row < ROWS) & (h >= 0) & (h < H)
    ok = row_ok[:, None] & ((e < QT) & (j < S * C) & (w >= 0) & (w < W))[None, :]
    src = (n.to(tl.int64) * stride_xn + h * stride_xh)[:, None] + ((j % C) * stride_xc + w * stride_xw)[None, :]
    dst = (row.to(tl.int64) * QT)[:, None] + e[None, :]
    tl.store(xs_ptr + dst, tl.load(x_ptr + src, mask=ok, other=0.0), mask=(row < ROWS)[:, None] & (e < QT)[None, :])


def conv_output_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    check_runnable("input", x)
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError("conv2d launchers take a 4-D input and a 4-D weight")
    if x.dtype != weight.dtype:
        raise TypeError(f"input dtype {x.dtype} and weight dtype {weight.dtype} differ")


def _dot_args(dtype: torch.dtype) -> dict:
    return {
        "INPUT_PRECISION": dot_precision(dtype),
        "UPCAST": dot_upcast(dtype),
        "ACC_DTYPE": tl_dtype(acc_dtype(dtype)),
    }


def _geometry(weight, stride, padding, dilation) -> dict:
    return {
        "R": weight.shape[2], "S": weight.shape[3],
        "STRIDE_H": stride[0], "STRIDE_W": stride[1],
        "PAD_H": padding[0], "PAD_W": padding[2],
        "DIL_H": dilation[0], "DIL_W": dilation[1],
    }


@on_tensor_device
def conv2d_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    activation: str = "none",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Y = act(conv(X, W) + b). ``padding`` is (top, bottom, left, right); ``out`` may be any
    strided (N, K, P, Q) view, e.g. a channel slice of a larger NHWC buffer."""
    _check(x, weight)
    n, c_in, h, w = x.shape
    k_out, cg, r, s = weight.shape
    p = conv_output_size(h, r, stride[0], padding[0] + padding[1], dilation[0])
    q = conv_output_size(w, s, stride[1], padding[2] + padding[3], dilation[1])
    if out is None:
        out = torch.empty((n, k_out, p, q), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    elif out.shape != (n, k_out, p, q) or out.dtype != x.dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}, expected {(n, k_out, p, q)} {x.dtype}")
    if out.numel() == 0 or shape_only(x):
        return out
    kg = k_out // groups
    b_arg = bias if bias is not None else weight  # never read when HAS_BIAS is False
    flat = cg < FWD_FLAT_BELOW
    geometry = _geometry(weight, stride, padding, dilation)
    span_t = fwd_span_width(x, weight, dilation, groups)
    if span_t:
        x = span_tensor(x, r, s, p, q, stride, padding, dilation, span_t)
        weight = span_weights(weight, span_t)
        h, w, flat = x.shape[1], r * span_t, False
    splits = 1 if flat or span_t else fwd_splits(n * p * q, kg, groups, r * s * triton.cdiv(cg, 64))
    part = counters = out  # never read with one split
    if splits > 1:
        part = torch.empty((splits, n * p * q, k_out), device=x.device, dtype=acc_dtype(x.dtype))
        counters = split_counters(x.device, triton.cdiv(n * p * q, 64) * triton.cdiv(kg, 64) * groups)

    def grid(meta):  # tile_of: the N tiles of one M tile in a row
        return (triton.cdiv(n * p * q, meta["BLOCK_M"]) * triton.cdiv(kg, meta["BLOCK_N"]), splits, groups)

    launch(_conv_fwd_kernel, grid,
        x, weight, b_arg, out, part, counters,
        n, h, w, cg, p, q, kg,
        *nchw_strides(x), *nchw_strides(weight),
        bias.stride(0) if bias is not None else 0,
        *nchw_strides(out),
        **geometry,
        FLAT=flat, HAS_BIAS=bias is not None, ACTIVATION=activation,
        FLAT_C=cg if flat else 0, C_VEC=flat_vector(x, weight, cg) if cg < 64 and not span_t else 1, C_ALIGN=vector_factor(cg, cap=64),
        C_POW2=cg if cg < 64 and cg & (cg - 1) == 0 else 0,
        SPAN=span_t > 0, SPAN_T=span_t, SPAN_RT_PAD=weight.shape[1] * span_t if span_t else 0,
        SPLITS=splits,
        **_dot_args(x.dtype),
    )
    return out


def fwd_splits(m: int, k: int, groups: int, steps: int) -> int:
    """Reduction splits of the tap-wise forward (``_conv_fwd_kernel``'s SPLITS) for M output
    pixels, K filters per group and ``steps`` 64-channel steps: 1 unless its 128x128 tiles would
    fill under half the GPU's SMs and the reduction is long (at least 16 steps); then about one
    wave of programs, each at least 4 steps, at most 16 splits. At batch 1 VGG-11's 14x14x512
    layers run 8 tiles: 16 splits of 4-5 steps, 128 programs on 132 SMs, their fp32 partials
    (16 x 196 x 512 x 4 bytes) below the 4.7 MB of weights the layer reads anyway. Under the
    interpreter the rule counts 4 SMs and at most 2 splits: there every program costs its own
    pass through the kernel's Python, so only layers of one or two tiles split, in two."""
    tiles = triton.cdiv(m, 128) * triton.cdiv(k, 128) * groups
    sms = 4 if INTERPRET else _sm_count()
    if 2 * tiles > sms or steps < 16:
        return 1
    return max(1, min(sms // tiles, steps // 4, 2 if INTERPRET else 16))


def flat_vector(x: torch.Tensor, weight: torch.Tensor, c: int) -> int:
    """Channels per 16-byte vector of the flattened (r, s, c) form when C (per group) and every
    pixel stride of X and filter stride of W are multiples of it, channels unit-stride in both and
    both first elements 16-byte aligned (else 1: lanes gathered one element at a time; Triton
    knows a pointer's alignment only as a multiple of 16 bytes or none)."""
    if x.stride(1) != 1 or weight.stride(1) != 1 or x.data_ptr() % 16 or weight.data_ptr() % 16:
        return 1
    return vector_factor(c, *pixel_strides(x, weight), cap=16 // x.element_size())


@on_tensor_device
def conv2d_backward_prep(
    grad_out: torch.Tensor,
    out: torch.Tensor | None,
    activation: str,
    need_bias: bool,
    grad_out1: torch.Tensor | None = None,
    out1: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dY', db) for the backward GEMMs: under ReLU, dY' = dY masked by ``out`` > 0 as a new
    channels_last tensor (None with activation "none": the GEMMs read dY itself; "copy" writes it
    unmasked, to join a two-way dY); db = dY' summed over the pixels (None unless ``need_bias``).
    With ``grad_out1``/``out1``, channels from ``grad_out.shape[1]`` on come from them."""
    check_runnable("grad_out", grad_out)
    relu = activation == "relu"
    write = relu or activation == "copy"  # "copy": join a two-way dY without masking
    n, k0, p, q = grad_out.shape
    two_way = grad_out1 is not None
    k = k0 + (grad_out1.shape[1] if two_way else 0)
    dev, dt = grad_out.device, grad_out.dtype
    masked = empty_padded_channels(n, k, p, q, dev, dt) if write else None
    db = torch.empty((k,), device=dev, dtype=dt) if need_bias else None
    m = n * p * q
    if not (write or need_bias) or shape_only(grad_out):
        return masked, db
    if m == 0 or k == 0:
        if db is not None:
            db.zero_()
        return masked, db
    y0 = out if relu else grad_out
    dy1 = grad_out1 if two_way else grad_out
    y1 = (out1 if relu else dy1) if two_way else y0
    rows = triton.cdiv(m, PREP_BLOCK_M)
    db_part = torch.empty((rows, k), device=dev, dtype=acc_dtype(dt)) if need_bias else grad_out

    def grid(meta):
        return (rows, triton.cdiv(k, meta["BLOCK_C"]))

    launch(_conv_bwd_prep_kernel, grid,
        grad_out, dy1, y0, y1, masked if write else grad_out, db_part,
        m, p * q, q, k, k0, masked.stride(3) if write else k,
        *nchw_strides(grad_out), *nchw_strides(dy1), *nchw_strides(y0), *nchw_strides(y1),
        *nchw_strides(masked if write else grad_out),
        ACTIVATION="relu" if relu else "none", TWO_WAY=two_way, WRITE_OUT=write, NEED_DB=need_bias,
        ACC_DTYPE=tl_dtype(acc_dtype(dt)), K_MULT=vector_factor(k, k0),
        PIX_MULT=vector_factor(*pixel_strides(grad_out, dy1, y0, y1, masked if write else grad_out)),
    )
    if db is not None:
        _reduce_splits(db_part, db, rows, 1, 1, 1, (db.stride(0), 0, 0, 0))  # in row order
    return masked, db


@on_tensor_device
def conv2d_backward_input(
    grad_out: torch.Tensor,
    out: torch.Tensor | None,
    weight: torch.Tensor,
    input_shape: tuple[int, int, int, int],
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    activation: str = "none",
    memory_format: torch.memory_format = torch.channels_last,
    dx: torch.Tensor | None = None,
) -> torch.Tensor:
    """dX of ``conv2d_forward``; under ReLU, ``out`` is the saved forward output (dY is masked
    once by ``conv2d_backward_prep``; pass activation "none" with a dY' already masked, or
    "prepared" when that dY' is ``conv2d_backward_prep``'s own output: its channel padding is
    zero, and layers of 9 to 32 filters then read it as whole vectors, ``dx_pairs``). ``dx``
    may be given as any strided view of ``input_shape`` (e.g. a channel slice of a larger buffer)."""
    _check(grad_out, weight)
    n, c_in, h, w = input_shape
    k_out, cg, r, s = weight.shape
    _, _, p, q = grad_out.shape
    if dx is None:
        dx = torch.empty(input_shape, device=grad_out.device, dtype=grad_out.dtype, memory_format=memory_format)
    elif tuple(dx.shape) != tuple(input_shape):
        raise ValueError(f"dx has shape {tuple(dx.shape)}, expected {tuple(input_shape)}")
    if dx.numel() == 0 or shape_only(grad_out):
        return dx
    if k_out == 0 or p * q == 0:
        return dx.zero_()
    if activation == "relu":
        grad_out, _ = conv2d_backward_prep(grad_out, out, "relu", False)
    kg = k_out // groups
    sh, sw = stride
    k_pow2 = dx_pairs(grad_out, kg, groups, r * s, stride, activation in ("relu", "prepared"))
    flat = kg < FLAT_BELOW and not k_pow2
    residue = not flat and dilation == (1, 1) and not k_pow2

    def grid(meta):
        if residue:
            rows = sh * sw * triton.cdiv(n * triton.cdiv(h, sh) * triton.cdiv(w, sw), meta["BLOCK_M"])
        else:
            rows = triton.cdiv(n * h * w, meta["BLOCK_M"])
        return (rows * triton.cdiv(cg, meta["BLOCK_N"]), 1, groups)  # tile_of

    launch(_conv_bwd_input_kernel, grid,
        grad_out, weight, dx,
        n, h, w, cg, p, q, kg,
        *nchw_strides(grad_out), *nchw_strides(weight), *nchw_strides(dx),
        **_geometry(weight, stride, padding, dilation),
        FLAT=flat, RESIDUE=residue, W_MULT=vector_factor(cg, *pixel_strides(weight)), K_POW2=k_pow2,
        **_dot_args(grad_out.dtype),
    )
    return dx


def dx_pairs(grad_out: torch.Tensor, kg: int, groups: int, taps: int, stride, prepared: bool) -> int:
    """The dX kernel's K_POW2 (two taps a step): 16 or 32 for a stride-1, one-group layer of at
    most 31 taps whose dY' has 9 to 32 channels, when a pixel's channels up to that power of two
    are dY' itself (16 or 32 channels) or zeros (a ``prepared`` dY' is ``conv2d_backward_prep``'s
    output, zero-padded to a multiple of 16 channels); else 0."""
    if not (8 < kg <= 32 and groups == 1 and taps <= 31 and tuple(stride) == (1, 1)):
        return 0
    k_pow2 = 16 if kg <= 16 else 32
    if kg == k_pow2:
        return k_pow2
    padded = prepared and grad_out.stride(1) == 1 and grad_out.stride(3) == -(-kg // 16) * 16
    return k_pow2 if padded else 0


def _dw_chunk(npq: int, tiles: int) -> int:
    """Output pixels per dW split: enough programs to fill the GPU (about two waves of its SMs),
    each with a reduction long enough to amortise its partial store. Under the interpreter the
    chunk is small enough that modest test shapes still exercise several splits."""
    if INTERPRET:
        return 256
    want_splits = max(1, 2 * _sm_count() // max(tiles, 1))
    chunk = triton.cdiv(npq, want_splits)
    chunk = max(chunk, 1024)
    return triton.cdiv(chunk, 256) * 256


def _sm_count() -> int:
    """The current GPU's SM count (132 on an H100 SXM), 132 when no GPU is visible."""
    return _sm_count_of(torch.cuda.current_device() if torch.cuda.is_available() else -1)


@functools.cache
def _sm_count_of(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device >= 0 else 132


@on_tensor_device
def conv2d_backward_weight(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    out: torch.Tensor | None,
    weight_like: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
    activation: str = "none",
    need_bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dW, db) of ``conv2d_forward``. dW takes ``weight_like``'s shape and strides. dY is masked
    (under ReLU) and db summed by ``conv2d_backward_prep``; a caller that already did so passes
    activation "none" and need_bias False."""
    _check(x, weight_like)
    n, c_in, h, w = x.shape
    k_out, cg, r, s = weight_like.shape
    _, _, p, q = grad_out.shape
    kg = k_out // groups
    dw = torch.empty_like(weight_like)
    db = None
    if activation == "relu" or need_bias:
        masked, db = conv2d_backward_prep(grad_out, out, activation, need_bias)
        grad_out = grad_out if masked is None else masked
    if shape_only(x):
        return dw, db
    npq = n * p * q
    rsc = r * s * cg
    if dw.numel() == 0 or npq == 0:
        return dw.zero_(), db
    tiles = triton.cdiv(kg, 128) * triton.cdiv(rsc, 128) * groups
    chunk = _dw_chunk(npq, tiles)
    flat = cg < FLAT_BELOW
    # Tile counters for the in-kernel sum of the splits: enough for the smallest tiles (64 x 32).
    counters = split_counters(x.device, triton.cdiv(kg, 64) * r * s * triton.cdiv(cg, 32) * groups)
    if _dw_span_apply(x, grad_out, stride, dilation, groups, flat):
        return _dw_span(x, grad_out, dw, weight_like, stride, padding, dilation, chunk), db
    if _dw_rows_apply(x, grad_out, stride, flat, groups):
        rows_per_step = max(1, min(DW_ROW_LANES // q, 32))
        chunk_rows = triton.cdiv(triton.cdiv(chunk, q), rows_per_step) * rows_per_step
        splits = triton.cdiv(n * p, chunk_rows)
        dw_part = _split_partials(splits, k_out * rsc, dw)

        def grid_rows(meta):
            return (triton.cdiv(kg, meta["BLOCK_M"]), r * s * triton.cdiv(cg, meta["BLOCK_N"]), splits * groups)

        xw_mult, dyw_mult = vector_factor(x.stride(3)), vector_factor(grad_out.stride(3))
        launch(_conv_bwd_weight_rows_kernel, grid_rows,
            x, grad_out, dw, dw_part, counters,
            n, cg, kg, groups, chunk_rows, splits,
            x.stride(1), x.stride(3) // xw_mult, grad_out.stride(1), grad_out.stride(3) // dyw_mult,
            *nchw_strides(dw),
            XW_MULT=xw_mult, DYW_MULT=dyw_mult, C_MULT=vector_factor(cg),
            K_READ=readable_channels(grad_out) if groups == 1 else 0,
            P=p, Q=q, HI=h, WI=w, **_geometry(weight_like, stride, padding, dilation),
            **_dot_args(x.dtype),
        )
        return dw, db
    splits = triton.cdiv(npq, chunk)
    dw_part = _split_partials(splits, k_out * rsc, dw)

    def grid(meta):
        cols = triton.cdiv(rsc, meta["BLOCK_N"]) if flat else r * s * triton.cdiv(cg, meta["BLOCK_N"])
        return (triton.cdiv(kg, meta["BLOCK_M"]), cols, splits * groups)

    launch(_conv_bwd_weight_kernel, grid,
        x, grad_out, dw, dw_part, counters,
        n, h, w, cg, p, q, kg, groups, chunk, splits,
        *nchw_strides(x), *nchw_strides(grad_out), *nchw_strides(dw),
        **_geometry(weight_like, stride, padding, dilation),
        FLAT=flat, SPAN=False, SPAN_T=0, SPAN_Q=0, SPAN_ROWS=0, SPAN_SEGS=0,
        **_dot_args(x.dtype),
    )
    return dw, db


def _dw_span_apply(x, grad_out, stride, dilation, groups, flat: bool) -> bool:
    """Whether dW takes the span form of ``_conv_bwd_weight_kernel``: a flattened-(r, s, c) layer
    (fewer than ``FLAT_BELOW`` channels) whose channels are not whole 16-byte vectors (the 1- and
    3-channel first layers), one group, dilation 1 along W, and a pixel-linear dY'."""
    c = x.shape[1]
    return (
        flat and groups == 1 and dilation[1] == 1 and (c * x.element_size()) % 16 != 0 and _pixel_linear(grad_out)
    )


def _span_width(s: int, c: int) -> int:
    """Elements of a tap row's span: the S*C of one filter row rounded up to whole 16-byte vectors
    (8 elements; 16-byte aligned for every dtype the kernels take)."""
    return triton.cdiv(s * c, 8) * 8


def span_tensor(x: torch.Tensor, r: int, s: int, p: int, q: int, stride, padding, dilation, t: int) -> torch.Tensor:
    """Xs[n, h, q, j] = Xpad[n, h, q*sw + j // C, j % C] for j < S*C, 0 for S*C <= j < t: X padded
    as the convolution pads it, and for each output column q the span its filter rows read, one
    contiguous run of ``t`` elements per (row, q), 16-byte aligned. Rows: the (P-1)*sh +
    (R-1)*dh + 1 that the output reads. One launch (``_span_fill_kernel``), no torch op."""
    hs = (p - 1) * stride[0] + (r - 1) * dilation[0] + 1
    return _span_fill(x, hs, q, t, s, stride[1], padding[0], padding[2])


def span_weights(weight: torch.Tensor, t: int, block: int = 64) -> torch.Tensor:
    """Ws[k, r, 0, j] = W[k, j % C, r, j // C] for j < S*C, else 0, each filter padded with zero
    rows to a whole number of ``block`` columns (contiguous, so filter k's columns r*t + j are
    one run): the B operand of ``span_gemm``, read with no mask. ``_span_fill_kernel`` on W
    seen as a (K, C, R, S) image."""
    r = weight.shape[2]
    rows = triton.cdiv(r * t, block) * block // t
    return _span_fill(weight, rows, 1, t, weight.shape[3], 1, 0, 0)


def _span_fill(x: torch.Tensor, rows: int, q: int, t: int, s: int, stride_w: int, pad_h: int, pad_w: int):
    n, c, h, w = x.shape
    xs = torch.empty((n, rows, q, t), device=x.device, dtype=x.dtype)
    if xs.numel() == 0 or shape_only(x):
        return xs
    block = min(triton.next_power_of_2(q * t), SPAN_FILL_ELEMENTS)
    block_r = max(1, min(SPAN_FILL_ELEMENTS // block, triton.next_power_of_2(n * rows)))
    launch(_span_fill_kernel, (triton.cdiv(n * rows, block_r), triton.cdiv(q * t, block)),
        x, xs, h, w, n * rows, rows, q * t, *nchw_strides(x),
        C=c, S=s, T=t, STRIDE_W=stride_w, PAD_H=pad_h, PAD_W=pad_w, BLOCK_R=block_r, BLOCK=block,
    )
    return xs


def fwd_span_width(x: torch.Tensor, weight: torch.Tensor, dilation, groups: int) -> int:
    """The span width T of the forward's span form (``span_gemm``) for this layer, or 0 where it
    does not apply. It applies to one-group layers with dilation 1 along W whose channels are
    not whole 16-byte vectors (1- and 3-channel first layers: the flattened form gathers them
    one element at a time) and whose filter row holds at most 64 elements; T is S*C rounded up
    to a power of two, at least 8."""
    c, s = weight.shape[1], weight.shape[3]
    if groups != 1 or dilation[1] != 1 or (c * x.element_size()) % 16 == 0 or s * c > 64:
        return 0
    return max(8, triton.next_power_of_2(s * c))


def _span_geometry(p: int, q: int) -> tuple[int, int]:
    """(rows, segments) of a span-form step of ``SPAN_LANES`` pixel lanes: the most whole output
    rows that divide P (so a step never crosses an image), or, for rows wider than the step,
    the number of equal segments a row is taken in (rows 0)."""
    if q <= SPAN_LANES:
        return max(d for d in range(1, SPAN_LANES // q + 1) if p % d == 0), 0
    return 0, triton.cdiv(q, SPAN_LANES)


def _dw_span(x, grad_out, dw, weight_like, stride, padding, dilation, chunk: int) -> torch.Tensor:
    """dW of a first layer through the span form of ``_conv_bwd_weight_kernel`` (one group)."""
    n, c, h, w = x.shape
    k, _, r, s = weight_like.shape
    _, _, p, q = grad_out.shape
    xs = span_tensor(x, r, s, p, q, stride, padding, dilation, _span_width(s, c))
    t = xs.shape[3]
    rows, segs = _span_geometry(p, q)
    unit = max(rows, 1)
    chunk_rows = triton.cdiv(triton.cdiv(chunk, q), unit) * unit
    splits = triton.cdiv(n * p, chunk_rows)
    dw_part = _split_partials(splits, k * r * t, dw)
    counters = split_counters(x.device, triton.cdiv(k, 64) * triton.cdiv(r * t, 64))

    def grid(meta):
        return (triton.cdiv(k, meta["BLOCK_M"]), triton.cdiv(r * t, meta["BLOCK_N"]), splits)

    launch(_conv_bwd_weight_kernel, grid,
        xs, grad_out, dw, dw_part, counters,
        n, xs.shape[1], w, c, p, q, k, 1, chunk_rows, splits,
        *nchw_strides(xs), *nchw_strides(grad_out), *nchw_strides(dw),
        **_geometry(weight_like, stride, padding, dilation),
        FLAT=True, SPAN=True, SPAN_T=t, SPAN_Q=q, SPAN_ROWS=rows, SPAN_SEGS=segs,
        **_dot_args(x.dtype),
    )
    return dw


def _split_partials(splits: int, elements: int, dw: torch.Tensor) -> torch.Tensor:
    """fp32 (fp64 for fp64) workspace for the per-split dW partials; none with one split (dW
    itself is passed, never read)."""
    if splits == 1:
        return dw
    return torch.empty((splits, elements), device=dw.device, dtype=acc_dtype(dw.dtype))


# Per (device, stream): one int32 buffer of tile counters, all 0 between launches (each launch
# sets the counters it used back to 0), grown when a layer needs more.
_COUNTERS: dict = {}


def split_counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 tile counters for ``store_split_tile``. One buffer per device and stream, so
    launches that share it run one after another; kept across calls (and CUDA graph replays)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), device=device, dtype=torch.int32)
        # How a recorded launch plan (``cnnkernels._fast``) finds the buffer again when it replays,
        # on whatever stream is current then: it is state, not an allocation.
        buf.replay_lookup = functools.partial(split_counters, device, buf.numel())
        _COUNTERS[key] = buf
    return buf


def readable_channels(t: torch.Tensor) -> int:
    """For an NHWC ``t`` of fewer than 16 channels, not a power of two: 16 when every pixel's
    first 16 channels lie in its storage (the pixel stride of ``empty_padded_channels``), else
    0. The dW kernels then read 16 channels a pixel as whole vectors; what the padding holds
    reaches only rows of dW they never store."""
    n, c, h, w = t.shape
    if c >= 16 or c & (c - 1) == 0 or t.stride(1) != 1 or t.stride(3) < 16:
        return 0
    last = t.storage_offset() + sum((size - 1) * st for size, st in zip(t.shape, t.stride()) if size > 0)
    return 16 if last - (c - 1) + 16 <= t.untyped_storage().nbytes() // t.element_size() else 0


def _pixel_linear(t: torch.Tensor) -> bool:
    """Pixel (n, h, w) of ``t`` sits at ((n*H + h)*W + w) * stride_w and channels are contiguous:
    NHWC with whole images (a channel slice of a wider NHWC buffer qualifies)."""
    n, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    return (c == 1 or sc == 1) and (h == 1 or sh == w * sw) and (n == 1 or sn == h * w * sw)


def _dw_rows_apply(x: torch.Tensor, grad_out: torch.Tensor, stride, flat: bool, groups: int = 1) -> bool:
    """Whether dW runs row-tiled (``_conv_bwd_weight_rows_kernel``): pixel-linear X and dY' (any
    stride and padding), and rows either wider than the step (segments) or few enough per image
    for the kernel's 64-bit row pattern. Below ``FLAT_BELOW`` channels per group (``flat``) only
    when a group's channels are whole 16-byte vectors (16 or 24 in bf16: GoogLeNet's 5x5
    branches); 1- and 3-channel first layers take the span form."""
    _, c, h, w = x.shape
    _, _, p, q = grad_out.shape
    if flat and (c // groups * x.element_size()) % 16:
        return False
    if not (_pixel_linear(x) and _pixel_linear(grad_out)):
        return False
    if q > DW_ROW_LANES:
        return q <= 30 * 32  # at most 30 segments (of 32 lanes for fp32): one bit each
    return p + min(DW_ROW_LANES // q, 32) <= 65


def _reduce_splits(part, out, splits, c, r, s, strides) -> None:
    e = part.shape[1]

    def grid(meta):
        return (triton.cdiv(e, meta["BLOCK"]),)

    launch(_conv_bwd_reduce_kernel, grid, part, out, e, splits, c, *strides, R=r, S=s, E_MULT=vector_factor(e))
