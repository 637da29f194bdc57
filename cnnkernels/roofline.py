"""Analytic roofline of the four seed architectures: per-layer FLOPs, fewest bytes and floor times.

Pure Python (no torch import), so it is usable anywhere, including benchmark collection.

The architectures are written down as data (``alexnet_spec``, ``vgg_spec``, ``nin_spec``,
``googlenet_spec``), transcribed from the seed's model code; ``layer_table`` walks one of them at
an input shape and returns one ``Layer`` per conv / pool / concatenation / flatten / linear, and
``model_totals`` sums a table into a ``ModelTotals`` for a forward pass and a training step.

Counting rules (``Layer``'s fields hold the numbers):

* FLOPs: conv and linear count ``2 * MACs`` (bias and ReLU ignored). The backward is dX + dW,
  ``2 x`` the forward, except where the layer's input needs no gradient (the first layer: the
  image), where only dW is computed (``1 x``), as autograd does. Pooling counts one operation per
  window element read forward and one per input element backward; concatenation and flatten none.
* Bytes are the fewest a perfect implementation moves: every input, weight and output read or
  written exactly once at the element size of ``dtype``. ReLU is fused into the conv/linear that
  precedes it (forward: in the epilogue; backward: its mask comes from the saved output ``y``, so
  backward reads dY and y once each). Inception's concatenation costs nothing: each branch writes
  its channel slice of the block output. Max pooling saves a 1-byte within-window argmax per
  output in training and its backward reads it. Flatten is a view. Dropout is treated as the
  identity (evaluation) or as fused (training) and not counted.
* A training step = training forward (+ the argmax bytes) + backward (dX, dW, db) + a plain SGD
  update per parameter (read w, read grad, write w; 2 FLOPs).
* Floor time of a layer on a GPU = ``max(flops / peak, bytes / bandwidth)``; a model's floor is
  the sum of its layers' floors (layers run one after another), forward and backward separately.
* ``unfused_extra_bytes_*``: what a layer-by-layer execution moves on top of the fused one. A
  separate ReLU reads and writes the conv output forward (``2 x out``) and, backward, writes the
  masked gradient that the conv backward then reads again (``2 x out``); ``torch.cat`` reads and
  writes every branch output (``2 x out`` of the block). Only the convolutions' ReLUs count: the
  linear layers' ReLUs are not fused in the fused models either.

Peaks (``GPU_CEILINGS``) are the measured-class dense tensor-core rates and HBM bandwidths that
the project's design assumes (H100: ~790 TFLOP/s bf16, ~3.0 TB/s; H200: same compute, ~4.3 TB/s);
float32 counts the TF32 tensor-core rate (half the bf16 rate), cuDNN's default for convolutions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

__all__ = [
    "DTYPE_BYTES",
    "GPU_CEILINGS",
    "MODELS",
    "VGG11_ARCH",
    "Conv",
    "Flatten",
    "GlobalAvgPool",
    "GpuCeiling",
    "Inception",
    "Layer",
    "Linear",
    "MaxPool",
    "ModelTotals",
    "alexnet_spec",
    "ceiling_for",
    "googlenet_spec",
    "layer_table",
    "model_spec",
    "model_totals",
    "nin_spec",
    "totals_of",
    "vgg_spec",
]

# --------------------------------------------------------------------------------------------
# GPU ceilings


@dataclasses.dataclass(frozen=True)
class GpuCeiling:
    """Peak dense tensor-core rate per dtype (FLOP/s) and HBM bandwidth (bytes/s) of one GPU."""

    name: str
    flops: dict[str, float]
    bandwidth: float

    def peak_flops(self, dtype: str = "bfloat16") -> float:
        return self.flops[_dtype_name(dtype)]

    def floor_s(self, flops: float, nbytes: float, dtype: str = "bfloat16") -> float:
        """``max(flops / peak, bytes / bandwidth)`` in seconds."""
        return max(flops / self.peak_flops(dtype), nbytes / self.bandwidth)


GPU_CEILINGS: dict[str, GpuCeiling] = {
    "H100": GpuCeiling(
        name="NVIDIA H100 (80 GB HBM3)",
        flops={"bfloat16": 790e12, "float16": 790e12, "float32": 395e12},
        bandwidth=3.0e12,
    ),
    "H200": GpuCeiling(
        name="NVIDIA H200 (141 GB HBM3e)",
        flops={"bfloat16": 790e12, "float16": 790e12, "float32": 395e12},
        bandwidth=4.3e12,
    ),
}


def ceiling_for(device_name: str) -> str | None:
    """The ``GPU_CEILINGS`` key matching a device name (``torch.cuda.get_device_name()``), or None."""
    upper = device_name.upper()
    for key in ("H200", "H100"):  # H200 first: no H100 name contains "H200"
        if key in upper:
            return key
    return None


DTYPE_BYTES: dict[str, int] = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
_DTYPE_ALIASES = {"fp64": "float64", "fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)} (or fp16/bf16/fp32), got {dtype!r}")
    return name


# --------------------------------------------------------------------------------------------
# Architectures as data (transcribed from the seed's model code)


@dataclasses.dataclass(frozen=True)
class Conv:
    """``nn.LazyConv2d(out_channels, kernel, stride, padding)``, followed by ReLU when ``relu``."""

    name: str
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    relu: bool = True


@dataclasses.dataclass(frozen=True)
class MaxPool:
    name: str
    kernel: int
    stride: int
    padding: int = 0


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
    """``nn.AdaptiveAvgPool2d((1, 1))``."""

    name: str


@dataclasses.dataclass(frozen=True)
class Flatten:
    name: str


@dataclasses.dataclass(frozen=True)
class Linear:
    name: str
    out_features: int
    relu: bool = False


@dataclasses.dataclass(frozen=True)
class Inception:
    """The seed's Inception block: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated."""

    name: str
    c1: int
    c2: tuple[int, int]
    c3: tuple[int, int]
    c4: int

    def branches(self) -> tuple[tuple, ...]:
        """The four branches, each a sequence of layers applied to the block input."""
        n = self.name
        return (
            (Conv(f"{n}.b1_1", self.c1, 1),),
            (Conv(f"{n}.b2_1", self.c2[0], 1), Conv(f"{n}.b2_2", self.c2[1], 3, padding=1)),
            (Conv(f"{n}.b3_1", self.c3[0], 1), Conv(f"{n}.b3_2", self.c3[1], 5, padding=2)),
            (MaxPool(f"{n}.b4_1", 3, 1, 1), Conv(f"{n}.b4_2", self.c4, 1)),
        )


