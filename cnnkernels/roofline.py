"""Analytic roofline of a model: per-layer FLOPs, fewest bytes and floor times.

``layer_table`` builds the ``torch.nn`` model on the ``meta`` device, runs it once with forward
hooks (shapes only) and asks ``cnnkernels.fuse`` of it which kernel each layer becomes: one
``Layer`` per conv / pool / concatenation / flatten / linear module, named by its module path.
``totals_of`` sums a table into ``ModelTotals``. Importing this module imports no torch.

Counting rules:

* FLOPs: conv and linear ``2 * MACs``; backward dX + dW (``2 x``), only dW (``1 x``) where the
  input needs no gradient (the image). Pooling: one per window element read forward, one per input
  element backward. ``tests/test_roofline.py`` holds them to ``torch.utils.flop_counter``.
* Bytes: every input, weight and output moved exactly once. A ReLU in its conv costs nothing
  forward; backward reads dY and the saved output y (its mask). A concatenation done in place
  (each Inception branch writes its slice) costs nothing. A max pool saves a 1-byte argmax in
  training. A max pool computed in its conv's kernel moves nothing itself: the conv writes the
  pooled output and argmax, its backward reads those and the pooled dY. The Inception pool branch,
  pooled in its 1x1 conv's kernel, writes nothing to HBM (its per-SM staging rows, rewritten tile
  after tile, are taken to stay in L2: an assumption for the GPU check); its backward reads the
  input again.
* Training step: training forward + backward + an SGD update (read w and grad, write w; 2 FLOPs).
* Floor: ``max(flops / peak, bytes / bandwidth)`` per layer, summed over the layers.
* ``unfused_extra_bytes_*``: what a layer-by-layer library moves on top: a separate ReLU reads and
  writes the conv output (``2 x out``, forward and backward), ``torch.cat`` reads and writes the
  block output, a separate max pool after its conv ``2 x y`` forward and ``3 x y - out`` backward.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

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


_HOPPER_FLOPS = {"bfloat16": 790e12, "float16": 790e12, "float32": 395e12}  # H100 and H200; fp32: TF32
GPU_CEILINGS: dict[str, GpuCeiling] = {
    "H100": GpuCeiling("NVIDIA H100 (80 GB HBM3)", _HOPPER_FLOPS, bandwidth=3.0e12),
    "H200": GpuCeiling("NVIDIA H200 (141 GB HBM3e)", _HOPPER_FLOPS, bandwidth=4.3e12),
}


def ceiling_for(device_name: str) -> str | None:
    """The ``GPU_CEILINGS`` key matching a device name (``torch.cuda.get_device_name()``), or None."""
    return next((key for key in ("H200", "H100") if key in device_name.upper()), None)


DTYPE_BYTES: dict[str, int] = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
_DTYPE_ALIASES = {"fp64": "float64", "fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)} (or fp16/bf16/fp32), got {dtype!r}")
    return name


MODELS: tuple[str, ...] = ("AlexNet", "VGG", "NiN", "GoogLeNet")
MODES = ("forward", "backward", "train")  # what flops(), nbytes() and floor_s() take
_MODEL_ALIASES = {m.lower(): m for m in MODELS} | {"vgg11": "VGG", "vgg-11": "VGG"}


# Per-layer table


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of a model at a batch size and dtype. Shapes include the batch dimension."""

    name: str  # module path in the model, as in its state_dict
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
    computed_in: str = ""  # the layer whose kernel computes this one (a max pool in its conv's)
    params: int = 0
    flops_fwd: int = 0
    flops_bwd: int = 0
    bytes_fwd: int = 0  # inference forward
    bytes_fwd_train: int = 0  # training forward (adds max pooling's saved argmax)
    bytes_bwd: int = 0
    unfused_extra_bytes_fwd: int = 0
    unfused_extra_bytes_bwd: int = 0
    flops_formula: str = "0"  # forward, over the shape symbols N C H W K P Q R S (IN OUT for linear)
    bytes_formula: str = "0"
    flops_formula_bwd: str = "0"
    bytes_formula_bwd: str = "0"
    bytes_formula_fwd_train: str = ""  # when the training forward moves more than the inference one

    def formula(self, what: str, mode: str = "forward") -> str:
        """The formula behind ``flops(mode)`` (``what="flops"``) or ``nbytes(mode)`` (``what="bytes"``)."""
        if what not in ("flops", "bytes") or mode not in MODES:
            raise ValueError(f"what must be flops or bytes and mode forward, backward or train, got {what!r}, {mode!r}")
        fwd, bwd = getattr(self, f"{what}_formula"), getattr(self, f"{what}_formula_bwd")
        if mode == "train" and what == "bytes" and self.bytes_formula_fwd_train:
            fwd = self.bytes_formula_fwd_train
        return {"forward": fwd, "backward": bwd, "train": f"[{fwd}] + [{bwd}]"}[mode]

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
        train = self.bytes_fwd_train + self.bytes_bwd
        return {"forward": self.bytes_fwd, "backward": self.bytes_bwd, "train": train}[mode]

    def floor_s(self, gpu: str = "H100", mode: str = "forward") -> float:
        """Floor time on ``gpu`` (a ``GPU_CEILINGS`` key); "train" adds the forward and backward floors."""
        c = GPU_CEILINGS[gpu]
        if mode == "train":
            fwd = c.floor_s(self.flops_fwd, self.bytes_fwd_train, self.dtype)
            return fwd + c.floor_s(self.flops_bwd, self.bytes_bwd, self.dtype)
        return c.floor_s(self.flops(mode), self.nbytes(mode), self.dtype)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _gemm_layer(kind, head, relu, m, geometry) -> Layer:
    """A conv or linear layer, module ``m``: ``y = x (*) W + b``; ``head``: the ``Layer`` fields
    every row has (name, shapes, dtype, needs_input_grad)."""
    b, needs_grad = DTYPE_BYTES[head["dtype"]], head["needs_input_grad"]
    x, y = math.prod(head["in_shape"]), math.prod(head["out_shape"])
    weights, params = m.weight.numel(), sum(p.numel() for p in m.parameters(recurse=False))  # params: W and b
    flops = 2 * y * weights // head["out_shape"][1]  # 2 x MACs: each output reads weights / out_channels of W
    # backward: read dY (+ y for the ReLU mask), x (for dW), W (for dX); write dX, dW, db
    bwd = y + (y if relu else 0) + x + params + (weights + x if needs_grad else 0)
    s = ("N*C*H*W", "K*C*R*S", "K", "N*K*P*Q") if kind == "conv" else ("N*IN", "IN*OUT", "OUT", "N*OUT")
    f = "2*N*K*P*Q*C*R*S" if kind == "conv" else "2*N*IN*OUT"
    fused_relu = kind == "conv" and relu
    return Layer(
        **head,
        kind=kind,
        relu=relu,
        params=params,
        flops_fwd=flops,
        flops_bwd=2 * flops if needs_grad else flops,
        bytes_fwd=(x + params + y) * b,
        bytes_fwd_train=(x + params + y) * b,
        bytes_bwd=bwd * b,
        unfused_extra_bytes_fwd=2 * y * b if fused_relu else 0,
        unfused_extra_bytes_bwd=2 * y * b if fused_relu else 0,
        flops_formula=f,
        bytes_formula=f"({s[0]} + {s[1]} + {s[2]} + {s[3]}) * bytes",
        flops_formula_bwd=f"2 * {f} (dX and dW)" if needs_grad else f"{f} (dW only: the input needs no gradient)",
        bytes_formula_bwd=(
            f"({'2*' if relu else ''}{s[3]} [dY{', y' if relu else ''}] + {s[0]} [x] + {s[1]} + {s[2]} [dW, db]"
            + (f" + {s[1]} + {s[0]} [W, dX]" if needs_grad else "")
            + ") * bytes"
        ),
        **geometry,
    )


