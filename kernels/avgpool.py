"""2-D adaptive average pooling, forward and backward, with torch's semantics; global average
pooling (output 1x1, the NiN and GoogLeNet heads) has its own reduction kernels.

Adaptive:  output row p averages input rows [floor(p*H/P), ceil((p+1)*H/P)), columns likewise:
           Y[n,c,p,q] = sum_window X / (kh(p) * kw(q)), accumulated in fp32 (fp64 for fp64).
           dX[n,c,h,w] = sum over the windows containing (h, w) of dY[n,c,p,q] / (kh(p) kw(q)).
           The windows containing row h are exactly p in [floor(h*P/H), ceil((h+1)*P/H)), so
           the backward is a gather per input pixel in a fixed order: no atomics, bit-reproducible.
Global:    Y[n,c] = sum_{h,w} X[n,c,h,w] / (H*W): one program per (n, channel block), channels
           the contiguous axis of its tile (channels_last reads are coalesced), looping over H*W.
           dX[n,c,h,w] = dY[n,c] / (H*W), broadcast.

Limits: tensors are addressed through explicit strides (NCHW or channels_last); batch offsets
are 64-bit, offsets within one image 32-bit (C*H*W < 2**31 elements per image), and the
pixel count of the whole batch stays below 2**31 (N*H*W, never reached by these models). The window
loop bounds (KH_MAX, KW_MAX, the most windows per input row/column) are runtime values: large
windows (an adaptive 224 -> 7 pool) must not unroll, and each output size needs no recompile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from ._common import (
    acc_dtype,
    check_runnable,
    launch,
    narrow_tiles,
    nchw_strides,
    on_tensor_device,
    pick_configs,
    shape_only,
    tl_dtype,
    to_dtype,
)


def avgpool_configs() -> list[triton.Config]:
    """Tiles of BLOCK_M pixels x BLOCK_C channels for the adaptive and the global backward
    kernels, 16 elements per thread (each with its own 64-bit address: larger tiles cost
    occupancy). Each GPU config compiles for sm_90 without spills (``cnnkernels.report``)."""

    def cfg(bm, bc, warps):
        return triton.Config({"BLOCK_M": bm, "BLOCK_C": bc}, num_warps=warps, num_stages=1)

    return pick_configs(
        gpu=[cfg(32, 64, 4), cfg(16, 128, 4), cfg(64, 32, 4), cfg(128, 16, 4)],
        interpreter=[cfg(256, 64, 4)],
    )


def global_avgpool_configs() -> list[triton.Config]:
    """BLOCK_HW pixels x BLOCK_C channels per loop step of the global reduction."""

    def cfg(bhw, bc, warps):
        return triton.Config({"BLOCK_HW": bhw, "BLOCK_C": bc}, num_warps=warps, num_stages=2)

    return pick_configs(
        gpu=[cfg(16, 64, 4), cfg(8, 128, 4), cfg(32, 32, 4), cfg(64, 16, 4)],
        interpreter=[cfg(64, 64, 4)],
    )


_KEY = ["N", "C", "H", "W", "P", "Q"]


def _prune_narrow(configs, named_args, **kwargs):
    """At most 64 channels keep the tiles at most 64 channels wide (``narrow_tiles``): NiN's
    10-class global pool backward on a 128-wide block spilled 10 bytes under Triton 3.6 (static, sm_90)."""
    return narrow_tiles(list(configs), named_args["C"], "BLOCK_C")


@triton.autotune(configs=avgpool_configs(), key=_KEY)
@triton.jit
def _adaptive_avg_pool2d_fwd_kernel(
    x_ptr, y_ptr,
    N, C, H, W, P, Q,
    KH_MAX, KW_MAX,  # the largest window, bounds of the masked window loops
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < N * P * Q
    mask_c = offs_c < C
    n_idx = offs_m // (P * Q)
    pq = (offs_m % (P * Q)).to(tl.int32)
    p = pq // Q
    q = pq % Q
    h0 = (p * H) // P
    h1 = ((p + 1) * H + P - 1) // P
    w0 = (q * W) // Q
    w1 = ((q + 1) * W + Q - 1) // Q
    # One 64-bit base per tile row; the window's offsets within the image are 32-bit.
    x_tile = x_ptr + (n_idx * stride_xn)[:, None] + (offs_c * stride_xc)[None, :]

    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC_DTYPE)
    for i in range(KH_MAX):
        ih = h0 + i
        row_ok = mask_m & (ih < h1)
        row_off = ih * stride_xh + w0 * stride_xw
        for j in range(KW_MAX):
            ok = (row_ok & (w0 + j < w1))[:, None] & mask_c[None, :]
            v = tl.load(x_tile + (row_off + j * stride_xw)[:, None], mask=ok, other=0.0)
            acc += v.to(ACC_DTYPE)
    area = ((h1 - h0) * (w1 - w0)).to(ACC_DTYPE)
    out = acc / area[:, None]

    y_off = (n_idx * stride_yn + p * stride_yh + q * stride_yw)[:, None] + (offs_c * stride_yc)[None, :]
    tl.store(y_ptr + y_off, to_dtype(out, y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


@triton.autotune(configs=avgpool_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune_narrow})
@triton.jit
def _adaptive_avg_pool2d_bwd_kernel(
    dy_ptr, dx_ptr,
    N, C, H, W, P, Q,
    PH_MAX, QW_MAX,  # the most windows containing one input row / column
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dX[n,c,h,w] = sum_{p in [floor(hP/H), ceil((h+1)P/H)), q likewise} dY[n,c,p,q] / (kh(p) kw(q))."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < N * H * W
    mask_c = offs_c < C
    n_idx = offs_m // (H * W)
    hw = (offs_m % (H * W)).to(tl.int32)
    h = hw // W
    w = hw % W
    p0 = (h * P) // H
    p1 = ((h + 1) * P + H - 1) // H
    q0 = (w * Q) // W
    q1 = ((w + 1) * Q + W - 1) // W
    dy_base = dy_ptr + n_idx * stride_dyn
    dy_c = (offs_c * stride_dyc)[None, :]

    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC_DTYPE)
    for i in range(PH_MAX):
        p = p0 + i
        row_ok = mask_m & (p < p1)
        kh = ((p + 1) * H + P - 1) // P - (p * H) // P
        for j in range(QW_MAX):
            q = q0 + j
            ok1 = row_ok & (q < q1)
            kw = ((q + 1) * W + Q - 1) // Q - (q * W) // Q
            ok = ok1[:, None] & mask_c[None, :]
            g = tl.load((dy_base + p * stride_dyh + q * stride_dyw)[:, None] + dy_c, mask=ok, other=0.0)
            area = tl.where(ok1, kh * kw, 1).to(ACC_DTYPE)
            acc += g.to(ACC_DTYPE) / area[:, None]

    dx_off = (n_idx * stride_dxn + h * stride_dxh + w * stride_dxw)[:, None] + (offs_c * stride_dxc)[None, :]
    tl.store(dx_ptr + dx_off, to_dtype(acc, dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


@triton.autotune(configs=global_avgpool_configs(), key=["N", "C", "H", "W"])
@triton.jit
def _global_avg_pool2d_fwd_kernel(
    x_ptr, y_ptr,
    N, C, H, W,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc,
    ACC_DTYPE: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Y[n,c] = sum_{h,w} X[n,c,h,w] / (H*W); grid (N, channel blocks)."""
    n = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    x_base = x_ptr + n * stride_xn
    x_c = (offs_c * stride_xc)[None, :]

    acc = tl.zeros((BLOCK_HW, BLOCK_C), dtype=ACC_DTYPE)
    for hw0 in range(0, H * W, BLOCK_HW):
        hw = hw0 + tl.arange(0, BLOCK_HW)
        h = hw // W
        w = hw % W
        ok = (hw < H * W)[:, None] & mask_c[None, :]
        v = tl.load((x_base + h * stride_xh + w * stride_xw)[:, None] + x_c, mask=ok, other=0.0)
        acc += v.to(ACC_DTYPE)
    total = tl.sum(acc, axis=0) / (H * W)  # H*W may be the constexpr 1: no .to()
    tl.store(y_ptr + n * stride_yn + offs_c * stride_yc, to_dtype(total, y_ptr.dtype.element_ty), mask=mask_c)


