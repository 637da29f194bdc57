"""``fuse(model)``: rewrite any ``torch.nn`` CNN onto the ``cnnkernels`` kernels.

Walking the module tree (and a custom ``forward``'s ``torch.fx`` graph, one level deep):

* ``Conv2d`` [``BatchNorm2d``] [``ReLU``] in a row -> one conv kernel, ReLU in its epilogue;
  ``FusedReLU`` and ``FoldedBatchNorm2d`` placeholders keep ``state_dict`` keys and values. The
  BatchNorm is folded into the conv at each call in eval mode (differentiable); in training mode
  torch's ``batch_norm`` and ``relu`` follow the conv kernel.
* ``Conv2d``, ``LazyConv2d``, ``MaxPool2d``, ``AdaptiveAvgPool2d`` -> ``cnnkernels.nn``'s.
* ``torch.cat`` in a traced forward -> ``concat``; the seed's Inception block (children
  ``b1_1`` ... ``b4_2``) -> the zero-copy ``cnnkernels.nn.Inception``.

Anything else (non-zeros padding, hooks, subclasses with their own ``forward``, untraceable or
mode-dependent forwards, modules called from several places) stays torch's, with the reason in
the report. Only exact ``torch.nn`` classes are replaced.
"""

from __future__ import annotations

import copy
from collections import Counter, OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.lazy import LazyModuleMixin

from . import nn as cnn
from ._utils import FLOAT_DTYPES as _FLOATS
from .conv import conv2d as _conv2d

__all__ = [
    "fuse",
    "FuseReport",
    "FuseEntry",
    "FusedReLU",
    "FusedMaxPool2d",
    "RecomputedConv2dReLU",
    "FoldedBatchNorm2d",
    "Conv2dBatchNorm",
    "concat",
]


class FusedReLU(nn.Identity):
    """Placeholder at a ReLU's place when the preceding conv's kernel applies it (identity)."""

    summary_name = "ReLU"

    def extra_repr(self) -> str:
        return "fused into the preceding convolution"


def _passes_through(base: type):
    """A ``forward`` that returns its input, or ``base``'s inside ``layer_by_layer()``."""

    def forward(self, input):
        from .convpool import fused_layers

        return input if fused_layers() else base.forward(self, input)

    return forward


class FusedMaxPool2d(nn.MaxPool2d):
    """Placeholder at a ``MaxPool2d``'s place when the preceding ``Conv2dReLUMaxPool2d`` pools:
    identity, except inside ``cnnkernels.convpool.layer_by_layer()``, where it pools."""

    summary_name = "MaxPool2d"

    forward = _passes_through(cnn.MaxPool2d)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", computed by the preceding convolution's kernel"


class RecomputedConv2dReLU(cnn.Conv2dReLU):
    """A 1x1 conv + ReLU that the next ``Conv2dReLUMaxPool2d`` applies (and recomputes in its
    backward): holds the parameters, passes its input through (computes inside ``layer_by_layer()``)."""

    summary_name = "Conv2d"

    forward = _passes_through(cnn.Conv2dReLU)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", computed (and recomputed in backward) by the next convolution"


class LazyRecomputedConv2dReLU(cnn.LazyConv2dReLU):
    """``RecomputedConv2dReLU`` with lazy in_channels; becomes one at the first call."""

    cls_to_become = RecomputedConv2dReLU
    forward = RecomputedConv2dReLU.forward
    summary_name = "Conv2d"


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """Placeholder (identity) for a ``BatchNorm2d`` that the preceding ``Conv2dBatchNorm`` applies; holds its state."""

    summary_name = "BatchNorm2d"

    def forward(self, input):
        return input

    def extra_repr(self) -> str:
        return super().extra_repr() + ", applied by the preceding convolution"


