"""``cnnkernels.fuse`` on hand-built models and on torchvision's (random weights, never
downloaded): what it takes and what it refuses, the report, parameters shared or copied,
``state_dict`` both ways, and outputs and gradients against the original.

torchvision is optional (``pip install -e ".[vision]"`` beside the same torch): its tests skip
with the reason when it is not installed. Its C++ ops need the torch build they were compiled
against (the PyPI wheels: the CUDA torch); with another build, ``import torchvision`` fails while
registering them ("operator torchvision::nms does not exist"). The model definitions use none of
them, so ``_torchvision_models`` then imports ``torchvision.models`` without running the
package's ``__init__`` (which is where the registration happens).

Under Triton's interpreter each kernel launch costs tens of milliseconds, so inputs are the
smallest each network admits (or near it), batch 1, 10 classes; the large networks and the
float64 twins of the torchvision checks are ``slow``.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import cnnkernels
import cnnkernels.nn as cnn
from cnnkernels import fuse
from cnnkernels.fusion import Conv2dBatchNorm, FoldedBatchNorm2d, FusedMaxPool2d, FusedReLU, FuseReport, concat
from cnnkernels.models import reference
from cnnkernels.testing import assert_close, model_verdict

from conftest import DEVICE


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from their identity defaults, so folding
    them is visible."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model


def _compare(original: nn.Module, fused: nn.Module, shape, dtype=torch.float64) -> None:
    """Logits, input gradient and every parameter gradient of ``fused`` against ``original``
    (same weights) under the model rule: against ``original`` run in float64, within twice
    torch's own error in ``dtype`` plus that dtype's floor."""
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    x_ours, x_torch = x.clone().requires_grad_(), x.clone().requires_grad_()
    x64 = x.double().requires_grad_()
    ref64 = copy.deepcopy(original).double()
    y_ours, y_torch, y64 = fused(x_ours), original(x_torch), ref64(x64)
    g = torch.randn_like(y64)
    y_ours.backward(g.to(dtype))
    y_torch.backward(g.to(dtype))
    y64.backward(g)
    verdicts = [
        model_verdict("logits", y_ours, y64, y_torch),
        model_verdict("input grad", x_ours.grad, x64.grad, x_torch.grad),
    ]
    named64 = dict(ref64.named_parameters())
    named_torch = dict(original.named_parameters())
    for name, p in fused.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        verdicts.append(model_verdict(name, p.grad, named64[name].grad, named_torch[name].grad))
    assert len(verdicts) == 2 + len(named_torch)
    bad = [str(v) for v in verdicts if not v.ok]
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------- hand-built models


def _small_cnn(bias: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 5, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    )


def test_sequential_fuses_and_reports_every_layer():
    model = _randomise_bn(_small_cnn()).double().eval()
    fused, report = fuse(model, report=True)
    kinds = [type(m) for m in fused]
    assert kinds == [
        cnn.Conv2dReLUMaxPool2d,
        FusedReLU,
        FusedMaxPool2d,
        Conv2dBatchNorm,
        FoldedBatchNorm2d,
        FusedReLU,
        cnn.Conv2d,
        cnn.AdaptiveAvgPool2d,
        nn.Flatten,
        nn.Linear,
    ]
    assert fused[3].activation == "relu" and fused[3].bn is fused[4]
    assert isinstance(report, FuseReport)
    rows = {e.name: e for e in report}
    assert rows["0"].was == "Conv2d+ReLU+MaxPool2d" and rows["0"].became == "Conv2dReLUMaxPool2d"
    assert rows["2"].became == "FusedMaxPool2d" and rows["2"].reason == "computed by 0"
    assert rows["3"].was == "Conv2d+BatchNorm2d+ReLU" and "4 folded in eval mode" in rows["3"].reason
    assert rows["6"].became == "Conv2d" and rows["7"].became == "AdaptiveAvgPool2d"
    assert [e.name for e in report.kept] == ["8", "9"]
    assert all(e.reason for e in report.kept)
    text = str(report)
    assert text.splitlines()[0].split() == ["layer", "was", "became", "why"]
    assert "Linear" in text and "no cnnkernels kernel" in text
    _compare(model, fused, (2, 3, 9, 9))


def test_copy_by_default_shared_with_inplace():
    model = _small_cnn().eval()
    copied = fuse(model)
    assert all(p is not q for p, q in zip(model.parameters(), copied.parameters()))
    assert type(model[0]) is nn.Conv2d  # the original is untouched
    ids = [id(p) for p in model.parameters()] + [id(b) for b in model.buffers()]
    shared = fuse(model, inplace=True)
    assert shared is model and type(model[0]) is cnn.Conv2dReLUMaxPool2d
    assert [id(p) for p in shared.parameters()] + [id(b) for b in shared.buffers()] == ids


def test_state_dict_round_trip_and_mode_dtype_carry_over():
    model = _randomise_bn(_small_cnn()).double().eval()
    fused = fuse(model)
    assert list(fused.state_dict()) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(fused.state_dict()[k], v), k  # BN stays unfolded in the state_dict
    assert not fused.training and all(not m.training for m in fused.modules())
    assert {p.dtype for p in fused.parameters()} == {torch.float64}
    # Changed weights go back into the original and into a fresh fused copy.
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.25)
        fused[4].running_var.mul_(2)
    model.load_state_dict(fused.state_dict())
    again = fuse(_small_cnn().double().eval())
    again.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, device=DEVICE)
    assert_close(again(x), model(x), torch.float64)
    assert_close(fused(x), model(x), torch.float64)


def test_batch_norm_in_training_mode_is_torchs():
    model = _randomise_bn(_small_cnn()).double().train()
    fused = fuse(model)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, device=DEVICE)
    assert_close(fused(x), model(x), torch.float64)
    bn, placeholder = model[4], fused[4]
    assert_close(placeholder.running_mean, bn.running_mean, torch.float64, name="running_mean")
    assert_close(placeholder.running_var, bn.running_var, torch.float64, name="running_var")
    assert int(placeholder.num_batches_tracked) == int(bn.num_batches_tracked) == 1
    fused.eval()  # now folded: eval switches over at call time
    model.eval()
    assert_close(fused(x), model(x), torch.float64)


class _Fire(nn.Module):
    """A squeeze/expand block in the style of torchvision's SqueezeNet Fire: functional ReLU,
    a shared ReLU module and ``torch.cat`` in its forward."""

    def __init__(self):
        super().__init__()
        self.squeeze = nn.Conv2d(4, 3, 1)
        self.act = nn.ReLU()
        self.e1 = nn.Conv2d(3, 4, 1)
        self.e3 = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        s = self.act(self.squeeze(x))
        return torch.cat([F.relu(self.e1(s)), self.e3(s).relu()], 1)


def test_traced_forward_fuses_functional_relu_and_cat():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), _Fire()).double()
    fused, report = fuse(model, report=True)
    fire = fused[1]
    assert isinstance(fire, fx.GraphModule) and type(fire).__name__ == "_Fire"
    assert [type(fire.get_submodule(n)) for n in ("squeeze", "act", "e1", "e3")] == [
        cnn.Conv2dReLU,
        FusedReLU,
        cnn.Conv2dReLU,
        cnn.Conv2dReLU,
    ]
    targets = [n.target for n in fire.graph.nodes if n.op == "call_function"]
    assert targets == [concat]
    assert list(fused.state_dict()) == list(model.state_dict())
    names = {e.name: e for e in report}
    assert names["1:cat"].became == "cnnkernels cat"
    assert "1:relu" in names["1.e1"].reason
    _compare(model, fused, (1, 2, 7, 7))


class _SharedReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x)) + self.relu(x)  # the second call has no conv to fuse into


def test_a_relu_module_called_twice_stays_where_not_fused():
    model = _SharedReLU().double()
    fused = fuse(model)
    assert type(fused.conv) is cnn.Conv2dReLU
    assert type(fused.relu) is nn.ReLU  # still called for x
    _compare(model, fused, (1, 2, 5, 5))


class _ModeDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return F.relu(y) if self.training else y


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return F.relu(y) if y.sum() > 0 else -y  # data-dependent control flow


@pytest.mark.parametrize("cls, why", [(_ModeDependent, "branches on self.training"), (_Untraceable, "torch.fx")])
def test_forward_that_cannot_be_traced_keeps_its_code(cls, why):
    model = cls().double()
    fused, report = fuse(model, report=True)
    assert type(fused) is cls  # not a GraphModule: its own forward still runs
    assert type(fused.conv) is cnn.Conv2d  # a lone conv is safe to replace wherever it is called
    assert why in report[0].reason and report[0].became == "torch"
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=DEVICE)
    for mode in (True, False):
        assert_close(fused.train(mode)(x), model.train(mode)(x), torch.float64)


class _OwnConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_what_it_cannot_take_stays_torchs_with_the_reason():
    hooked = nn.Conv2d(2, 2, 3, padding=1)
    hooked.register_forward_hook(lambda m, i, o: o * 3)
    model = nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        hooked,
        nn.ReLU(),
        _OwnConv(2, 2, 1),
        nn.ReLU(),
        nn.BatchNorm2d(2),
    ).double()
    fused, report = fuse(model, report=True)
    assert [type(m) for m in fused] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, _OwnConv, nn.ReLU, nn.BatchNorm2d]
    reasons = {e.name: e.reason for e in report}
    assert "padding_mode='reflect'" in reasons["0"]
    assert "hooks" in reasons["2"]
    assert "subclass of Conv2d" in reasons["4"]
    assert "could fuse into" in reasons["1"] and "could fold into" in reasons["6"]
    _compare(model, fused, (1, 2, 5, 5))


def test_seed_inception_becomes_the_zero_copy_block():
    block = reference.Inception(2, (3, 4), (2, 3), 2)
    block(torch.zeros(1, 3, 4, 4))  # materialise the lazy convs
    block.double()
    fused, report = fuse(block, report=True)
    assert type(fused) is cnn.Inception
    assert report[-1].became == "Inception" and "zero-copy" in report[-1].reason
    assert list(fused.state_dict()) == list(block.state_dict())
    _compare(block, fused, (1, 3, 5, 5))
    # Not the seed's geometry (a 3x3 where the block has its 5x5): branch kernels and a cat.
    odd = reference.Inception(2, (3, 4), (2, 3), 2)
    odd.b3_2 = nn.LazyConv2d(3, kernel_size=3, padding=1)
    assert isinstance(fuse(odd), fx.GraphModule)


def test_fused_models_are_fuse_of_the_torch_nn_models():
    for name in ("AlexNet", "VGG", "NiN", "GoogLeNet"):
        ours, theirs = getattr(cnnkernels.models, name)(), getattr(reference, name)()
        assert type(ours).__mro__[2] is type(theirs), name  # the torch.nn class, written once
        assert [type(m).__name__ for m in ours.modules()] == [type(m).__name__ for m in fuse(theirs).modules()]


def test_argument_errors_name_the_argument():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fuse("alexnet")
    with pytest.raises(TypeError, match="inplace must be a bool"):
        fuse(nn.ReLU(), inplace="yes")
    with pytest.raises(TypeError, match="report must be a bool"):
        fuse(nn.ReLU(), report=1)


def test_concat_falls_back_to_torch_for_what_the_kernel_does_not_take():
    a, b = torch.arange(4).reshape(2, 2), torch.arange(2).reshape(2, 1)
    assert torch.equal(concat([a, b], 1), torch.cat([a, b], 1))  # integers
    x, y = torch.randn(2, 2, dtype=torch.float64), torch.randn(2, 1, dtype=torch.float32)
    assert torch.equal(concat((x, y), 1), torch.cat((x, y), 1))  # type promotion


# ---------------------------------------------------------------------------------- torchvision


def _torchvision_models():
    """``torchvision.models``, or skip (see the module docstring)."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip('torchvision is not installed: pip install -e ".[vision]" beside the same torch')
    try:
        return importlib.import_module("torchvision.models")
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    spec = importlib.util.find_spec("torchvision")
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["torchvision"] = pkg
    return importlib.import_module("torchvision.models")