def _pool_layer(kind, head, geometry) -> Layer:
    """Max pooling (window ``geometry["kernel"]``) or adaptive average pooling."""
    b, needs_grad = DTYPE_BYTES[head["dtype"]], head["needs_input_grad"]
    x, y = math.prod(head["in_shape"]), math.prod(head["out_shape"])
    argmax = y if kind == "maxpool" else 0  # the 1-byte within-window argmax, saved for backward
    bwd = "(N*C*P*Q [dY] + N*C*H*W [dX]) * bytes"
    if argmax:
        bwd = "N*C*P*Q * (bytes + 1) [dY, argmax] + N*C*H*W * bytes [dX]"
    return Layer(
        **head,
        kind=kind,
        flops_fwd=y * math.prod(geometry["kernel"]) if kind == "maxpool" else x,
        flops_bwd=x if needs_grad else 0,
        bytes_fwd=(x + y) * b,
        bytes_fwd_train=(x + y) * b + argmax,
        bytes_bwd=(y * b + argmax + x * b) if needs_grad else 0,  # read dY (and argmax), write dX
        flops_formula="N*C*P*Q*R*S" if kind == "maxpool" else "N*C*H*W",
        bytes_formula="(N*C*H*W + N*C*P*Q) * bytes",
        bytes_formula_fwd_train="(N*C*H*W + N*C*P*Q) * bytes + N*C*P*Q [1-byte argmax]" if argmax else "",
        flops_formula_bwd="N*C*H*W" if needs_grad else "0",
        bytes_formula_bwd=bwd if needs_grad else "0",
        **geometry,
    )