class Conv2dBatchNorm(cnn.Conv2d):
    """A ``Conv2d`` + ``BatchNorm2d`` (+ ReLU with ``activation='relu'``). The BatchNorm is its
    ``FoldedBatchNorm2d`` placeholder, referenced, not registered. Eval mode with running
    statistics: folded into weight and bias per call, ReLU in the epilogue; otherwise the conv
    kernel, then torch's ``batch_norm`` and ``relu``."""

    activation = "none"

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self.__dict__["_bn"]

    def forward(self, input):
        bn = self.bn
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        if not bn.training and bn.running_mean is not None and bn.running_var is not None:
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if self.bias is not None:
                shift = shift + self.bias * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            weight = self.weight * scale.reshape(-1, 1, 1, 1)
            return _conv2d(input, weight, shift, *geometry, activation=self.activation)
        y = nn.BatchNorm2d.forward(bn, _conv2d(input, self.weight, self.bias, *geometry))
        return F.relu(y) if self.activation == "relu" else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", batch_norm folded in eval, activation={self.activation!r}"


def concat(tensors, dim=0):
    """``torch.cat`` on the cat kernel for float tensors of one dtype and device, else torch's."""
    ts = list(tensors)
    if ts and all(isinstance(t, torch.Tensor) and t.dim() > 0 and t.dtype in _FLOATS for t in ts):
        if all(t.dtype == ts[0].dtype and t.device == ts[0].device for t in ts):
            from .functional import cat

            return cat(ts, dim)
    return torch.cat(ts, dim)


@dataclass(frozen=True)
class FuseEntry:
    """One line of a ``FuseReport``: module path (or ``path:function``), was, became, why."""

    name: str
    was: str
    became: str
    reason: str = ""

    @property
    def fused(self) -> bool:
        return self.became != "torch"


class FuseReport(list):
    """The entries of one ``fuse`` call, in module order; ``str(report)`` is a table."""

    @property
    def kept(self) -> list[FuseEntry]:
        """The entries that stayed torch's."""
        return [e for e in self if not e.fused]

    def __str__(self) -> str:
        rows = [("layer", "was", "became", "why")] + [(e.name or "(model)", e.was, e.became, e.reason) for e in self]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + ("  " + r[3] if r[3] else "") for r in rows
        ).rstrip()


# ------------------------------------------------------------------------------------- helpers


def _has_hooks(m: nn.Module) -> bool:
    pre = dict(m._forward_pre_hooks)
    init = getattr(m, "_initialize_hook", None)  # a lazy module's own shape-inference hook
    if init is not None:
        pre.pop(init.id, None)
    return bool(pre or m._forward_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None))


def _adopt(cls: type, old: nn.Module) -> nn.Module:
    """A ``cls`` (a stateless subclass of ``type(old)``) sharing ``old``'s state."""
    new = cls.__new__(cls)
    new.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in old.__dict__.items()})
    return new


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


_HOOKS = "has hooks, which a fused kernel would bypass"


def _conv_refusal(m: nn.Module) -> str | None:
    """Why a Conv2d (exact torch or cnnkernels class) cannot go on the kernel, or None."""
    if m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r}: the kernel pads with zeros only"
    if _has_hooks(m):
        return _HOOKS
    w = m.weight
    if not isinstance(w, nn.parameter.UninitializedParameter) and w.dtype not in _FLOATS:
        return f"dtype {w.dtype}: the kernel takes fp16, bf16, fp32 and fp64"
    return None


_CONVS = (nn.Conv2d, cnn.Conv2d)


def _is_conv(m: nn.Module) -> bool:
    return type(m) in (*_CONVS, nn.LazyConv2d, cnn.LazyConv2d)


def _is_relu(m: nn.Module) -> bool:
    return type(m) is nn.ReLU and not _has_hooks(m)


def _is_conv_relu(m: nn.Module) -> bool:
    return type(m) in (cnn.Conv2dReLU, cnn.LazyConv2dReLU) and not _has_hooks(m)


def _is_bn(m: nn.Module, conv: nn.Module) -> bool:
    return (
        type(m) is nn.BatchNorm2d
        and type(conv) in _CONVS
        and not _has_hooks(m)
        and m.num_features == conv.out_channels
        and not isinstance(conv.weight, nn.parameter.UninitializedParameter)
    )