VGG11_ARCH: tuple[tuple[int, int], ...] = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def alexnet_spec(num_classes: int = 10) -> tuple:
    return (
        Conv("conv1", 96, 11, stride=4, padding=1),
        MaxPool("pool1", 3, 2),
        Conv("conv2", 256, 5, padding=2),
        MaxPool("pool2", 3, 2),
        Conv("conv3", 384, 3, padding=1),
        Conv("conv4", 384, 3, padding=1),
        Conv("conv5", 256, 3, padding=1),
        MaxPool("pool3", 3, 2),
        Flatten("flatten"),
        Linear("fc1", 4096, relu=True),
        Linear("fc2", 4096, relu=True),
        Linear("fc3", num_classes),
    )


def vgg_spec(arch: Sequence[tuple[int, int]] = VGG11_ARCH, num_classes: int = 10) -> tuple:
    layers: list = []
    for b, (num_convs, out_channels) in enumerate(arch, start=1):
        layers += [Conv(f"block{b}.conv{i}", out_channels, 3, padding=1) for i in range(1, num_convs + 1)]
        layers.append(MaxPool(f"block{b}.pool", 2, 2))
    return (
        *layers,
        Flatten("flatten"),
        Linear("fc1", 4096, relu=True),
        Linear("fc2", 4096, relu=True),
        Linear("fc3", num_classes),
    )


