"""The analytic roofline: the layer table taken from the models (shapes against the seed's printed
``layer_summary``), FLOPs against ``torch.utils.flop_counter`` and by hand formula, bytes by hand
formula, the floor as the max of its two terms, totals that add up, and the README's byte table."""

import math
import re
from pathlib import Path

import pytest

from cnnkernels import roofline as R

README = Path(__file__).resolve().parents[1] / "README.md"


def _rows(model, batch=1, **kw):
    return {r.name: r for r in R.layer_table(model, batch=batch, **kw)}


# -- shapes against the seed -----------------------------------------------------------------

ALEXNET_SEED = [  # AlexNet().layer_summary((1, 1, 224, 224)), ReLU and Dropout rows left out
    ("conv", (1, 96, 54, 54)),
    ("maxpool", (1, 96, 26, 26)),
    ("conv", (1, 256, 26, 26)),
    ("maxpool", (1, 256, 12, 12)),
    ("conv", (1, 384, 12, 12)),
    ("conv", (1, 384, 12, 12)),
    ("conv", (1, 256, 12, 12)),
    ("maxpool", (1, 256, 5, 5)),
    ("flatten", (1, 6400)),
    ("linear", (1, 4096)),
    ("linear", (1, 4096)),
    ("linear", (1, 10)),
]


def test_alexnet_shapes_match_seed_summary():
    rows = R.layer_table("AlexNet", (1, 1, 224, 224))
    assert [(r.kind, r.out_shape) for r in rows] == ALEXNET_SEED


def _kind(rows, kind):
    return [r.out_shape for r in (rows.values() if isinstance(rows, dict) else rows) if r.kind == kind]


def test_vgg11_block_outputs_match_seed_summary():
    rows = _rows("VGG")
    blocks = _kind(rows, "maxpool")
    assert blocks == [(1, 64, 112, 112), (1, 128, 56, 56), (1, 256, 28, 28), (1, 512, 14, 14), (1, 512, 7, 7)]
    assert _kind(rows, "flatten") == [(1, 25088)]
    assert _kind(rows, "linear") == [(1, 4096), (1, 4096), (1, 10)]
    assert sum(r.kind == "conv" for r in rows.values()) == 8  # "VGG-11 has 8 conv layers and 3 fully connected"


def test_vgg_takes_any_arch():
    from cnnkernels.models import reference

    rows = R.layer_table(reference.VGG(arch=((1, 8), (2, 16))))
    assert _kind(rows, "maxpool") == [(1, 8, 112, 112), (1, 16, 56, 56)]
    assert _kind(rows, "flatten") == [(1, 16 * 56 * 56)]


def test_googlenet_block_outputs_match_seed():
    rows = _rows("GoogLeNet")
    pools = [r.out_shape for r in rows.values() if r.kind == "maxpool" and r.stride == (2, 2)]
    assert pools == [(1, 64, 56, 56), (1, 192, 28, 28), (1, 480, 14, 14), (1, 832, 7, 7)]
    assert _kind(rows, "flatten") == [(1, 1024)] and _kind(rows, "linear") == [(1, 10)]
    # the seed's channel sums: 480 = 128 + 192 + 96 + 64, 832 = 256 + 320 + 128 + 128, 1024 = 384 + 384 + 128 + 128
    assert rows["net.2.1"].branch_channels == (128, 192, 96, 64)
    assert rows["net.3.4"].branch_channels == (256, 320, 128, 128)
    assert rows["net.4.1"].branch_channels == (384, 384, 128, 128)
    assert [s[1] for s in _kind(rows, "cat")] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]


def test_inception_branches_read_the_block_input():
    rows = _rows("GoogLeNet")
    block_in = rows["net.2.2"].out_shape  # the pool before b4's first Inception
    for b in ("b1_1", "b2_1", "b3_1", "b4_1"):
        assert rows[f"net.3.0.{b}"].in_shape == block_in
    assert rows["net.3.0.b2_2"].in_shape == rows["net.3.0.b2_1"].out_shape
    assert rows["net.3.0.b4_1"].out_shape == block_in  # 3x3, stride 1, padding 1
    names = list(rows)  # the concatenation follows the block's branches
    assert names.index("net.3.0") == names.index("net.3.0.b4_2") + 1