def _pooled_in_conv(conv: Layer, pool: Layer) -> tuple[Layer, Layer]:
    """The rows of a conv + ReLU + max pool computed as one kernel (see the module docstring)."""
    b, y, p = DTYPE_BYTES[conv.dtype], math.prod(conv.out_shape), math.prod(pool.out_shape)
    fwd = conv.bytes_fwd + (p - y) * b  # writes the pooled output, not the conv's
    conv = dataclasses.replace(
        conv,
        bytes_fwd=fwd,
        bytes_fwd_train=fwd + p,  # + the 1-byte argmax
        bytes_bwd=conv.bytes_bwd + 2 * (p - y) * b + p,  # dY_p, y_p and the argmax, not dY and y
        bytes_formula=(pooled := conv.bytes_formula.replace("N*K*P*Q", "N*K*P'*Q' [pooled]")),
        bytes_formula_fwd_train=f"{pooled} + N*K*P'*Q' [argmax]",
        bytes_formula_bwd=conv.bytes_formula_bwd.replace("2*N*K*P*Q [dY, y]", "2*N*K*P'*Q' [pooled dY, y]")
        + " + N*K*P'*Q' [argmax]",
    )
    inside = dict(bytes_bwd=0, bytes_formula="0 (in the conv's kernel)", bytes_formula_bwd="0 (in the conv's kernel)")
    extra = dict(unfused_extra_bytes_fwd=2 * y * b, unfused_extra_bytes_bwd=(3 * y - p) * b)
    return conv, _computed_in(pool, conv.name, **inside, **extra)


def _computed_in(pool: Layer, where: str, **fields) -> Layer:
    """A max pool computed in another layer's kernel: no forward bytes of its own."""
    return dataclasses.replace(
        pool, computed_in=where, bytes_fwd=0, bytes_fwd_train=0, bytes_formula_fwd_train="", **fields
    )


def _pooled_on_load(pool: Layer, conv: str) -> Layer:
    """The Inception block's 3x3/1 max pool, pooled in its 1x1 conv ``conv``'s kernel (per-SM staging
    rows taken to stay in L2): its backward reads the input again (the argmax); unfused, the pooled
    tensor and a 1-byte argmax."""
    b, x, y = DTYPE_BYTES[pool.dtype], math.prod(pool.in_shape), math.prod(pool.out_shape)
    extra = dict(unfused_extra_bytes_fwd=2 * y * b, unfused_extra_bytes_bwd=2 * y - x * b)
    bwd = dict(bytes_bwd=3 * x * b if pool.needs_input_grad else 0)
    bwd["bytes_formula_bwd"] = "3 * N*C*H*W * bytes [x again for the argmax, dY, dX]"
    return _computed_in(pool, conv, bytes_formula="0 (pooled in the 1x1 conv's kernel)", **extra, **bwd)