def _convert(cls: type, conv: nn.Module) -> nn.Module:
    """A new lazy ``cls`` with lazy ``conv``'s configuration, device, dtype and mode; for a
    materialised ``conv``, ``cls.cls_to_become`` sharing its state."""
    if not isinstance(conv, LazyModuleMixin):
        return _adopt(cls.cls_to_become, conv)
    geometry = (conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
    w = conv.weight
    new = cls(*geometry, conv.bias is not None, conv.padding_mode, device=w.device, dtype=w.dtype)
    return new.train(conv.training)


_LEAVES = {nn.MaxPool2d: cnn.MaxPool2d, nn.AdaptiveAvgPool2d: cnn.AdaptiveAvgPool2d}
# (RecomputedConv2dReLU is a cnn.Conv2d.)
_OURS = (*_LEAVES.values(), cnn.Conv2d, cnn.LazyConv2d, cnn.Inception, FusedReLU, FusedMaxPool2d, FoldedBatchNorm2d)


class _Fuser:
    def __init__(self) -> None:
        self.report = FuseReport()

    def note(self, *args) -> None:
        self.report.append(FuseEntry(*args))

    def conv_chain(self, mods, path: str, conv: str, bn: str | None, relu: str | None) -> None:
        """``mods[conv]`` (and ``mods[bn]``) become the fused conv (and its placeholder), the ReLU
        (reported as ``relu``, a path) in its epilogue; reported."""
        notes = []
        if bn:
            new = _adopt(Conv2dBatchNorm, mods[conv])
            new.__dict__["_bn"] = mods[bn] = _adopt(FoldedBatchNorm2d, mods[bn])  # referenced, not registered
            new.activation = "relu" if relu else "none"
            notes.append(f"{_path(path, bn)} folded in eval mode (torch's batch_norm in training mode)")
        else:
            new = _convert(cnn.LazyConv2dReLU if relu else cnn.LazyConv2d, mods[conv])
        mods[conv] = new
        if relu:
            notes.append(f"{relu} in the epilogue")
        was = "Conv2d" + ("+BatchNorm2d" if bn else "") + ("+ReLU" if relu else "")
        self.note(_path(path, conv), was, type(new).__name__, "; ".join(notes))

    # A leaf: replaced on its own, which is right wherever and however often it is called.
    def leaf(self, m: nn.Module, path: str) -> nn.Module:
        t = type(m)
        if isinstance(m, _OURS):
            self.note(path, t.__name__, t.__name__, "already cnnkernels")
            return m
        if _is_conv(m) or t in _LEAVES:
            why = _conv_refusal(m) if _is_conv(m) else _HOOKS if _has_hooks(m) else None
            if why is None:
                new = _convert(cnn.LazyConv2d, m) if _is_conv(m) else _adopt(_LEAVES[t], m)
                self.note(path, t.__name__, type(new).__name__)
                return new
        elif t in (nn.ReLU, nn.BatchNorm2d):
            why = f"does not follow a Conv2d it could {'fuse' if t is nn.ReLU else 'fold'} into"
        elif isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d)):
            why = f"a subclass of {t.__mro__[1].__name__} with its own code"
        else:
            why = "no cnnkernels kernel for it"
        self.note(path, t.__name__, "torch", why)
        return m

    def visit_children(self, mods, path: str, skip=()) -> None:
        for name, child in list(mods.items()):
            if child is not None and name not in skip:
                mods[name] = self.visit(child, _path(path, name))

    def visit(self, m: nn.Module, path: str) -> nn.Module:
        if not m._modules or isinstance(m, cnn.Inception):
            return self.leaf(m, path)
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
            self.sequence(m, path)
            return m
        if type(m) in (nn.ModuleList, nn.ModuleDict):
            self.visit_children(m._modules, path)
            return m
        return self.traced(m, path)

    def sequence(self, seq: nn.Sequential, path: str) -> None:
        names = [n for n, c in seq._modules.items() if c is not None]
        i = 0
        while i < len(names):
            name = names[i]
            child = seq._modules[name]
            fusable = _is_conv(child) and _conv_refusal(child) is None
            bn = relu = None
            j = i + 1
            if fusable and j < len(names) and _is_bn(seq._modules[names[j]], child):
                bn, j = names[j], j + 1
            if fusable and j < len(names) and _is_relu(seq._modules[names[j]]):
                relu, j = names[j], j + 1
            if fusable and (bn or relu or not isinstance(child, _OURS)):
                self.conv_chain(seq._modules, path, name, bn, relu and _path(path, relu))
                if relu:
                    seq._modules[relu] = FusedReLU().train(seq._modules[relu].training)
            else:  # not fusable, or a lone conv that is already ours
                seq._modules[name] = self.visit(child, _path(path, name))
            i = j
        self.pools(seq, path, names)

    def pools(self, seq: nn.Sequential, path: str, names: list[str]) -> None:
        """Conv2d+ReLU (already fused) then MaxPool2d -> one ``Conv2dReLUMaxPool2d``; the pool's
        place keeps a ``FusedMaxPool2d``. The conv may end a plain ``nn.Sequential`` just before
        the pool (NiN's blocks): a plain Sequential's output is its last layer's."""
        for i, name in enumerate(names):
            pool = seq._modules[name]
            if i == 0 or type(pool) is not cnn.MaxPool2d or pool.return_indices or _has_hooks(pool):
                continue
            tail = _conv_relu_tail(seq, names[:i], path)
            if tail is None:
                continue
            holder, conv_name, conv_path = tail
            new = holder._modules[conv_name] = _conv_pool(holder._modules[conv_name], pool)
            producer = _pointwise_producer(holder, conv_name)
            if producer is not None:
                p = _convert(LazyRecomputedConv2dReLU, holder._modules[producer])
                new.__dict__["_producer"] = holder._modules[producer] = p
                producer_path = _path(conv_path.rpartition(".")[0], producer)
                self.amend(producer_path, type(p).__name__, f"recomputed in {conv_path}'s backward, not saved")
            seq._modules[name] = _adopt(FusedMaxPool2d, pool)
            pool_path = _path(path, name)
            self.amend(conv_path, type(new).__name__, f"{pool_path} pooled in the same kernel", "+MaxPool2d")
            entry = FuseEntry(pool_path, "MaxPool2d", "FusedMaxPool2d", f"computed by {conv_path}")
            self.report[:] = [entry if e.name == pool_path else e for e in self.report]

    def amend(self, name: str, became: str, why: str, was: str = "") -> None:
        """``name``'s report entry now says ``became``, with ``why`` added to its reason, ``was`` to its was."""
        for k, e in enumerate(self.report):
            if e.name == name:
                self.report[k] = FuseEntry(name, e.was + was, became, "; ".join(filter(None, (e.reason, why))))

    # A module with its own forward: fuse across its children from its fx graph, then recurse.
    def traced(self, m: nn.Module, path: str) -> nn.Module:
        where = path or "(model)"
        graph, why = None, "has hooks, which a traced copy of its forward would not carry"
        if not (_has_hooks(m) or m._state_dict_hooks or m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks):
            graph, why = _trace(m)
        if graph is None:
            self.note(path, type(m).__name__, "torch", f"forward not fused across its children: {why}")
            self.visit_children(m._modules, path)
            return m
        children = OrderedDict(m._modules)
        calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
        changed = False
        done: set[str] = set()
        relu_sites = Counter()
        for node in list(graph.nodes):
            conv = _sole_call(node, None, children, calls)
            if not _is_conv(conv) or node.target in done or _conv_refusal(conv) is not None:
                continue
            cur, bn_name, bn_node, relu_name, relu_node = node, None, None, None, None
            nxt = _only_user(cur)
            if _is_bn(_sole_call(nxt, cur, children, calls), conv):
                bn_name, bn_node, cur = nxt.target, nxt, nxt
                nxt = _only_user(cur)
            if nxt is not None and _relu_call(nxt, cur, children):
                relu_node = nxt
                if nxt.op == "call_module":
                    relu_name = nxt.target
                    relu_sites[relu_name] += 1
            if bn_name is None and relu_node is None:
                continue
            for fused in (n for n in (bn_node, relu_node) if n is not None):
                fused.replace_all_uses_with(node)
                graph.erase_node(fused)
            relu_label = relu_node and (_path(path, relu_name) if relu_name else f"{where}:{_call_name(relu_node)}")
            self.conv_chain(children, path, node.target, bn_name, relu_label)
            done.update((node.target, bn_name))
            changed = True
        for name, count in relu_sites.items():
            if count == calls[name]:  # every call of this ReLU module now runs in a kernel
                children[name] = FusedReLU().train(children[name].training)
                done.add(name)
        for node in graph.nodes:
            if node.op == "call_function" and node.target in (torch.cat, torch.concat, torch.concatenate):
                self.note(f"{where}:{_call_name(node)}", "torch.cat", "cnnkernels cat", "one copy per input")
                node.target = concat
                changed = True
            elif _relu_call(node, None, children):
                self.note(f"{where}:{_call_name(node)}", "relu", "torch", "does not follow a Conv2d it could fuse into")
        self.visit_children(children, path, done)
        inception = _seed_inception(graph, children)
        if inception is not None:
            inception.train(m.training)
            self.note(path, type(m).__name__, "Inception", "the seed's block: zero-copy concatenation")
            return inception
        if not changed:
            m._modules.update(children)
            return m
        return _graph_module(m, graph, children)