def _nin_block(name: str, out_channels: int, kernel: int, stride: int, padding: int) -> list:
    return [
        Conv(f"{name}.conv", out_channels, kernel, stride, padding),
        Conv(f"{name}.conv1x1_1", out_channels, 1),
        Conv(f"{name}.conv1x1_2", out_channels, 1),
    ]


def nin_spec(num_classes: int = 10) -> tuple:
    return (
        *_nin_block("nin1", 96, 11, 4, 0),
        MaxPool("pool1", 3, 2),
        *_nin_block("nin2", 256, 5, 1, 2),
        MaxPool("pool2", 3, 2),
        *_nin_block("nin3", 384, 3, 1, 1),
        MaxPool("pool3", 3, 2),
        *_nin_block("nin4", num_classes, 3, 1, 1),
        GlobalAvgPool("gap"),
        Flatten("flatten"),
    )


def googlenet_spec(num_classes: int = 10) -> tuple:
    return (
        Conv("b1.conv", 64, 7, stride=2, padding=3),
        MaxPool("b1.pool", 3, 2, 1),
        Conv("b2.conv1x1", 64, 1),
        Conv("b2.conv3x3", 192, 3, padding=1),
        MaxPool("b2.pool", 3, 2, 1),
        Inception("b3.inc1", 64, (96, 128), (16, 32), 32),
        Inception("b3.inc2", 128, (128, 192), (32, 96), 64),
        MaxPool("b3.pool", 3, 2, 1),
        Inception("b4.inc1", 192, (96, 208), (16, 48), 64),
        Inception("b4.inc2", 160, (112, 224), (24, 64), 64),
        Inception("b4.inc3", 128, (128, 256), (24, 64), 64),
        Inception("b4.inc4", 112, (144, 288), (32, 64), 64),
        Inception("b4.inc5", 256, (160, 320), (32, 128), 128),
        MaxPool("b4.pool", 3, 2, 1),
        Inception("b5.inc1", 256, (160, 320), (32, 128), 128),
        Inception("b5.inc2", 384, (192, 384), (48, 128), 128),
        GlobalAvgPool("b5.gap"),
        Flatten("b5.flatten"),
        Linear("fc", num_classes),
    )


MODELS: tuple[str, ...] = ("AlexNet", "VGG", "NiN", "GoogLeNet")
_MODEL_ALIASES = {
    "alexnet": "AlexNet",
    "vgg": "VGG",
    "vgg11": "VGG",
    "vgg-11": "VGG",
    "nin": "NiN",
    "googlenet": "GoogLeNet",
}


def _model_name(model: str) -> str:
    try:
        return _MODEL_ALIASES[model.lower()]
    except KeyError:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}") from None


def model_spec(model: str, num_classes: int = 10, vgg_arch: Sequence[tuple[int, int]] = VGG11_ARCH) -> tuple:
    """The architecture of ``model`` ("AlexNet", "VGG", "NiN", "GoogLeNet"; case-insensitive)."""
    name = _model_name(model)
    if name == "AlexNet":
        return alexnet_spec(num_classes)
    if name == "VGG":
        return vgg_spec(vgg_arch, num_classes)
    if name == "NiN":
        return nin_spec(num_classes)
    return googlenet_spec(num_classes)