def _architecture(model):
    """The ``torch.nn`` class and constructor arguments of a ``MODELS`` name or a ``cnnkernels.models`` model."""
    from cnnkernels.models import reference

    if isinstance(model, str):
        try:
            return getattr(reference, _MODEL_ALIASES[model.lower()]), {"num_classes": 10}
        except KeyError:
            raise ValueError(f"model must be one of {MODELS} or a cnnkernels.models model, got {model!r}") from None
    twin = getattr(type(model), "_shape_twin", None)
    if twin is None:
        raise TypeError(f"model must be a name or a cnnkernels.models model, got {type(model).__name__}")
    return twin(), model.hparams


def layer_table(
    model="GoogLeNet",
    input_shape: Sequence[int] = (1, 1, 224, 224),
    batch: int | None = None,
    *,
    dtype="bfloat16",
    pools_in_convs: bool = True,
) -> list[Layer]:
    """Every conv, pool, concatenation (named after its block, after the branches), flatten and linear
    layer of ``model`` (a name in ``MODELS`` or a ``cnnkernels.models`` model) on an (N, C, H, W)
    input (``batch`` replaces N), in call order; ``pools_in_convs=False`` counts each max pool alone."""
    import torch
    from torch import nn

    from cnnkernels import fuse
    from cnnkernels import nn as cnn

    if len(input_shape) != 4 or any(int(d) <= 0 for d in input_shape):
        raise ValueError(f"input_shape must be a positive (N, C, H, W), got {tuple(input_shape)}")
    if batch is not None and batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    shape = (int(batch or input_shape[0]), *(int(d) for d in input_shape[1:]))
    dtype = _dtype_name(dtype)
    cls, hparams = _architecture(model)
    with torch.device("meta"):
        ref = cls(**hparams)
    low = ref.min_input_size
    if min(shape[2:]) < low:
        raise ValueError(f"{cls.__name__} input {shape[2]}x{shape[3]} is too small; it needs at least {low}x{low}")
    ref.materialize(shape)
    kernels = dict(fuse(ref.net).named_modules(prefix="net"))  # what each layer becomes on the kernels
    calls = []  # (path, module, input, output) in the order the modules finish
    for path, m in ref.named_modules():
        m.register_forward_hook(lambda m, args, out, path=path: calls.append((path, m, args[0], out)))
    with torch.no_grad():
        ref(torch.empty(shape, device="meta"))

    rows: list[Layer] = []
    needs_grad = False  # the image needs no gradient; everything after the first layer with parameters does
    for i, (path, m, x, y) in enumerate(calls):
        fused, xs, ys = kernels.get(path), tuple(x.shape), tuple(y.shape)
        head = dict(name=path, in_shape=xs, out_shape=ys, dtype=dtype, needs_input_grad=needs_grad)
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            geometry = dict(kernel=_pair(m.kernel_size), stride=_pair(m.stride), padding=_pair(m.padding))
        if isinstance(m, nn.Conv2d):
            row = _gemm_layer("conv", head, isinstance(fused, cnn.Conv2dReLU), m, geometry)
        elif isinstance(m, nn.Linear):  # its ReLU: torch's ReLU module right after it, on its output
            relu = i + 1 < len(calls) and isinstance(calls[i + 1][1], nn.ReLU) and calls[i + 1][2] is y
            row = _gemm_layer("linear", head, relu, m, {})
        elif isinstance(m, nn.MaxPool2d):
            row = _pool_layer("maxpool", head, geometry)
            if pools_in_convs and rows and isinstance(kernels.get(rows[-1].name), cnn.Conv2dReLUMaxPool2d):
                rows[-1], row = _pooled_in_conv(rows[-1], row)
            elif pools_in_convs and path.endswith(".b4_1") and isinstance(kernels.get(path[:-5]), cnn.Inception):
                row = _pooled_on_load(row, f"{path[:-5]}.b4_2")
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            row = _pool_layer("avgpool", head, dict(kernel=xs[2:], stride=xs[2:], padding=(0, 0)))
        elif isinstance(m, nn.Flatten):
            row = Layer(**head, kind="flatten", bytes_formula="0 (a view)")
        elif isinstance(fused, cnn.Inception):  # zero-copy: each branch writes its channel slice
            row = Layer(
                **(head | {"in_shape": ys, "needs_input_grad": True}),  # a row for the block's output
                kind="cat",
                branch_channels=tuple(getattr(fused, b).out_channels for b in ("b1_1", "b2_2", "b3_2", "b4_2")),
                unfused_extra_bytes_fwd=2 * math.prod(ys) * DTYPE_BYTES[dtype],  # torch.cat reads and writes it
                bytes_formula="0 (each branch writes its channel slice)",
                bytes_formula_bwd="0 (each branch reads its slice of the gradient)",
            )
        else:
            continue
        needs_grad = needs_grad or row.params > 0
        rows.append(row)
    return rows


