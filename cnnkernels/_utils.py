"""Argument normalisation and validation shared by the user-facing ops (errors name the argument)."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch._prims_common import suggest_memory_format

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_int(value, name: str) -> int:
    """An integral argument as torch takes it: anything ``operator.index`` accepts (``int``,
    ``numpy.int64``, a 0-d integer tensor), but not ``bool``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None


def pair(value, name: str) -> tuple[int, int]:
    """An int or a sequence of one or two ints, as ``torch.nn.functional`` takes them."""
    try:
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (1, 2):
            ints = [as_int(v, name) for v in value]
            return (ints[0], ints[-1])
        v = as_int(value, name)
        return v, v
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None


def check_tensor(t, name: str, dims: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want}, got a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_same(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{name_b} dtype {b.dtype} differs from {name_a} dtype {a.dtype}")
    if a.device != b.device:
        raise ValueError(f"{name_b} is on {b.device} but {name_a} is on {a.device}")


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``nn.Conv2d`` would be cast to under an active autocast, else None."""
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_inputs(input, weight, *optional):
    """``(input, weight, *optional)`` as ``nn.Conv2d`` sees them under an active autocast (fp16,
    bf16 and fp32 tensors cast; anything else unchanged)."""
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return (input, weight, *optional)
    cast = autocast_dtype(input.device.type)
    floats = (torch.float16, torch.bfloat16, torch.float32)
    if cast is None or input.dtype not in floats or weight.dtype not in floats:
        return (input, weight, *optional)
    rest = (t.to(cast) if isinstance(t, torch.Tensor) and t.dtype in floats else t for t in optional)
    return (input.to(cast), weight.to(cast), *rest)


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D tensor is laid out NHWC, judged by its strides as torch does."""
    return x.dim() == 4 and suggest_memory_format(x) == torch.channels_last


def memory_format(channels_last: bool) -> torch.memory_format:
    """The allocation format an op's ``channels_last`` flag stands for."""
    return torch.channels_last if channels_last else torch.contiguous_format