def test_nin_shapes():
    rows = _rows("NiN")
    assert _kind(rows, "maxpool") == [(1, 96, 26, 26), (1, 256, 12, 12), (1, 384, 5, 5)]
    assert rows["net.0.0"].out_shape == (1, 96, 54, 54)
    assert rows["net.7.4"].out_shape == (1, 10, 5, 5)
    assert _kind(rows, "avgpool") == [(1, 10, 1, 1)] and _kind(rows, "flatten") == [(1, 10)]
    assert sum(r.is_1x1 for r in rows.values()) == 8


def test_seed_parameter_counts():
    alex, vgg = _rows("AlexNet"), _rows("VGG")
    assert alex["net.14"].params == 6400 * 4096 + 4096  # the seed's "26M"
    assert alex["net.17"].params == 4096 * 4096 + 4096  # "16M"
    assert vgg["net.6"].params == 25088 * 4096 + 4096  # "103M"
    assert alex["net.8"].params == 384 * 3 * 3 * 384 + 384


def test_fused_and_reference_models_give_the_named_table():
    """A model passes its own architecture (class and constructor arguments), fused or not."""
    from cnnkernels import models

    by_name = R.layer_table("GoogLeNet", batch=2, dtype="fp16")
    assert R.layer_table(models.GoogLeNet(), batch=2, dtype="fp16") == by_name
    assert R.layer_table(models.reference.GoogLeNet(), batch=2, dtype="fp16") == by_name
    assert R.layer_table(models.NiN(num_classes=7), batch=2)[-2].out_shape == (2, 7, 1, 1)


def test_fusion_decides_relu_and_concatenation_bytes():
    """What the fused model fuses is what the bytes model saves: every conv of the four models is
    followed by a ReLU (fused), the linear layers' ReLUs are torch's (no saving counted), and only
    GoogLeNet concatenates (in place)."""
    for model in R.MODELS:
        rows = R.layer_table(model)
        convs = [r for r in rows if r.kind == "conv"]
        assert convs and all(r.relu and r.unfused_extra_bytes_fwd > 0 for r in convs)
        assert all(r.unfused_extra_bytes_fwd == 0 for r in rows if r.kind == "linear")
    alex = [r for r in R.layer_table("AlexNet") if r.kind == "linear"]
    assert [r.relu for r in alex] == [True, True, False]


# -- per-layer formulas ----------------------------------------------------------------------


def test_conv_flops_and_bytes_by_hand():
    r = _rows("AlexNet", batch=4)["net.6"]  # 256 -> 384, 3x3, pad 1, at 12x12
    n, c, h, w, k, p, q, rr, s = 4, 256, 12, 12, 384, 12, 12, 3, 3
    assert r.flops_fwd == 2 * n * k * p * q * c * rr * s
    assert r.flops_bwd == 2 * r.flops_fwd
    assert r.bytes_fwd == (n * c * h * w + k * c * rr * s + k + n * k * p * q) * 2
    assert r.bytes_bwd == (2 * n * k * p * q + n * c * h * w + k * c * rr * s + k + k * c * rr * s + n * c * h * w) * 2
    assert r.unfused_extra_bytes_fwd == 2 * n * k * p * q * 2


def test_first_layer_needs_no_input_gradient():
    rows = R.layer_table("NiN", batch=2)
    first = rows[0]
    assert not first.needs_input_grad and all(r.needs_input_grad for r in rows[1:])
    assert first.flops_bwd == first.flops_fwd  # dW only
    n, c, h, w = first.in_shape
    k, p, q = first.out_shape[1:]
    assert first.bytes_fwd == (n * c * h * w + k * c * 11 * 11 + k + n * k * p * q) * 2
    assert first.bytes_bwd == (2 * n * k * p * q + n * c * h * w + k * c * 11 * 11 + k) * 2


def test_linear_and_pool_by_hand():
    rows = _rows("VGG", batch=3, dtype="float32")
    fc1 = rows["net.6"]
    assert fc1.flops_fwd == 2 * 3 * 25088 * 4096
    assert fc1.bytes_fwd == (3 * 25088 + 25088 * 4096 + 4096 + 3 * 4096) * 4
    pool = _rows("GoogLeNet", batch=3, dtype="float32")["net.2.2"]  # 3x3/2 after an Inception block
    x, y = 3 * 480 * 28 * 28, 3 * 480 * 14 * 14
    assert pool.bytes_fwd == (x + y) * 4
    assert pool.bytes_fwd_train == (x + y) * 4 + y  # 1-byte argmax
    assert pool.bytes_bwd == y * 4 + y + x * 4
    assert pool.flops_fwd == y * 9