# Model totals


@dataclasses.dataclass(frozen=True)
class ModelTotals:
    """Sums over a ``layer_table`` (the counting rules: the module docstring)."""

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
    floors: dict[str, dict[str, float]]  # mode -> GPU_CEILINGS key -> sum of per-layer floors (s)
    sgd_flops: int
    sgd_bytes: int
    unfused_relu_bytes_fwd: int  # separate ReLU pass after each conv: read + write its output
    unfused_relu_bytes_bwd: int
    unfused_cat_bytes_fwd: int  # torch.cat of each Inception block: read + write the branch outputs
    unfused_pool_bytes_fwd: int  # a separate max pool after a conv: the conv output written and read
    unfused_pool_bytes_bwd: int

    @property
    def unfused_extra_bytes_fwd(self) -> int:
        return self.unfused_relu_bytes_fwd + self.unfused_cat_bytes_fwd + self.unfused_pool_bytes_fwd

    @property
    def unfused_extra_bytes_train(self) -> int:
        return self.unfused_extra_bytes("train")

    def unfused_extra_bytes(self, mode: str = "forward") -> int:
        """Bytes a layer-by-layer (unfused) execution moves beyond the fused one in ``mode``."""
        fwd, bwd = self.unfused_extra_bytes_fwd, self.unfused_relu_bytes_bwd + self.unfused_pool_bytes_bwd
        return {"forward": fwd, "backward": bwd, "train": fwd + bwd}[mode]

    def flops(self, mode: str = "forward") -> int:
        """FLOPs of ``mode``: "forward", "backward" or "train" (forward + backward + SGD update)."""
        return {"forward": self.flops_fwd, "backward": self.flops_bwd, "train": self.flops_train}[mode]

    def nbytes(self, mode: str = "forward") -> int:
        return {"forward": self.bytes_fwd, "backward": self.bytes_bwd, "train": self.bytes_train}[mode]

    def floor_s(self, gpu: str = "H100", mode: str = "forward") -> float:
        return self.floors[mode][gpu]


