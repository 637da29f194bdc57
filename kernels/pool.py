"""2-D max pooling, forward and backward, with torch's semantics.

Forward:   Y[n,c,p,q] = max_{r,s} X[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] over the taps that
           fall inside the input (padding never wins). The scan runs over taps in row-major
           order and takes a tap when ``v > best`` or ``v`` is NaN, so, exactly as torch: the
           first of tied maxima wins, a NaN wins, and of several NaNs the last one wins.
           It also stores the within-window argmax ``a = r*S + s`` as a small integer (int8 for
           R*S <= 127, int16 for R*S <= 32767, else int32), and, when asked, torch's int64 flat
           indices ``ih*W + iw`` into the input plane.
Backward:  dX[n,c,h,w] = sum over the windows (p, q) that contain (h, w) at tap (r, s) and chose
           it (a[n,c,p,q] == r*S + s) of dY[n,c,p,q]: a gather per input pixel over the R*S taps
           (p = (h + ph - r*dh) / sh where that division is exact and in range), summed in a
           fixed tap order. No atomics, so dX is bit-reproducible run to run.

Limits: tensors are addressed through explicit strides (NCHW, channels_last, channel slices);
the output, argmax and indices share one set of strides. Batch offsets are 64-bit, offsets
within one image 32-bit (C*H*W < 2**31 elements per image); the batch's pixel count N*H*W
stays below 2**31. A window with no tap inside the
input (only possible with dilation > H or W) yields -inf, index -1 and no gradient. Geometry is
constexpr: each pooling shape is its own specialisation, so the tap loops have constant trip
counts and the window arithmetic folds.
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
    nchw_strides,
    on_tensor_device,
    pick_configs,
    shape_only,
    tl_dtype,
    to_dtype,
)


def pool_configs() -> list[triton.Config]:
    """Tiles of BLOCK_M pixels x BLOCK_C channels for both max-pool kernels (channels are the
    contiguous axis in channels_last). 16 elements per thread: every element carries its own
    64-bit address, so larger tiles cost occupancy on a bandwidth-bound kernel. Each GPU config
    compiles for sm_90 without spills (``cnnkernels.report``)."""

    def cfg(bm, bc, warps):
        return triton.Config({"BLOCK_M": bm, "BLOCK_C": bc}, num_warps=warps, num_stages=1)

    return pick_configs(
        gpu=[cfg(32, 64, 4), cfg(16, 128, 4), cfg(64, 32, 4), cfg(64, 64, 8), cfg(128, 16, 4)],
        interpreter=[cfg(256, 64, 4)],
    )


_KEY = ["N", "C", "H", "W", "P", "Q", "R", "S", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "DIL_H", "DIL_W"]


@triton.autotune(configs=pool_configs(), key=_KEY)
@triton.jit
def _max_pool2d_fwd_kernel(
    x_ptr, y_ptr, arg_ptr, idx_ptr,
    N, C, H, W, P, Q,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,  # shared by y, arg and idx
    # Geometry is constexpr so the tap loops have constant trip counts and the arithmetic folds.
    R: tl.constexpr, S: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    RETURN_INDICES: tl.constexpr, ACC_DTYPE: tl.constexpr, SAVE_ARGMAX: tl.constexpr,
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
    ih0 = p * STRIDE_H - PAD_H
    iw0 = q * STRIDE_W - PAD_W
    x_base = x_ptr + n_idx * stride_xn
    x_c = (offs_c * stride_xc)[None, :]

    # Compared in ACC_DTYPE (fp32, fp64 for fp64): exact, and under the interpreter bf16
    # comparisons would act on raw bit patterns.
    best = tl.full((BLOCK_M, BLOCK_C), float("-inf"), dtype=ACC_DTYPE)
    arg = tl.full((BLOCK_M, BLOCK_C), -1, dtype=tl.int32)
    for r in range(R):
        ih = ih0 + r * DIL_H
        row_ok = mask_m & (ih >= 0) & (ih < H)
        for s in range(S):
            iw = iw0 + s * DIL_W
            ok = (row_ok & (iw >= 0) & (iw < W))[:, None] & mask_c[None, :]
            v = tl.load((x_base + ih * stride_xh + iw * stride_xw)[:, None] + x_c, mask=ok, other=float("-inf"))
            v = v.to(ACC_DTYPE)
            # ``arg < 0``: the first tap inside the input is taken even when it is -inf.
            take = ok & ((v > best) | (v != v) | (arg < 0))
            best = tl.where(take, v, best)
            arg = tl.where(take, r * S + s, arg)

    y_off = (n_idx * stride_yn + p * stride_yh + q * stride_yw)[:, None] + (offs_c * stride_yc)[None, :]
    mask = mask_m[:, None] & mask_c[None, :]
    tl.store(y_ptr + y_off, to_dtype(best, y_ptr.dtype.element_ty), mask=mask)
    if SAVE_ARGMAX:  # for the backward; an inference call skips these bytes
        tl.store(arg_ptr + y_off, arg.to(arg_ptr.dtype.element_ty), mask=mask)
    if RETURN_INDICES:
        ih = ih0[:, None] + (arg // S) * DIL_H
        iw = iw0[:, None] + (arg % S) * DIL_W
        flat = tl.where(arg >= 0, ih * W + iw, -1)
        tl.store(idx_ptr + y_off, flat.to(tl.int64), mask=mask)


@triton.autotune(configs=pool_configs(), key=_KEY)
@triton.jit
def _max_pool2d_bwd_kernel(
    dy_ptr, arg_ptr, dx_ptr,
    N, C, H, W, P, Q,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw,
    stride_an, stride_ac, stride_ah, stride_aw,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    R: tl.constexpr, S: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr,
    DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dX[n,c,h,w] = sum_{r,s} [a[n,c,p,q] == r*S+s] dY[n,c,p,q] with p = (h+ph-r*dh)/sh and
    q = (w+pw-s*dw)/sw exact and in range; a gather over input pixels, fixed tap order (one tap
    where the windows do not overlap)."""
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
    dy_base = dy_ptr + n_idx * stride_dyn
    a_base = arg_ptr + n_idx * stride_an
    dy_c = (offs_c * stride_dyc)[None, :]
    a_c = (offs_c * stride_ac)[None, :]

    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC_DTYPE)
    # Windows that do not overlap (VGG's 2x2/2): an input pixel lies under at most one tap, found
    # by one division per axis, so one gather instead of R*S masked ones.
    ONE_TAP: tl.constexpr = DIL_H == 1 and DIL_W == 1 and STRIDE_H >= R and STRIDE_W >= S
    if ONE_TAP:
        p = (h + PAD_H) // STRIDE_H
        q = (w + PAD_W) // STRIDE_W
        tr = h + PAD_H - p * STRIDE_H
        ts = w + PAD_W - q * STRIDE_W
        ok = (mask_m & (tr < R) & (ts < S) & (p < P) & (q < Q))[:, None] & mask_c[None, :]
        a = tl.load((a_base + p * stride_ah + q * stride_aw)[:, None] + a_c, mask=ok, other=-1)
        g = tl.load((dy_base + p * stride_dyh + q * stride_dyw)[:, None] + dy_c, mask=ok, other=0.0)
        acc += tl.where(ok & (a == (tr * S + ts)[:, None]), g.to(ACC_DTYPE), 0.0)  # 0 + g, as torch's scatter-add: -0.0 gives +0.0
    else:
        for r in range(R):
            ph = h + PAD_H - r * DIL_H
            p = ph // STRIDE_H
            row_ok = mask_m & (ph >= 0) & (p * STRIDE_H == ph) & (p < P)
            for s in range(S):
                pw = w + PAD_W - s * DIL_W
                q = pw // STRIDE_W
                ok = (row_ok & (pw >= 0) & (q * STRIDE_W == pw) & (q < Q))[:, None] & mask_c[None, :]
                a = tl.load((a_base + p * stride_ah + q * stride_aw)[:, None] + a_c, mask=ok, other=-1)
                hit = ok & (a == r * S + s)
                # Loaded under the window mask (uniform along the contiguous channels, so 16-byte
                # loads), then selected: a data-dependent load mask would force one load per element.
                g = tl.load((dy_base + p * stride_dyh + q * stride_dyw)[:, None] + dy_c, mask=ok, other=0.0)
                acc += tl.where(hit, g.to(ACC_DTYPE), 0.0)

    dx_off = (n_idx * stride_dxn + h * stride_dxh + w * stride_dxw)[:, None] + (offs_c * stride_dxc)[None, :]
    tl.store(dx_ptr + dx_off, to_dtype(acc, dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers: check -> allocate -> grid -> launch.
# ----------------------------------------------------------------------------------------------


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling output size: with ``ceil_mode`` the last window must start inside the
    input or its left padding."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def argmax_dtype(kernel_size: tuple[int, int]) -> torch.dtype:
    """The smallest integer type that holds a within-window tap index r*S + s (and -1)."""
    area = kernel_size[0] * kernel_size[1]
    if area <= 127:
        return torch.int8
    if area <= 32767:
        return torch.int16
    return torch.int32


def _geometry(kernel_size, stride, padding, dilation) -> dict:
    return {
        "R": kernel_size[0], "S": kernel_size[1],
        "STRIDE_H": stride[0], "STRIDE_W": stride[1],
        "PAD_H": padding[0], "PAD_W": padding[1],
        "DIL_H": dilation[0], "DIL_W": dilation[1],
    }


def _check(name: str, t: torch.Tensor) -> None:
    check_runnable(name, t)
    if t.dim() != 4:
        raise ValueError(f"max_pool2d launchers take a 4-D {name}, got shape {tuple(t.shape)}")


@on_tensor_device
def max_pool2d_forward(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    ceil_mode: bool = False,
    return_indices: bool = False,
    save_argmax: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(Y, argmax or None, indices or None) of max pooling. Y takes X's memory format; argmax (see
    ``argmax_dtype``; not written, and None, without ``save_argmax``: a call no backward follows)
    and the int64 indices share Y's strides."""
    _check("input", x)
    n, c, h, w = x.shape
    p = pool_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    q = pool_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    y = torch.empty((n, c, p, q), device=x.device, dtype=x.dtype, memory_format=suggest_memory_format(x))
    arg = None
    if save_argmax:
        arg = torch.empty_strided(y.shape, y.stride(), device=x.device, dtype=argmax_dtype(kernel_size))
    idx = torch.empty_strided(y.shape, y.stride(), device=x.device, dtype=torch.int64) if return_indices else None
    if y.numel() == 0 or shape_only(x):
        return y, arg, idx

    def grid(meta):
        return (triton.cdiv(n * p * q, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"]))

    launch(_max_pool2d_fwd_kernel, grid,
        # argmax and idx are never written without SAVE_ARGMAX, RETURN_INDICES: y stands in.
        x, y, y if arg is None else arg, y if idx is None else idx,
        n, c, h, w, p, q,
        *nchw_strides(x), *nchw_strides(y),
        **_geometry(kernel_size, stride, padding, dilation),
        RETURN_INDICES=return_indices, ACC_DTYPE=tl_dtype(acc_dtype(x.dtype)), SAVE_ARGMAX=save_argmax,
    )
    return y, arg, idx


@on_tensor_device
def max_pool2d_backward(
    grad_out: torch.Tensor,
    argmax: torch.Tensor,
    input_shape: tuple[int, int, int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    memory_format: torch.memory_format = torch.channels_last,
) -> torch.Tensor:
    """dX of ``max_pool2d_forward`` from dY and the saved argmax (the input is not needed)."""
    _check("grad_out", grad_out)
    if argmax.shape != grad_out.shape:
        raise ValueError(f"argmax has shape {tuple(argmax.shape)} but grad_out has {tuple(grad_out.shape)}")
    n, c, h, w = input_shape
    _, _, p, q = grad_out.shape
    dx = torch.empty(input_shape, device=grad_out.device, dtype=grad_out.dtype, memory_format=memory_format)
    if dx.numel() == 0 or shape_only(grad_out):
        return dx

    def grid(meta):
        return (triton.cdiv(n * h * w, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"]))

    launch(_max_pool2d_bwd_kernel, grid,
        grad_out, argmax, dx,
        n, c, h, w, p, q,
        *nchw_strides(grad_out), *nchw_strides(argmax), *nchw_strides(dx),
        **_geometry(kernel_size, stride, padding, dilation),
        ACC_DTYPE=tl_dtype(acc_dtype(grad_out.dtype)),
    )
    return dx