def test_pool_in_the_conv_kernel_by_hand():
    """A conv + ReLU + max pool run as one kernel: the conv writes only the pooled output (and
    the argmax in training); its backward reads the pooled gradient, output and argmax."""
    rows = _rows("NiN", batch=2)
    conv, pool = R._pooled_in_conv(rows["net.0.0"], rows["net.1"])  # 96 x 54x54 -> 26x26
    n, c, h, k, y, p = 2, 1, 224, 96, 2 * 96 * 54 * 54, 2 * 96 * 26 * 26
    assert conv.bytes_fwd == (n * c * h * h + k * c * 11 * 11 + k + p) * 2
    assert conv.bytes_fwd_train == conv.bytes_fwd + p
    assert conv.bytes_bwd == (2 * p + n * c * h * h + k * c * 11 * 11 + k) * 2 + p  # first layer: no dX
    assert pool.bytes_fwd == pool.bytes_fwd_train == pool.bytes_bwd == 0 and pool.flops_fwd == p * 9
    assert pool.computed_in == "net.0.0"
    assert (pool.unfused_extra_bytes_fwd, pool.unfused_extra_bytes_bwd) == (2 * y * 2, (3 * y - p) * 2)
    assert "[pooled]" in conv.formula("bytes") and "argmax" in conv.formula("bytes", "train")


def test_inception_pool_while_loading_by_hand():
    """The Inception block's 3x3/1 pool computed while its 1x1 conv loads the block input."""
    rows = _rows("GoogLeNet", batch=2)
    pool = rows["net.2.0.b4_1"]
    x = 2 * 192 * 28 * 28  # the block input; the pool keeps its shape
    assert (pool.bytes_fwd, pool.bytes_fwd_train, pool.bytes_bwd) == (0, 0, 3 * x * 2)
    assert (pool.unfused_extra_bytes_fwd, pool.unfused_extra_bytes_bwd) == (2 * x * 2, 2 * x - x * 2)
    assert pool.computed_in == "net.2.0.b4_2" and pool.flops_fwd == x * 9
    alone = {r.name: r for r in R.layer_table("GoogLeNet", batch=2, pools_in_convs=False)}["net.2.0.b4_1"]
    assert alone.bytes_fwd == 2 * x * 2 and alone.bytes_fwd_train == 2 * x * 2 + x and not alone.computed_in


@pytest.mark.parametrize("model", R.MODELS)
def test_pools_in_conv_kernels_are_what_fuse_makes(model):
    """A max pool moves no bytes of its own exactly where ``cnnkernels.fuse`` computes it in the
    preceding conv's kernel, or (the seed's Inception) in the 1x1 conv that loads its input."""
    import torch

    from cnnkernels import fuse
    from cnnkernels import nn as cnn
    from cnnkernels.models import reference

    with torch.device("meta"):
        ref = getattr(reference, model)(num_classes=10)
    ref.materialize((1, 1, 224, 224))
    kernels = dict(fuse(ref.net).named_modules(prefix="net"))
    rows = R.layer_table(model)
    pairs = {(a.name, b.name) for a, b in zip(rows, rows[1:]) if b.computed_in == a.name}
    fused = {(a.name, b.name) for a, b in zip(rows, rows[1:]) if isinstance(kernels[a.name], cnn.Conv2dReLUMaxPool2d)}
    assert pairs == fused
    on_load = {(r.computed_in, r.name) for r in rows if r.computed_in and (r.computed_in, r.name) not in pairs}
    blocks = {(f"{p}.b4_2", f"{p}.b4_1") for p, m in kernels.items() if isinstance(m, cnn.Inception)}
    assert on_load == blocks and (model == "GoogLeNet") == bool(blocks)
    assert all((r.bytes_fwd == 0) == bool(r.computed_in) for r in rows if r.kind == "maxpool")


def test_cat_and_flatten_cost_nothing_fused():
    rows = _rows("GoogLeNet", batch=2)
    cat = rows["net.2.0"]
    assert cat.flops_fwd == cat.bytes_fwd == cat.bytes_bwd == 0
    assert cat.unfused_extra_bytes_fwd == 2 * (2 * 256 * 28 * 28) * 2
    assert rows["net.4.3"].bytes_fwd == 0


def test_bytes_scale_with_dtype_and_flops_with_batch():
    bf16, fp32 = _rows("NiN", batch=2), _rows("NiN", batch=2, dtype="float32")
    assert all(fp32[n].bytes_fwd == 2 * bf16[n].bytes_fwd for n in bf16)
    one, many = _rows("NiN", batch=1), _rows("NiN", batch=8)
    assert all(many[n].flops_fwd == 8 * one[n].flops_fwd for n in one)
    assert _rows("NiN", batch=2, dtype="bf16")["net.0.0"] == bf16["net.0.0"]


