"""Modules subclassing their ``torch.nn`` counterparts (same init, ``reset_parameters`` and
``state_dict``), with ``forward`` on the ``cnnkernels`` kernels."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from . import _fast
from . import functional as F
from .inception import InceptionFunction


class _ZerosPadding:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"padding_mode={self.padding_mode!r} is not supported; only 'zeros'")


class Conv2d(_ZerosPadding, nn.Conv2d):
    """``nn.Conv2d`` on the fused kernel (padding_mode 'zeros' only)."""

    _activation = F.conv2d

    def forward(self, input):
        return type(self)._activation(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class Conv2dReLU(Conv2d):
    """``nn.Conv2d`` followed by ReLU, fused into one kernel."""

    _activation = F.conv2d_relu


class LazyConv2d(_ZerosPadding, nn.LazyConv2d):
    """``nn.LazyConv2d`` on the fused kernel; the first call sets in_channels, making it a ``cnnkernels.nn.Conv2d``."""

    cls_to_become = Conv2d
    _activation = F.conv2d
    forward = Conv2d.forward


class LazyConv2dReLU(LazyConv2d):
    """``LazyConv2d`` with the ReLU fused; becomes a ``Conv2dReLU``."""

    cls_to_become = Conv2dReLU
    _activation = F.conv2d_relu


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` on the ``cnnkernels`` max-pool kernels (same arguments and semantics)."""

    def forward(self, input):
        return F.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=self.return_indices,
        )


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` on the ``cnnkernels`` kernels (output size 1: the global average-pooling reduction)."""

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)


# What the Inception block's checks read of its submodules besides parameters and hooks.
_ATTRS = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode", "ceil_mode", "return_indices")


class Inception(nn.Module):
    """The seed's Inception block (c1, (c2a, c2b), (c3a, c3b), c4) on fused, zero-copy kernels.

    Submodules and ``state_dict`` keys are the seed's (b1_1, b2_1, b2_2, b3_1, b3_2, b4_1, b4_2);
    input channels are inferred at the first call like ``nn.LazyConv2d``. Output is NHWC."""

    def __init__(self, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        self.b1_1 = LazyConv2dReLU(c1, kernel_size=1)
        self.b2_1 = LazyConv2dReLU(c2[0], kernel_size=1)
        self.b2_2 = LazyConv2dReLU(c2[1], kernel_size=3, padding=1)
        self.b3_1 = LazyConv2dReLU(c3[0], kernel_size=1)
        self.b3_2 = LazyConv2dReLU(c3[1], kernel_size=5, padding=2)
        self.b4_1 = MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = LazyConv2dReLU(c4, kernel_size=1)

    def _materialize(self, x: Tensor) -> None:
        """Infer every lazy conv's in_channels from shapes alone (no computation)."""
        reduce = {"b2_2": self.b2_1, "b3_2": self.b3_1}
        for name in self._GEOMETRY:
            conv = getattr(self, name)
            c_in = reduce[name].out_channels if name in reduce else x.shape[-3]
            if isinstance(conv, nn.modules.lazy.LazyModuleMixin) and conv.has_uninitialized_params():
                conv._infer_parameters(conv, (x.new_empty((1, c_in, 1, 1)),))

    # (kernel, padding) of each fused conv+ReLU branch layer, as the block computes them.
    _GEOMETRY = {"b1_1": (1, 0), "b2_1": (1, 0), "b2_2": (3, 1), "b3_1": (1, 0), "b3_2": (5, 2), "b4_2": (1, 0)}

    @staticmethod
    def _conv_fits(conv: nn.Conv2d, k: int, pad: int) -> bool:
        """Whether ``conv`` is a kxk conv with padding ``pad``, stride 1, one group."""
        want = ((k, k), (1, 1), (pad, pad), (1, 1), 1)
        return (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) == want

    @staticmethod
    def _pool_fits(pool: nn.MaxPool2d) -> bool:
        """Whether ``pool`` is the block's 3x3 max pool with stride 1 and padding 1."""
        geometry = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, pool.return_indices)
        return geometry in ((3, 1, 1, 1, False, False), ((3, 3), (1, 1), (1, 1), (1, 1), False, False))

    def _check_branches(self) -> None:
        """Refuse what the fused block, which reads the branches' parameters without calling
        them, would silently ignore (swapped or re-shaped branches, no bias, hooks)."""
        for name, (k, pad) in self._GEOMETRY.items():
            conv = getattr(self, name)
            if not isinstance(conv, Conv2dReLU):
                raise ValueError(f"Inception.{name} must stay a cnnkernels Conv2dReLU, got {type(conv).__name__}")
            if not self._conv_fits(conv, k, pad) or conv.padding_mode != "zeros":
                raise ValueError(f"Inception.{name} must be a {k}x{k} conv with padding {pad}, stride 1, one group")
            if conv.bias is None:
                raise ValueError(f"Inception.{name} needs a bias")
            want = (conv.out_channels, conv.in_channels, k, k)
            if tuple(conv.weight.shape) != want or tuple(conv.bias.shape) != (conv.out_channels,):
                raise ValueError(
                    f"Inception.{name} has a weight of shape {tuple(conv.weight.shape)} and a bias of shape "
                    f"{tuple(conv.bias.shape)}; the block needs {want} and ({conv.out_channels},)"
                )
            if conv._forward_pre_hooks or conv._forward_hooks:
                raise ValueError(f"Inception.{name} has forward hooks, which the fused block would not run")
        for name, reduce in (("b2_2", self.b2_1), ("b3_2", self.b3_1)):
            conv = getattr(self, name)
            if conv.in_channels != reduce.out_channels:
                raise ValueError(
                    f"Inception.{name} takes {conv.in_channels} channels but its reduce conv gives "
                    f"{reduce.out_channels}"
                )
        pool = self.b4_1
        if not isinstance(pool, nn.MaxPool2d) or type(pool).forward not in (nn.MaxPool2d.forward, MaxPool2d.forward):
            raise ValueError(f"Inception.b4_1 must stay a 3x3 max pool, got {type(pool).__name__}")
        if not self._pool_fits(pool):
            raise ValueError("Inception.b4_1 must be a 3x3 max pool with stride 1 and padding 1")
        if pool._forward_pre_hooks or pool._forward_hooks:
            raise ValueError("Inception.b4_1 has forward hooks, which the fused block would not run")

    def _fast_key(self, x: Tensor):
        """The fast-path key (``cnnkernels._fast``): input, parameters, submodules and hooks."""
        mods = self._modules
        params = []
        for name in self._GEOMETRY:  # the six convs, in the block's parameter order
            p = mods[name]._parameters
            weight, bias = p.get("weight"), p.get("bias")
            if weight is None or bias is None:  # parametrized (weight_norm, ...), no bias: the full path decides
                return (None, None), params
            params += [weight, bias]
        shape = []
        for m in mods.values():  # loops, not generators: a generator costs a call per item
            attrs = [getattr(m, a, None) for a in _ATTRS]
            shape.append((id(m), type(m), len(m._forward_hooks), len(m._forward_pre_hooks), *attrs))
        return _fast.lookup(("inception", id(self), tuple(shape)), x, *params), params

    def forward(self, x: Tensor) -> Tensor:
        from ._utils import autocast_dtype, check_tensor

        key = plan = None
        if not isinstance(self.b1_1, nn.modules.lazy.LazyModuleMixin) and not self._forward_hooks:
            with contextlib.suppress(KeyError, AttributeError):
                (key, plan), params = self._fast_key(x)
        if plan is not None:
            return plan(x, params)
        check_tensor(x, "input", (3, 4))
        self._materialize(x)
        self._check_branches()
        unbatched = x.dim() == 3
        x4 = x.unsqueeze(0) if unbatched else x
        if self.b1_1.in_channels != x4.shape[1]:
            raise ValueError(f"input has {x4.shape[1]} channels, the block was built for {self.b1_1.in_channels}")
        convs = [getattr(self, name) for name in self._GEOMETRY]
        params = [p for conv in convs for p in (conv.weight, conv.bias)]
        cast = autocast_dtype(x4.device.type)
        if cast is not None and x4.dtype != torch.float64:  # like nn.Conv2d under autocast
            x4 = x4.to(cast)
            params = [p.to(cast) for p in params]
        elif any(p.dtype != x4.dtype for p in params):
            raise TypeError(f"input dtype {x4.dtype} differs from the block's parameter dtype {params[0].dtype}")
        pooled = None  # the pool branch is pooled in its 1x1 GEMM's kernel: no pooled tensor

        def plan(record, out):
            # First launch: args 1-2 the stacked 1x1 weights and biases (recomputed), 4 the scratch.
            if len(record) < 4:  # more where a 3x3 or 5x5 branch takes the span form (a few channels)
                raise _fast.Unplannable(f"{len(record)} launches, fewer than the block's 4")
            w_cat, b_cat, scratch = record[0][2][1], record[0][2][2], record[0][2][4]
            stacked = params[0].shape[0] + params[2].shape[0] + params[6].shape[0]
            if w_cat.shape != (stacked, *params[0].shape[1:]) or b_cat.shape != (stacked,):
                raise _fast.Unplannable("the first launch is not the stacked 1x1 GEMM")
            launches = _fast.LaunchPlan.build(record, (x4, pooled, *params), (out, scratch), (w_cat, b_cat))
            return InceptionPlan(launches, unbatched, key[-1])

        out = _fast.planned(key, lambda: InceptionFunction.apply(x4, pooled, *params), plan)
        return out.squeeze(0) if unbatched else out


class InceptionPlan:
    """An Inception call's plan (``cnnkernels._fast``): its launches (four, and the span-form
    fills of a branch with a few channels, ``kernels/conv.py``). The 1x1 weights are
    stacked anew per call (a few KB): writes through ``.data`` would stale a cache."""

    def __init__(self, launches, unbatched, grad):
        self.launches, self.unbatched, self.grad = launches, unbatched, grad

    @staticmethod
    def stack(params):
        w1, b1, w21, b21, _, _, w31, b31 = params[:8]
        with torch.no_grad():
            return torch.cat((w1, w21, w31)), torch.cat((b1, b21, b31))

    def __call__(self, x, params):
        x4 = x.unsqueeze(0) if self.unbatched else x
        pooled = None  # pooled on load, as in Inception.forward
        if self.grad:
            out = PlannedInceptionFunction.apply(x4, pooled, *params, self)
        else:
            out = self.launches.run((x4, pooled, *params, *self.stack(params)))[0]
        return out.squeeze(0) if self.unbatched else out


class PlannedInceptionFunction(torch.autograd.Function):
    """``InceptionFunction`` replayed from an ``InceptionPlan``."""

    @staticmethod
    def forward(ctx, x, pooled, *params_and_plan):
        *params, plan = params_and_plan
        w_cat, b_cat = plan.stack(params)
        out, scratch = plan.launches.run((x, pooled, *params, w_cat, b_cat))
        InceptionFunction.setup(ctx, x, pooled, params, out, scratch, w_cat)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return *InceptionFunction.backward(ctx, grad_out), None


class _PoolAfter:
    """The max pool of ``Conv2dReLUMaxPool2d`` and its lazy twin."""

    def __init__(
        self, *args, pool_kernel_size=2, pool_stride=None, pool_padding=0, pool_dilation=1, ceil_mode=False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        _set_pool(self, pool_kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode)

    def forward(self, input):
        from .convpool import fused_layers

        if not fused_layers():
            return Conv2d.forward(self, input)
        pool = (self.pool_kernel_size, self.pool_stride, self.pool_padding, self.pool_dilation, self.ceil_mode)
        args = (self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, *pool)
        producer = self.producer
        if producer is not None:  # a 1x1 conv + ReLU whose output this op recomputes, not saves
            return F.conv1x1_relu_conv2d_relu_max_pool2d(input, producer.weight, producer.bias, *args)
        return F.conv2d_relu_max_pool2d(input, *args)

    @property
    def producer(self):
        """The 1x1 conv + ReLU before this one that this op applies and recomputes in backward
        (set by ``cnnkernels.fusion``; a reference, not a child), or None."""
        return self.__dict__.get("_producer")

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", relu, max_pool(kernel_size={self.pool_kernel_size}, stride={self.pool_stride}, "
            f"padding={self.pool_padding}, dilation={self.pool_dilation}, ceil_mode={self.ceil_mode})"
        )


def _set_pool(module, kernel_size, stride, padding, dilation, ceil_mode) -> None:
    module.pool_kernel_size = kernel_size
    module.pool_stride = kernel_size if stride is None else stride
    module.pool_padding = padding
    module.pool_dilation = dilation
    module.ceil_mode = ceil_mode


class Conv2dReLUMaxPool2d(_PoolAfter, Conv2dReLU):
    """``nn.Conv2d`` + ReLU + ``nn.MaxPool2d`` as one op, with ``nn.Conv2d``'s parameters; the pool
    takes ``pool_kernel_size``, ``pool_stride``, ``pool_padding``, ``pool_dilation``, ``ceil_mode``.
    Inside ``cnnkernels.convpool.layer_by_layer()`` it skips the pool."""


class LazyConv2dReLUMaxPool2d(_PoolAfter, LazyConv2dReLU):
    """``LazyConv2d`` + ReLU + max pool as one op; becomes a ``Conv2dReLUMaxPool2d``."""

    cls_to_become = Conv2dReLUMaxPool2d

    def _get_in_channels(self, input) -> int:
        # With a producer, the input is the producer's: this conv takes the producer's output.
        producer = self.producer
        return producer.out_channels if producer is not None else super()._get_in_channels(input)
