"""Argument checks shared by the ops, the optimizer and the fused step: each raises a
TypeError or ValueError naming the argument, its shape and dtype, before any work is done."""

from __future__ import annotations

import math
import numbers

import torch

from .kernels.precision import DTYPES

FLOAT_DTYPES = tuple(DTYPES.values())


def check_operands(op: str, a: object, b: object, names: tuple[str, str] = ("a", "b")) -> None:
    """Raise unless `a @ b` is well formed: two 2-D floating tensors of one dtype and device
    whose inner dimensions agree."""
    for name, t in zip(names, (a, b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported dtypes are "
                            f"{', '.join(DTYPES)}")
        if t.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-D, got shape {tuple(t.shape)}")
    (name_a, name_b) = names
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: dtypes differ: {name_a} is {a.dtype}, {name_b} is {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{op}: devices differ: {name_a} is on {a.device}, {name_b} is on {b.device}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"{op}: inner dimensions differ: {name_a} is {tuple(a.shape)}, "
                         f"{name_b} is {tuple(b.shape)} ({a.shape[1]} != {b.shape[0]})")


def autocast(op_dtype: torch.dtype | None, *tensors):
    """`tensors` as torch's autocast hands them to an op: inside `torch.autocast(device, dtype)`
    for their device, floating tensors other than float64 are cast to the op's dtype, `dtype`
    itself for ops on autocast's lower-precision list (`op_dtype` None: mm) or float32 for
    ops on its float32 list (mse_loss). Outside autocast, or for anything else, unchanged.
    The casts are differentiable, so gradients reach the leaves in their own dtype."""
    first = tensors[0]
    if not torch._C._is_any_autocast_enabled():  # the common case, and the cheapest question
        return tensors
    if not isinstance(first, torch.Tensor) or not torch.is_autocast_enabled(first.device.type):
        return tensors
    dtype = op_dtype or torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)


def check_lr(lr: object, where: str, device: torch.device | None = None) -> None:
    """The one learning-rate rule: a real number, finite and >= 0 (not a bool), or a 0-d
    floating-point tensor (on `device` when given; its value is read on the device, so it is
    not checked here: that would be a host sync)."""
    if isinstance(lr, torch.Tensor):
        if lr.dim() != 0 or not lr.is_floating_point() or (device is not None and lr.device != device):
            place = f" on {device}" if device is not None else ""
            raise ValueError(f"{where}: a tensor lr must be a 0-d floating-point tensor{place}, got shape "
                             f"{tuple(lr.shape)} {lr.dtype} on {lr.device}")
        return
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"{where}: lr must be a number or a 0-d tensor, got {type(lr).__name__}")
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"{where}: lr must be finite and >= 0, got {lr}")