# --------------------------------------------------------------------------------------------
# Per-layer table


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of a model at a batch size and dtype. Shapes include the batch dimension."""

    name: str
    kind: str  # "conv", "maxpool", "avgpool", "cat", "flatten", "linear"
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: str
    kernel: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    relu: bool = False
    needs_input_grad: bool = True
    branch_channels: tuple[int, ...] = ()  # "cat": channels of each concatenated branch
    params: int = 0
    flops_fwd: int = 0
    flops_bwd: int = 0
    bytes_fwd: int = 0  # inference forward
    bytes_fwd_train: int = 0  # training forward (adds max pooling's saved argmax)
    bytes_bwd: int = 0
    unfused_extra_bytes_fwd: int = 0
    unfused_extra_bytes_bwd: int = 0
    flops_formula: str = ""  # forward, over the shape symbols N C H W K P Q R S (IN OUT for linear)
    bytes_formula: str = ""
    flops_formula_bwd: str = "0"
    bytes_formula_bwd: str = "0"
    bytes_formula_fwd_train: str = ""  # when the training forward moves more than the inference one

    def formula(self, what: str, mode: str = "forward") -> str:
        """The formula behind ``flops(mode)`` (``what="flops"``) or ``nbytes(mode)`` (``what="bytes"``)."""
        if what not in ("flops", "bytes"):
            raise ValueError(f"what must be 'flops' or 'bytes', got {what!r}")
        fwd = self.flops_formula if what == "flops" else self.bytes_formula
        bwd = self.flops_formula_bwd if what == "flops" else self.bytes_formula_bwd
        if mode == "forward":
            return fwd
        if mode == "backward":
            return bwd
        if mode == "train":
            if what == "bytes" and self.bytes_formula_fwd_train:
                fwd = self.bytes_formula_fwd_train
            return f"[{fwd}] + [{bwd}]"
        raise ValueError(f"mode must be forward, backward or train, got {mode!r}")

    @property
    def batch(self) -> int:
        return self.in_shape[0]

    @property
    def is_1x1(self) -> bool:
        return self.kind == "conv" and self.kernel == (1, 1)

    def flops(self, mode: str = "forward") -> int:
        """FLOPs of ``mode``: "forward", "backward" or "train" (forward + backward of this layer)."""
        return {"forward": self.flops_fwd, "backward": self.flops_bwd, "train": self.flops_fwd + self.flops_bwd}[mode]

    def nbytes(self, mode: str = "forward") -> int:
        """Fewest bytes of ``mode``: "forward", "backward" or "train" (training forward + backward)."""
        return {"forward": self.bytes_fwd, "backward": self.bytes_bwd, "train": self.bytes_fwd_train + self.bytes_bwd}[
            mode
        ]

    def floor_s(self, gpu: str = "H100", mode: str = "forward") -> float:
        """Floor time on ``gpu`` (a ``GPU_CEILINGS`` key); "train" adds the forward and backward floors."""
        c = GPU_CEILINGS[gpu]
        if mode == "train":
            return c.floor_s(self.flops_fwd, self.bytes_fwd_train, self.dtype) + c.floor_s(
                self.flops_bwd, self.bytes_bwd, self.dtype
            )
        return c.floor_s(self.flops(mode), self.nbytes(mode), self.dtype)

    @property
    def floor_h100_s(self) -> float:
        return self.floor_s("H100")

    @property
    def floor_h200_s(self) -> float:
        return self.floor_s("H200")


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _conv_layer(spec: Conv, shape: tuple[int, ...], dtype: str, needs_input_grad: bool) -> Layer:
    n, c, h, w = shape
    k, r = spec.out_channels, spec.kernel
    p, q = _out_size(h, r, spec.stride, spec.padding), _out_size(w, r, spec.stride, spec.padding)
    if p <= 0 or q <= 0:
        raise ValueError(f"{spec.name}: input {shape} too small for a {r}x{r} kernel")
    out = (n, k, p, q)
    b = DTYPE_BYTES[dtype]
    weights = k * c * r * r
    params = weights + k
    flops = 2 * n * k * p * q * c * r * r
    x, y = _numel(shape), _numel(out)
    bytes_fwd = (x + params + y) * b
    # backward: read dY (+ y for the ReLU mask), x (for dW), W (for dX); write dX, dW, db
    bwd = y + (y if spec.relu else 0) + x + params + (weights + x if needs_input_grad else 0)
    return Layer(
        name=spec.name,
        kind="conv",
        in_shape=shape,
        out_shape=out,
        dtype=dtype,
        kernel=(r, r),
        stride=(spec.stride, spec.stride),
        padding=(spec.padding, spec.padding),
        relu=spec.relu,
        needs_input_grad=needs_input_grad,
        params=params,
        flops_fwd=flops,
        flops_bwd=2 * flops if needs_input_grad else flops,
        bytes_fwd=bytes_fwd,
        bytes_fwd_train=bytes_fwd,
        bytes_bwd=bwd * b,
        unfused_extra_bytes_fwd=2 * y * b if spec.relu else 0,
        unfused_extra_bytes_bwd=2 * y * b if spec.relu else 0,
        flops_formula="2*N*K*P*Q*C*R*S",
        bytes_formula="(N*C*H*W + K*C*R*S + K + N*K*P*Q) * bytes",
        flops_formula_bwd="2 * 2*N*K*P*Q*C*R*S (dX and dW)"
        if needs_input_grad
        else "2*N*K*P*Q*C*R*S (dW only: the input needs no gradient)",
        bytes_formula_bwd=(
            f"({'2*' if spec.relu else ''}N*K*P*Q [dY{', y' if spec.relu else ''}] + N*C*H*W [x] + K*C*R*S + K [dW, db]"
            + (" + K*C*R*S + N*C*H*W [W, dX]" if needs_input_grad else "")
            + ") * bytes"
        ),
    )


def _maxpool_layer(spec: MaxPool, shape: tuple[int, ...], dtype: str, needs_input_grad: bool) -> Layer:
    n, c, h, w = shape
    p, q = _out_size(h, spec.kernel, spec.stride, spec.padding), _out_size(w, spec.kernel, spec.stride, spec.padding)
    out = (n, c, p, q)
    b = DTYPE_BYTES[dtype]
    x, y = _numel(shape), _numel(out)
    return Layer(
        name=spec.name,
        kind="maxpool",
        in_shape=shape,
        out_shape=out,
        dtype=dtype,
        kernel=(spec.kernel, spec.kernel),
        stride=(spec.stride, spec.stride),
        padding=(spec.padding, spec.padding),
        needs_input_grad=needs_input_grad,
        flops_fwd=y * spec.kernel * spec.kernel,
        flops_bwd=x if needs_input_grad else 0,
        bytes_fwd=(x + y) * b,
        bytes_fwd_train=(x + y) * b + y,  # + the 1-byte argmax per output
        bytes_bwd=(y * b + y + x * b) if needs_input_grad else 0,  # read dY and argmax, write dX
        flops_formula="N*C*P*Q*R*S",
        bytes_formula="(N*C*H*W + N*C*P*Q) * bytes",
        bytes_formula_fwd_train="(N*C*H*W + N*C*P*Q) * bytes + N*C*P*Q [1-byte argmax]",
        flops_formula_bwd="N*C*H*W" if needs_input_grad else "0",
        bytes_formula_bwd="N*C*P*Q * (bytes + 1) [dY, argmax] + N*C*H*W * bytes [dX]" if needs_input_grad else "0",
    )


def _avgpool_layer(spec: GlobalAvgPool, shape: tuple[int, ...], dtype: str, needs_input_grad: bool) -> Layer:
    n, c, h, w = shape
    out = (n, c, 1, 1)
    b = DTYPE_BYTES[dtype]
    x, y = _numel(shape), _numel(out)
    return Layer(
        name=spec.name,
        kind="avgpool",
        in_shape=shape,
        out_shape=out,
        dtype=dtype,
        kernel=(h, w),
        stride=(h, w),
        padding=(0, 0),
        needs_input_grad=needs_input_grad,
        flops_fwd=x,
        flops_bwd=x if needs_input_grad else 0,
        bytes_fwd=(x + y) * b,
        bytes_fwd_train=(x + y) * b,
        bytes_bwd=(x + y) * b if needs_input_grad else 0,
        flops_formula="N*C*H*W",
        bytes_formula="(N*C*H*W + N*C) * bytes",
        flops_formula_bwd="N*C*H*W" if needs_input_grad else "0",
        bytes_formula_bwd="(N*C [dY] + N*C*H*W [dX]) * bytes" if needs_input_grad else "0",
    )


def _linear_layer(spec: Linear, shape: tuple[int, ...], dtype: str, needs_input_grad: bool) -> Layer:
    n, f = shape
    o = spec.out_features
    b = DTYPE_BYTES[dtype]
    params = f * o + o
    flops = 2 * n * f * o
    x, y = n * f, n * o
    bytes_fwd = (x + params + y) * b
    bwd = y + (y if spec.relu else 0) + x + params + (f * o + x if needs_input_grad else 0)
    return Layer(
        name=spec.name,
        kind="linear",
        in_shape=shape,
        out_shape=(n, o),
        dtype=dtype,
        relu=spec.relu,
        needs_input_grad=needs_input_grad,
        params=params,
        flops_fwd=flops,
        flops_bwd=2 * flops if needs_input_grad else flops,
        bytes_fwd=bytes_fwd,
        bytes_fwd_train=bytes_fwd,
        bytes_bwd=bwd * b,
        flops_formula="2*N*IN*OUT",
        bytes_formula="(N*IN + IN*OUT + OUT + N*OUT) * bytes",
        flops_formula_bwd="2 * 2*N*IN*OUT (dX and dW)" if needs_input_grad else "2*N*IN*OUT (dW only)",
        bytes_formula_bwd=(
            f"({'2*' if spec.relu else ''}N*OUT [dY{', y' if spec.relu else ''}] + N*IN [x] + IN*OUT + OUT [dW, db]"
            + (" + IN*OUT + N*IN [W, dX]" if needs_input_grad else "")
            + ") * bytes"
        ),
    )


def _cat_layer(name: str, shapes: list[tuple[int, ...]], dtype: str) -> Layer:
    n, _, h, w = shapes[0]
    if any(s[0] != n or s[2:] != (h, w) for s in shapes):
        raise ValueError(f"{name}: branch shapes differ outside the channel dimension: {shapes}")
    chans = tuple(s[1] for s in shapes)
    out = (n, sum(chans), h, w)
    b = DTYPE_BYTES[dtype]
    return Layer(
        name=name,
        kind="cat",
        in_shape=out,
        out_shape=out,
        dtype=dtype,
        branch_channels=chans,
        unfused_extra_bytes_fwd=2 * _numel(out) * b,  # torch.cat reads and writes every branch output
        flops_formula="0",
        bytes_formula="0 (each branch writes its channel slice)",
        bytes_formula_bwd="0 (each branch reads its slice of the gradient)",
    )


def layer_table(
    model: str,
    input_shape: Sequence[int] = (1, 1, 224, 224),
    batch: int | None = None,
    *,
    dtype: str = "bfloat16",
    num_classes: int = 10,
    vgg_arch: Sequence[tuple[int, int]] = VGG11_ARCH,
) -> list[Layer]:
    """Every conv, pool, Inception concatenation, flatten and linear layer of ``model``, in order.

    ``input_shape`` is (N, C, H, W) as passed to the seed's ``layer_summary``; ``batch`` replaces
    its N. ``dtype`` (torch.dtype or name) sets the element size of the byte counts. Inception
    blocks expand to their branch layers ``<block>.b1_1`` ... ``<block>.b4_2`` and ``<block>.cat``.
    """
    if len(input_shape) != 4 or any(int(d) <= 0 for d in input_shape):
        raise ValueError(f"input_shape must be a positive (N, C, H, W), got {tuple(input_shape)}")
    shape = tuple(int(d) for d in input_shape)
    if batch is not None:
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        shape = (int(batch), *shape[1:])
    dtype = _dtype_name(dtype)
    rows: list[Layer] = []
    needs_grad = False  # the image needs no gradient; everything after the first layer with parameters does

    def add(spec, in_shape):
        nonlocal needs_grad
        if isinstance(spec, Conv):
            row = _conv_layer(spec, in_shape, dtype, needs_grad)
        elif isinstance(spec, MaxPool):
            row = _maxpool_layer(spec, in_shape, dtype, needs_grad)
        elif isinstance(spec, GlobalAvgPool):
            row = _avgpool_layer(spec, in_shape, dtype, needs_grad)
        elif isinstance(spec, Linear):
            row = _linear_layer(spec, in_shape, dtype, needs_grad)
        else:
            raise TypeError(f"unknown layer spec {spec!r}")
        needs_grad = needs_grad or row.params > 0
        rows.append(row)
        return row.out_shape

    for spec in model_spec(model, num_classes, vgg_arch):
        if isinstance(spec, Flatten):
            out = (shape[0], _numel(shape[1:]))
            rows.append(
                Layer(
                    spec.name,
                    "flatten",
                    shape,
                    out,
                    dtype,
                    needs_input_grad=needs_grad,
                    flops_formula="0",
                    bytes_formula="0 (a view)",
                )
            )
            shape = out
        elif isinstance(spec, Inception):
            outs = []
            for branch in spec.branches():
                cur = shape
                for sub in branch:
                    cur = add(sub, cur)
                outs.append(cur)
            row = _cat_layer(f"{spec.name}.cat", outs, dtype)
            rows.append(row)
            shape = row.out_shape
        else:
            shape = add(spec, shape)
    return rows


# --------------------------------------------------------------------------------------------
# Model totals


@dataclasses.dataclass(frozen=True)
class ModelTotals:
    """Sums over a ``layer_table`` (see the module docstring for the counting rules)."""

    model: str
    batch: int
    dtype: str
    params: int
    flops_fwd: int
    bytes_fwd: int
    flops_bwd: int
    bytes_bwd: int
    flops_train: int  # forward + backward + SGD update
    bytes_train: int  # training forward + backward + SGD update
    floor_fwd_s: dict[str, float]  # by GPU_CEILINGS key: sum of per-layer floors
    floor_bwd_s: dict[str, float]
    floor_train_s: dict[str, float]
    sgd_flops: int
    sgd_bytes: int
    unfused_relu_bytes_fwd: int  # separate ReLU pass after each conv: read + write its output
    unfused_relu_bytes_bwd: int
    unfused_cat_bytes_fwd: int  # torch.cat of each Inception block: read + write the branch outputs

    @property
    def unfused_extra_bytes_fwd(self) -> int:
        return self.unfused_relu_bytes_fwd + self.unfused_cat_bytes_fwd

    @property
    def unfused_extra_bytes_train(self) -> int:
        return self.unfused_relu_bytes_fwd + self.unfused_relu_bytes_bwd + self.unfused_cat_bytes_fwd

    def unfused_extra_bytes(self, mode: str = "forward") -> int:
        """Bytes a layer-by-layer (unfused) execution moves beyond the fused one in ``mode``."""
        return {
            "forward": self.unfused_extra_bytes_fwd,
            "backward": self.unfused_relu_bytes_bwd,
            "train": self.unfused_extra_bytes_train,
        }[mode]

    def flops(self, mode: str = "forward") -> int:
        """FLOPs of ``mode``: "forward", "backward" or "train" (forward + backward + SGD update)."""
        return {"forward": self.flops_fwd, "backward": self.flops_bwd, "train": self.flops_train}[mode]

    def nbytes(self, mode: str = "forward") -> int:
        return {"forward": self.bytes_fwd, "backward": self.bytes_bwd, "train": self.bytes_train}[mode]

    def floor_s(self, gpu: str = "H100", mode: str = "forward") -> float:
        return {"forward": self.floor_fwd_s, "backward": self.floor_bwd_s, "train": self.floor_train_s}[mode][gpu]


def totals_of(model: str, rows: Sequence[Layer]) -> ModelTotals:
    """Sum a layer table (as ``layer_table`` returns it) into a ``ModelTotals``."""
    dtype = rows[0].dtype
    b = DTYPE_BYTES[dtype]
    params = sum(r.params for r in rows)
    sgd_flops, sgd_bytes = 2 * params, 3 * params * b
    floor_fwd, floor_bwd, floor_train = {}, {}, {}
    for gpu, c in GPU_CEILINGS.items():
        floor_fwd[gpu] = sum(r.floor_s(gpu, "forward") for r in rows)
        floor_bwd[gpu] = sum(r.floor_s(gpu, "backward") for r in rows)
        floor_train[gpu] = sum(r.floor_s(gpu, "train") for r in rows) + c.floor_s(sgd_flops, sgd_bytes, dtype)
    conv = [r for r in rows if r.kind == "conv"]
    return ModelTotals(
        model=_model_name(model),
        batch=rows[0].batch,
        dtype=dtype,
        params=params,
        flops_fwd=sum(r.flops_fwd for r in rows),
        bytes_fwd=sum(r.bytes_fwd for r in rows),
        flops_bwd=sum(r.flops_bwd for r in rows),
        bytes_bwd=sum(r.bytes_bwd for r in rows),
        flops_train=sum(r.flops("train") for r in rows) + sgd_flops,
        bytes_train=sum(r.nbytes("train") for r in rows) + sgd_bytes,
        floor_fwd_s=floor_fwd,
        floor_bwd_s=floor_bwd,
        floor_train_s=floor_train,
        sgd_flops=sgd_flops,
        sgd_bytes=sgd_bytes,
        unfused_relu_bytes_fwd=sum(r.unfused_extra_bytes_fwd for r in conv),
        unfused_relu_bytes_bwd=sum(r.unfused_extra_bytes_bwd for r in conv),
        unfused_cat_bytes_fwd=sum(r.unfused_extra_bytes_fwd for r in rows if r.kind == "cat"),
    )


def model_totals(
    model: str,
    input_shape: Sequence[int] = (1, 1, 224, 224),
    batch: int | None = None,
    *,
    dtype: str = "bfloat16",
    num_classes: int = 10,
    vgg_arch: Sequence[tuple[int, int]] = VGG11_ARCH,
) -> ModelTotals:
    """Totals of ``layer_table(model, ...)`` (same arguments) for a forward pass and a training step."""
    return totals_of(
        model, layer_table(model, input_shape, batch, dtype=dtype, num_classes=num_classes, vgg_arch=vgg_arch)
    )


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _dtype_arg(text: str) -> str:
    import argparse

    try:
        return _dtype_name(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be one of fp32, fp16, bf16, fp64, got {text!r}") from None


def _main(argv: Sequence[str] | None = None) -> int:  # a printed summary for the README
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line on stderr, exit 2
            self.exit(2, f"{self.prog}: {message}\n")

    ap = Parser(prog="python -m cnnkernels.roofline", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=_positive_int, default=128)
    ap.add_argument("--dtype", type=_dtype_arg, default="bfloat16")
    ap.add_argument("--gpu", default="H100", choices=sorted(GPU_CEILINGS))
    ap.add_argument("--layers", action="store_true", help="print every layer, not only the totals")
    args = ap.parse_args(argv)
    print(f"batch {args.batch}, {args.dtype}, floors on {GPU_CEILINGS[args.gpu].name}")
    for m in MODELS:
        rows = layer_table(m, batch=args.batch, dtype=args.dtype)
        t = totals_of(m, rows)
        if args.layers:
            for r in rows:
                print(
                    f"  {m:9s} {r.name:16s} {r.kind:8s} {'x'.join(map(str, r.out_shape[1:])):>12s} "
                    f"{r.flops_fwd / 1e9:10.2f} GFLOP {r.bytes_fwd / 1e6:9.1f} MB {r.floor_s(args.gpu) * 1e6:9.1f} us"
                )
        print(
            f"{m:9s} params {t.params / 1e6:7.2f} M | fwd {t.flops_fwd / 1e12:7.3f} TFLOP {t.bytes_fwd / 1e9:7.3f} GB "
            f"floor {t.floor_s(args.gpu) * 1e3:7.3f} ms | train {t.flops_train / 1e12:7.3f} TFLOP {t.bytes_train / 1e9:7.3f} GB "
            f"floor {t.floor_s(args.gpu, 'train') * 1e3:7.3f} ms | unfused extra fwd {t.unfused_extra_bytes_fwd / 1e9:6.3f} GB "
            f"train {t.unfused_extra_bytes_train / 1e9:6.3f} GB"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