@triton.autotune(configs=avgpool_configs(), key=["N", "C", "H", "W"], prune_configs_by={"early_config_prune": _prune_narrow})
@triton.jit
def _global_avg_pool2d_bwd_kernel(
    dy_ptr, dx_ptr,
    N, C, H, W,
    stride_dyn, stride_dyc,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dX[n,c,h,w] = dY[n,c] / (H*W) over tiles of input pixels x channels."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_m < N * H * W)[:, None] & (offs_c < C)[None, :]
    n_idx = offs_m // (H * W)
    hw = (offs_m % (H * W)).to(tl.int32)
    g = tl.load(dy_ptr + (n_idx * stride_dyn)[:, None] + (offs_c * stride_dyc)[None, :], mask=mask, other=0.0)
    out = g.to(ACC_DTYPE) / (H * W)
    dx_pix = n_idx * stride_dxn + (hw // W) * stride_dxh + (hw % W) * stride_dxw
    dx_off = dx_pix[:, None] + (offs_c * stride_dxc)[None, :]
    tl.store(dx_ptr + dx_off, to_dtype(out, dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers: check -> allocate -> grid -> launch.
# ----------------------------------------------------------------------------------------------


def adaptive_span(size: int, out_size: int) -> int:
    """An upper bound on the windows of the adaptive map size -> out_size that one index of
    ``out_size`` covers (window length), or, swapped, that contain one index of ``size``:
    exact when out_size divides size, else at most floor(size/out_size) + 2."""
    return size // out_size if size % out_size == 0 else size // out_size + 2


def _check(name: str, t: torch.Tensor) -> None:
    check_runnable(name, t)
    if t.dim() != 4:
        raise ValueError(f"avg-pool launchers take a 4-D {name}, got shape {tuple(t.shape)}")


@on_tensor_device
def adaptive_avg_pool2d_forward(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Y of adaptive average pooling to ``output_size`` (P, Q), in X's memory format."""
    _check("input", x)
    n, c, h, w = x.shape
    p, q = output_size
    y = torch.empty((n, c, p, q), device=x.device, dtype=x.dtype, memory_format=suggest_memory_format(x))
    if y.numel() == 0 or shape_only(x):
        return y

    def grid(meta):
        return (triton.cdiv(n * p * q, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"]))

    launch(_adaptive_avg_pool2d_fwd_kernel, grid,
        x, y,
        n, c, h, w, p, q,
        adaptive_span(h, p), adaptive_span(w, q),
        *nchw_strides(x), *nchw_strides(y),
        ACC_DTYPE=tl_dtype(acc_dtype(x.dtype)),
    )
    return y


@on_tensor_device
def adaptive_avg_pool2d_backward(
    grad_out: torch.Tensor,
    input_shape: tuple[int, int, int, int],
    memory_format: torch.memory_format = torch.channels_last,
) -> torch.Tensor:
    """dX of ``adaptive_avg_pool2d_forward``."""
    _check("grad_out", grad_out)
    n, c, h, w = input_shape
    _, _, p, q = grad_out.shape
    dx = torch.empty(input_shape, device=grad_out.device, dtype=grad_out.dtype, memory_format=memory_format)
    if dx.numel() == 0 or shape_only(grad_out):
        return dx

    def grid(meta):
        return (triton.cdiv(n * h * w, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"]))

    launch(_adaptive_avg_pool2d_bwd_kernel, grid,
        grad_out, dx,
        n, c, h, w, p, q,
        adaptive_span(p, h), adaptive_span(q, w),
        *nchw_strides(grad_out), *nchw_strides(dx),
        ACC_DTYPE=tl_dtype(acc_dtype(grad_out.dtype)),
    )
    return dx


@on_tensor_device
def global_avg_pool2d_forward(x: torch.Tensor) -> torch.Tensor:
    """Y (N, C, 1, 1) = the mean of X over H and W, in X's memory format."""
    _check("input", x)
    n, c, h, w = x.shape
    y = torch.empty((n, c, 1, 1), device=x.device, dtype=x.dtype, memory_format=suggest_memory_format(x))
    if y.numel() == 0 or shape_only(x):
        return y

    def grid(meta):
        return (n, triton.cdiv(c, meta["BLOCK_C"]))

    launch(_global_avg_pool2d_fwd_kernel, grid,
        x, y,
        n, c, h, w,
        *nchw_strides(x), y.stride(0), y.stride(1),
        ACC_DTYPE=tl_dtype(acc_dtype(x.dtype)),
    )
    return y


@on_tensor_device
def global_avg_pool2d_backward(
    grad_out: torch.Tensor,
    input_shape: tuple[int, int, int, int],
    memory_format: torch.memory_format = torch.channels_last,
) -> torch.Tensor:
    """dX of ``global_avg_pool2d_forward``: dY / (H*W) broadcast over H and W."""
    _check("grad_out", grad_out)
    n, c, h, w = input_shape
    dx = torch.empty(input_shape, device=grad_out.device, dtype=grad_out.dtype, memory_format=memory_format)
    if dx.numel() == 0 or shape_only(grad_out):
        return dx

    def grid(meta):
        return (triton.cdiv(n * h * w, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"]))

    launch(_global_avg_pool2d_bwd_kernel, grid,
        grad_out, dx,
        n, c, h, w,
        grad_out.stride(0), grad_out.stride(1),
        *nchw_strides(dx),
        ACC_DTYPE=tl_dtype(acc_dtype(grad_out.dtype)),
    )
    return dx