# (builder, input side, expected conv+ReLU fusions, BN folds, cats) -- the counts come from the
# architectures: AlexNet 5 conv+ReLU; VGG-11 8, VGG-16 13; SqueezeNet 1.0 2 + 8 Fires x 3, 8
# cats; GoogLeNet (aux_logits=False) 3 stem + 9 Inceptions x 6 conv+BN+ReLU, 9 cats.
TORCHVISION = {
    "alexnet": (63, 5, 0, 0),
    "vgg11": (32, 8, 0, 0),
    "vgg16": (32, 13, 0, 0),
    "squeezenet1_0": (29, 26, 0, 8),
    "googlenet": (32, 57, 57, 9),
}


def _torchvision(name: str) -> nn.Module:
    tvm = _torchvision_models()
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return _randomise_bn(getattr(tvm, name)(weights=None, num_classes=10, **kwargs))


@pytest.mark.parametrize(
    "name, dtype",
    [
        pytest.param("squeezenet1_0", torch.float32, marks=pytest.mark.slow, id="squeezenet1_0-fp32"),
        pytest.param("squeezenet1_0", torch.float64, marks=pytest.mark.slow, id="squeezenet1_0-fp64"),
        pytest.param("googlenet", torch.float32, marks=pytest.mark.slow, id="googlenet-fp32"),
        pytest.param("googlenet", torch.float64, marks=pytest.mark.slow, id="googlenet-fp64"),
        pytest.param("alexnet", torch.float32, marks=pytest.mark.slow, id="alexnet-fp32"),
        pytest.param("alexnet", torch.float64, marks=pytest.mark.slow, id="alexnet-fp64"),
        pytest.param("vgg11", torch.float32, marks=pytest.mark.slow, id="vgg11-fp32"),
        pytest.param("vgg11", torch.float64, marks=pytest.mark.slow, id="vgg11-fp64"),
        pytest.param("vgg16", torch.float32, marks=pytest.mark.slow, id="vgg16-fp32"),
    ],
)
def test_torchvision_model(name, dtype):
    side, n_relu, n_bn, n_cat = TORCHVISION[name]
    model = _torchvision(name).to(DEVICE, dtype).eval()
    fused, report = fuse(model, report=True)
    assert sum("+ReLU" in e.was for e in report) == n_relu
    assert sum("BatchNorm2d" in e.was and e.fused for e in report) == n_bn
    assert sum(e.was == "torch.cat" for e in report) == n_cat
    assert not [e for e in report.kept if e.was in ("Conv2d", "MaxPool2d", "AdaptiveAvgPool2d")]
    assert list(fused.state_dict()) == list(model.state_dict())
    _compare(model, fused, (1, 3, side, side), dtype)