def test_input_shape_batch_and_batch_argument_agree():
    assert R.layer_table("AlexNet", (8, 1, 224, 224)) == R.layer_table("AlexNet", (1, 1, 224, 224), batch=8)


def test_formulas_are_strings_per_mode():
    r = _rows("GoogLeNet", batch=2)["net.1.2"]
    assert r.formula("flops") == "2*N*K*P*Q*C*R*S"
    assert "dX" in r.formula("flops", "backward")
    assert r.formula("bytes", "train").startswith("[")
    with pytest.raises(ValueError, match="mode"):
        r.formula("flops", "sideways")


# -- floors ----------------------------------------------------------------------------------


def test_floor_is_max_of_compute_and_memory_terms():
    h100, h200 = R.GPU_CEILINGS["H100"], R.GPU_CEILINGS["H200"]
    rows = R.layer_table("VGG", batch=128)
    for r in rows:
        for gpu, c in (("H100", h100), ("H200", h200)):
            assert r.floor_s(gpu) == max(r.flops_fwd / c.peak_flops("bfloat16"), r.bytes_fwd / c.bandwidth)
    conv = next(r for r in rows if r.name == "net.2.2")  # compute-bound
    assert conv.floor_s("H100") == conv.flops_fwd / 790e12 == conv.floor_s("H200")
    pool = _rows("GoogLeNet", batch=128)["net.2.2"]  # memory-bound
    assert pool.floor_s("H100") == pool.bytes_fwd / 3.0e12
    assert pool.floor_s("H200") == pool.bytes_fwd / 4.3e12 < pool.floor_s("H100")


def test_train_floor_adds_forward_and_backward():
    r = _rows("AlexNet", batch=32)["net.6"]
    c = R.GPU_CEILINGS["H100"]
    assert r.floor_s("H100", "train") == pytest.approx(
        c.floor_s(r.flops_fwd, r.bytes_fwd_train) + c.floor_s(r.flops_bwd, r.bytes_bwd)
    )


def test_fp32_uses_tf32_rate():
    r = _rows("VGG", batch=128, dtype="float32")["net.2.2"]
    assert r.floor_s("H100") == max(r.flops_fwd / 395e12, r.bytes_fwd / 3.0e12)


def test_ceiling_for_device_names():
    assert R.ceiling_for("NVIDIA H100 80GB HBM3") == "H100"
    assert R.ceiling_for("NVIDIA H200") == "H200"
    assert R.ceiling_for("NVIDIA A100-SXM4-40GB") is None


# -- totals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", R.MODELS)
def test_totals_add_up(model):
    rows = R.layer_table(model, batch=16)
    t = R.model_totals(model, batch=16)
    b = 2
    assert t.params == sum(r.params for r in rows)
    assert t.flops_fwd == sum(r.flops_fwd for r in rows)
    assert t.bytes_fwd == sum(r.bytes_fwd for r in rows)
    assert t.flops_bwd == sum(r.flops_bwd for r in rows)
    assert t.sgd_flops == 2 * t.params and t.sgd_bytes == 3 * t.params * b
    assert t.flops_train == t.flops_fwd + t.flops_bwd + t.sgd_flops
    assert t.bytes_train == sum(r.bytes_fwd_train for r in rows) + t.bytes_bwd + t.sgd_bytes
    for gpu, c in R.GPU_CEILINGS.items():
        assert t.floor_s(gpu) == pytest.approx(sum(r.floor_s(gpu) for r in rows))
        train = sum(r.floor_s(gpu, "train") for r in rows)
        assert t.floor_s(gpu, "train") == pytest.approx(train + c.floor_s(t.sgd_flops, t.sgd_bytes))
    # the floor of a sum of layers is at least the floor of the summed work
    assert t.floor_s("H100") >= max(t.flops_fwd / 790e12, t.bytes_fwd / 3.0e12) * (1 - 1e-12)