def _conv_relu_ending(seq: nn.Sequential, names: list[str]) -> str | None:
    """The fused conv + ReLU whose ``FusedReLU`` ends ``seq``'s layers ``names``, else None."""
    if len(names) < 2 or type(seq._modules[names[-1]]) is not FusedReLU:
        return None
    return names[-2] if _is_conv_relu(seq._modules[names[-2]]) else None


def _conv_relu_tail(seq: nn.Sequential, names: list[str], path: str):
    """(container, name, path) of the fused conv + ReLU ending ``names`` (maybe in a plain Sequential), or None."""
    last = seq._modules[names[-1]] if names else None
    if type(last) is nn.Sequential and not _has_hooks(last):
        inner = [n for n, c in last._modules.items() if c is not None]
        return _conv_relu_tail(last, inner, _path(path, names[-1]))
    conv = _conv_relu_ending(seq, names)
    return None if conv is None else (seq, conv, _path(path, conv))


def _pointwise_producer(holder: nn.Sequential, conv_name: str) -> str | None:
    """The name of a fused pointwise 1x1 conv + ReLU right before ``conv_name`` in ``holder``
    (recomputing it costs one GEMM and saves its activation), else None."""
    names = [n for n, c in holder._modules.items() if c is not None]
    name = _conv_relu_ending(holder, names[: names.index(conv_name)])
    m = holder._modules.get(name)
    geometry = None if m is None else (m.kernel_size, m.stride, m.dilation, m.groups)
    return name if geometry == ((1, 1), (1, 1), (1, 1), 1) and m.padding in ((0, 0), "valid") else None