def totals_of(model: str, rows: Sequence[Layer]) -> ModelTotals:
    """Sum a layer table (as ``layer_table`` returns it) into a ``ModelTotals`` labelled ``model``."""
    dtype = rows[0].dtype
    sums = {f: sum(getattr(r, f) for r in rows) for f in ("params", "flops_fwd", "bytes_fwd", "flops_bwd", "bytes_bwd")}
    sgd_flops, sgd_bytes = 2 * sums["params"], 3 * sums["params"] * DTYPE_BYTES[dtype]
    floors = {mode: {gpu: sum(r.floor_s(gpu, mode) for r in rows) for gpu in GPU_CEILINGS} for mode in MODES}
    for gpu, c in GPU_CEILINGS.items():
        floors["train"][gpu] += c.floor_s(sgd_flops, sgd_bytes, dtype)
    conv = [r for r in rows if r.kind == "conv"]
    return ModelTotals(
        model=model,
        batch=rows[0].batch,
        dtype=dtype,
        **sums,
        flops_train=sum(r.flops("train") for r in rows) + sgd_flops,
        bytes_train=sum(r.nbytes("train") for r in rows) + sgd_bytes,
        floors=floors,
        sgd_flops=sgd_flops,
        sgd_bytes=sgd_bytes,
        unfused_relu_bytes_fwd=sum(r.unfused_extra_bytes_fwd for r in conv),
        unfused_relu_bytes_bwd=sum(r.unfused_extra_bytes_bwd for r in conv),
        unfused_cat_bytes_fwd=sum(r.unfused_extra_bytes_fwd for r in rows if r.kind == "cat"),
        unfused_pool_bytes_fwd=sum(r.unfused_extra_bytes_fwd for r in rows if r.kind == "maxpool"),
        unfused_pool_bytes_bwd=sum(r.unfused_extra_bytes_bwd for r in rows if r.kind == "maxpool"),
    )


def model_totals(model="GoogLeNet", input_shape=(1, 1, 224, 224), batch=None, *, dtype="bfloat16") -> ModelTotals:
    """Totals of ``layer_table(model, ...)`` (same arguments) for a forward pass and a training step."""
    label = model if isinstance(model, str) else type(model).__name__
    return totals_of(label, layer_table(model, input_shape, batch, dtype=dtype))


def readme_table(batch: int = 128, dtype: str = "bfloat16") -> str:
    """The README's table of the bytes fusion saves (Markdown), from ``model_totals``."""
    lines = [
        "| model | fused forward moves | layer-by-layer adds (forward) | of which ReLU / concat / pool "
        "| adds per training step |",
        "|---|---|---|---|---|",
    ]
    for m in MODELS:
        t = model_totals(m, batch=batch, dtype=dtype)
        parts = (t.unfused_relu_bytes_fwd, t.unfused_cat_bytes_fwd, t.unfused_pool_bytes_fwd)
        split = " / ".join(f"{v / 1e9:.2f}" for v in parts)
        lines.append(
            f"| {'VGG-11' if m == 'VGG' else m} | {t.bytes_fwd / 1e9:.2f} GB | {t.unfused_extra_bytes_fwd / 1e9:.2f} GB "
            f"| {split} GB | {t.unfused_extra_bytes_train / 1e9:.2f} GB |"
        )
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:  # a printed summary; --readme: the README's table
    from cnnkernels.cli import OneLineParser, dtype_name, positive_int

    ap = OneLineParser(prog="python -m cnnkernels.roofline", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=positive_int, default=128)
    ap.add_argument("--dtype", type=dtype_name, default="bfloat16")
    ap.add_argument("--gpu", default="H100", choices=sorted(GPU_CEILINGS))
    ap.add_argument("--readme", action="store_true", help="print the README's table of the bytes fusion saves")
    args = ap.parse_args(argv)
    if args.readme:
        print(readme_table(args.batch, args.dtype))
        return 0
    print(f"batch {args.batch}, {args.dtype}, floors on {GPU_CEILINGS[args.gpu].name}")
    for m in MODELS:
        t = model_totals(m, batch=args.batch, dtype=args.dtype)  # per layer: cnnkernels summary MODEL
        print(
            f"{m:9s} params {t.params / 1e6:7.2f} M | fwd {t.flops_fwd / 1e12:7.3f} TFLOP {t.bytes_fwd / 1e9:7.3f} GB "
            f"floor {t.floor_s(args.gpu) * 1e3:7.3f} ms | train {t.flops_train / 1e12:7.3f} TFLOP {t.bytes_train / 1e9:7.3f} GB "
            f"floor {t.floor_s(args.gpu, 'train') * 1e3:7.3f} ms | unfused extra fwd {t.unfused_extra_bytes_fwd / 1e9:6.3f} GB "
            f"train {t.unfused_extra_bytes_train / 1e9:6.3f} GB"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