def test_torchvision_blocks():
    """torchvision's own GoogLeNet Inception (BasicConv2d = conv + BN + functional ReLU, branch
    lists, ``torch.cat``) and SqueezeNet Fire, at small widths: the fast stand-in for the whole
    networks above."""
    _torchvision_models()
    googlenet = importlib.import_module("torchvision.models.googlenet")
    squeezenet = importlib.import_module("torchvision.models.squeezenet")
    inception = googlenet.Inception(6, 3, 2, 4, 2, 3, 2)
    fire = squeezenet.Fire(12, 3, 2, 4)  # the block gives 3 + 4 + 3 + 2 channels
    model = _randomise_bn(nn.Sequential(inception, fire)).double().eval()
    fused, report = fuse(model, report=True)
    assert sum(e.was == "Conv2d+BatchNorm2d+ReLU" for e in report) == 6
    assert sum(e.was == "Conv2d+ReLU" for e in report) == 3
    assert sum(e.was == "torch.cat" for e in report) == 2
    # torchvision's branch 3 is a 3x3, not the seed's 5x5: branch kernels and the cat kernel.
    assert isinstance(fused[0], fx.GraphModule) and type(fused[0]).__name__ == "Inception"
    assert isinstance(fused[0].branch2[1], fx.GraphModule)  # BasicConv2d: conv + BN + F.relu
    assert isinstance(fused[0].branch2[1].conv, Conv2dBatchNorm)
    assert list(fused.state_dict()) == list(model.state_dict())
    _compare(model, fused, (1, 6, 5, 5))


def test_fusing_twice_changes_nothing_more():
    model = _randomise_bn(_small_cnn()).double().eval()
    once = fuse(model)
    twice, report = fuse(once, report=True)
    assert [type(m) for m in twice.modules()] == [type(m) for m in once.modules()]
    assert sum(e.reason == "already cnnkernels" for e in report) == 8  # 3 convs, 2 pools, 3 placeholders
    assert cnnkernels.fuse is fuse and callable(cnnkernels.fuse)