def _conv_pool(conv: nn.Module, pool: nn.MaxPool2d) -> nn.Module:
    """A ``Conv2dReLUMaxPool2d`` (lazy if ``conv`` is) with ``conv``'s state and ``pool``'s arguments."""
    new = _convert(cnn.LazyConv2dReLUMaxPool2d, conv)
    cnn._set_pool(new, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
    return new


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _sole_call(node: fx.Node | None, arg: fx.Node | None, children, calls: Counter) -> nn.Module | None:
    """The child ``node`` calls if that is its only call, on one argument (``arg`` if given), no keywords; else None."""
    if node is None or node.op != "call_module" or node.target not in children or calls[node.target] != 1:
        return None
    one_arg = len(node.args) == 1 and not node.kwargs and (arg is None or node.args[0] is arg)
    return children[node.target] if one_arg else None


def _call_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _relu_call(node: fx.Node, arg: fx.Node | None, children) -> bool:
    """Whether ``node`` is a ReLU (module, function or method) of ``arg`` (of anything if None)."""
    if node.op == "call_module":
        ok = node.target in children and _is_relu(children[node.target]) and not node.kwargs
    elif node.op == "call_function":
        ok = node.target in (F.relu, torch.relu, torch.relu_, F.relu_) and set(node.kwargs) <= {"inplace"}
        ok = ok and len(node.args) == 1
    elif node.op == "call_method":
        ok = node.target in ("relu", "relu_") and not node.kwargs and len(node.args) == 1
    else:
        return False
    return ok and (arg is None or (len(node.args) >= 1 and node.args[0] is arg))


class _OneLevel(fx.Tracer):
    """Traces one module's own forward; every child module is a leaf (a single call node)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _trace(m: nn.Module) -> tuple[fx.Graph | None, str]:
    """(graph, '') or (None, why); a forward that differs between train and eval is refused."""
    graphs = {}
    training = m.training
    try:
        for mode in (True, False):
            m.training = mode
            graphs[mode] = _OneLevel().trace(m)
    except Exception as e:  # noqa: BLE001 - any tracing failure means: leave the forward alone
        return None, f"torch.fx cannot trace it ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    finally:
        m.training = training
    if str(graphs[True]) != str(graphs[False]):
        return None, "its forward branches on self.training"
    return graphs[training], ""


def _graph_module(m: nn.Module, graph: fx.Graph, children: OrderedDict) -> fx.GraphModule:
    """The rewritten forward as a ``GraphModule`` named like ``m``'s class, with ``m``'s
    children, parameters, buffers (same ``state_dict`` keys) and public attributes."""
    graph.lint()
    state = {"_modules": children, "_parameters": m._parameters, "_buffers": m._buffers}
    holder = nn.Module()
    holder.__dict__.update({k: OrderedDict(v) for k, v in state.items()})
    for attr in (node.target.split(".")[0] for node in graph.nodes if node.op == "get_attr"):
        if not hasattr(holder, attr):
            holder.__dict__[attr] = getattr(m, attr)
    gm = fx.GraphModule(holder, graph, class_name=type(m).__name__)
    gm.__dict__.update({k: OrderedDict(v) for k, v in state.items()})
    gm._non_persistent_buffers_set = set(m._non_persistent_buffers_set)
    gm.__dict__.update({k: v for k, v in m.__dict__.items() if not k.startswith("_") and k not in gm.__dict__})
    gm.training = m.training
    return gm


_SEED_BRANCHES = (("b1_1",), ("b2_1", "b2_2"), ("b3_1", "b3_2"), ("b4_1", "b4_2"))


def _seed_inception(graph: fx.Graph, children: OrderedDict) -> nn.Module | None:
    """A ``cnnkernels.nn.Inception`` holding ``children`` when the rewritten graph is exactly the
    seed's block at its geometry, else None."""
    if set(children) != {n for branch in _SEED_BRANCHES for n in branch}:
        return None
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    out = next(n for n in graph.nodes if n.op == "output")
    if len(inputs) != 1 or len(nodes) != 8:
        return None
    cat = out.args[0]
    if not isinstance(cat, fx.Node) or cat.target is not concat:
        return None
    tensors = cat.args[0] if cat.args else cat.kwargs.get("tensors")
    dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
    if dim != 1 or not isinstance(tensors, (list, tuple)) or len(tensors) != 4:
        return None
    for branch, end in zip(_SEED_BRANCHES, tensors):
        node = end
        for name in reversed(branch):
            if not isinstance(node, fx.Node) or node.op != "call_module" or node.target != name or node.kwargs:
                return None
            node = node.args[0] if len(node.args) == 1 else None
        if node is not inputs[0]:
            return None
    for name, (k, pad) in cnn.Inception._GEOMETRY.items():
        conv = children[name]
        fits = isinstance(conv, (cnn.Conv2dReLU, cnn.LazyConv2dReLU)) and conv.bias is not None
        if not fits or _has_hooks(conv) or not cnn.Inception._conv_fits(conv, k, pad):
            return None
    pool = children["b4_1"]
    if not isinstance(pool, cnn.MaxPool2d) or _has_hooks(pool) or not cnn.Inception._pool_fits(pool):
        return None
    block = cnn.Inception.__new__(cnn.Inception)
    nn.Module.__init__(block)
    for name in ("b1_1", "b2_1", "b2_2", "b3_1", "b3_2", "b4_1", "b4_2"):
        setattr(block, name, children[name])
    return block


def fuse(model: nn.Module, *, inplace: bool = False, report: bool = False):
    """``model`` running on the ``cnnkernels`` kernels where they apply (see the module docstring).

    ``inplace=False`` fuses a deep copy; ``inplace=True`` rewrites ``model`` and shares its
    Parameter and buffer objects. Mode, device, dtype and ``state_dict`` keys and values carry
    over (``fuse(model).state_dict()`` loads into ``model`` and back). Traced forwards are fixed
    at fuse time. With ``report=True`` returns (fused model, ``FuseReport``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, flag in (("inplace", inplace), ("report", report)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    fuser = _Fuser()
    fused = fuser.visit(model, "")
    return (fused, fuser.report) if report else fused