@pytest.mark.parametrize("model", R.MODELS)
def test_unfused_extra_bytes(model):
    rows = R.layer_table(model, batch=4)
    t = R.totals_of(model, rows)
    relu = sum(2 * math.prod(r.out_shape) * 2 for r in rows if r.kind == "conv")
    cat = sum(2 * math.prod(r.out_shape) * 2 for r in rows if r.kind == "cat")
    in_conv = [(a, b) for a, b in zip(rows, rows[1:]) if b.computed_in == a.name]
    on_load = [r for r in rows if r.computed_in.endswith(".b4_2")]  # Inception: pooled while the 1x1 loads
    pool_fwd = sum(2 * math.prod(a.out_shape) * 2 for a, _ in in_conv) + sum(
        2 * math.prod(r.out_shape) * 2 for r in on_load
    )
    pool_bwd = sum((3 * math.prod(a.out_shape) - math.prod(b.out_shape)) * 2 for a, b in in_conv)
    pool_bwd += sum(2 * math.prod(r.out_shape) - math.prod(r.in_shape) * 2 for r in on_load)
    assert t.unfused_relu_bytes_fwd == relu == t.unfused_relu_bytes_bwd
    assert t.unfused_cat_bytes_fwd == cat
    assert (cat > 0) == (model == "GoogLeNet")
    assert (t.unfused_pool_bytes_fwd, t.unfused_pool_bytes_bwd) == (pool_fwd, pool_bwd)
    fwd, bwd = relu + cat + pool_fwd, relu + pool_bwd
    assert [t.unfused_extra_bytes(m) for m in ("forward", "backward", "train")] == [fwd, bwd, fwd + bwd]
    assert (t.unfused_extra_bytes_fwd, t.unfused_extra_bytes_train) == (fwd, fwd + bwd)


# -- errors ----------------------------------------------------------------------------------


def test_bad_arguments():
    with pytest.raises(ValueError, match="model must be one of"):
        R.layer_table("ResNet")
    with pytest.raises(TypeError, match="cnnkernels.models model"):
        R.layer_table(object())
    with pytest.raises(ValueError, match="input_shape"):
        R.layer_table("AlexNet", (1, 224, 224))
    with pytest.raises(ValueError, match="batch"):
        R.layer_table("AlexNet", batch=0)
    with pytest.raises(ValueError, match="dtype"):
        R.layer_table("AlexNet", dtype="int8")
    with pytest.raises(ValueError, match="too small; it needs at least 65x65"):
        R.layer_table("AlexNet", (1, 1, 64, 64))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "0"], "argument --batch: must be a positive integer, got '0'"),
        (["--batch", "-2"], "argument --batch"),
        (["--dtype", "float8"], "argument --dtype: must be one of"),
    ],
)
def test_command_line_bad_input_is_one_line_exit_2(argv, message):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "cnnkernels.roofline", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_command_line_prints_every_model():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "cnnkernels.roofline", "--batch", "2", "--dtype", "fp16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("batch 2, float16") and all(m in proc.stdout for m in R.MODELS)


def test_import_needs_no_torch():
    """roofline itself imports no torch (whatever the package's ``__init__`` may import)."""
    import subprocess
    import sys

    code = "import sys, cnnkernels; before = 'torch' in sys.modules; import cnnkernels.roofline; sys.exit(not before and 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# -- against torch's own counts and the README ---------------------------------------------


@pytest.mark.parametrize("model", R.MODELS)
def test_flops_and_parameters_match_torch(model):
    """Forward and backward FLOPs of the table against ``torch.utils.flop_counter.FlopCounterMode``
    counting the ``torch.nn`` model itself (meta device: shapes only), conv and linear layers
    (pooling is not counted by torch; the table's pooling FLOPs are left out); parameters against
    the model's own."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cnnkernels.models import reference

    with torch.device("meta"):
        net = getattr(reference, model)(num_classes=10)
        x = torch.zeros(2, 1, 224, 224)
        net.materialize(x.shape)
        with FlopCounterMode(display=False) as fwd:
            y = net.eval()(x)
        with FlopCounterMode(display=False) as bwd:
            y.sum().backward()
    rows = R.layer_table(model, batch=2)
    gemm = [r for r in rows if r.kind in ("conv", "linear")]
    assert fwd.get_total_flops() == sum(r.flops("forward") for r in gemm) > 0
    assert bwd.get_total_flops() == sum(r.flops("backward") for r in gemm) > 0
    assert sum(p.numel() for p in net.parameters()) == sum(r.params for r in rows) > 0


def test_readme_byte_table_is_regenerated():
    """The README's table of the bytes fusion saves is what ``python -m cnnkernels.roofline --readme`` prints."""
    table = R.readme_table(batch=128)
    assert table.count("\n") == 5 and "GoogLeNet" in table
    assert table in README.read_text(encoding="utf-8"), "README: paste `python -m cnnkernels.roofline --readme`"
    assert re.search(r"batch\s+128,\s+bf16", README.read_text(encoding="utf-8"))
