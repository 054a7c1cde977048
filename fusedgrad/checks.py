"""Argument checks shared by the ops, the optimizer and the fused step: each raises a
TypeError or ValueError naming the argument, its shape and dtype, before any work is done."""

from __future__ import annotations

import numbers
import sys

import torch

from .kernels.precision import DTYPES

FLOAT_DTYPES = tuple(DTYPES.values())
_FLOAT_DTYPE_SET = frozenset(FLOAT_DTYPES)


def check_operands(op: str, a: object, b: object, names: tuple[str, str] = ("a", "b")) -> None:
    """Raise unless `a @ b` is well formed: two 2-D floating tensors of one dtype and device
    whose inner dimensions agree."""
    # The common case in one expression (it runs on every op call); anything else is explained below.
    if (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype is b.dtype
            and a.dtype in _FLOAT_DTYPE_SET and a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0]
            and a.device == b.device):
        return
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


def check_lr(lr: object, where: str, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
    """The one learning-rate rule: a real number, finite and >= 0 (not a bool), or a 0-d
    floating-point tensor (on `device` when given; its value is read on the device, so it is
    not checked here: that would be a host sync). A number for parameters of `dtype` other
    than float64 must also be finite in float32, the precision an update applies it in."""
    if isinstance(lr, torch.Tensor):
        if lr.dim() != 0 or not lr.is_floating_point() or (device is not None and lr.device != device):
            place = f" on {device}" if device is not None else ""
            raise ValueError(f"{where}: a tensor lr must be a 0-d floating-point tensor{place}, got shape "
                             f"{tuple(lr.shape)} {lr.dtype} on {lr.device}")
        return
    if type(lr) is not float and (isinstance(lr, bool) or not isinstance(lr, numbers.Real)):  # float: the common case
        raise TypeError(f"{where}: lr must be a number or a 0-d tensor, got {type(lr).__name__}")
    if not 0 <= lr <= sys.float_info.max:  # false for NaN and infinities; exact for huge ints
        raise ValueError(f"{where}: lr must be finite and >= 0, got {lr}")
    if dtype is not None and dtype != torch.float64 and lr > _FLOAT32_MAX:
        raise ValueError(f"{where}: lr must be finite in float32 for {dtype} parameters, got {lr}")


_FLOAT32_MAX = torch.finfo(torch.float32).max


def check_writable(where: str, name: str, t: torch.Tensor) -> None:
    """Raise unless `t` can be updated in place element by element, as the fused updates do:
    not an inference tensor outside inference mode (RuntimeError, as torch's in-place ops), and
    no two elements at one address (ValueError): an expanded view (a stride 0) or any layout
    whose elements cannot be shown to be distinct, which an update would write twice."""
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{where}: {name} is an inference tensor, which cannot be updated in place outside "
                           f"torch.inference_mode(); clone it first")
    if not distinct_elements(t):
        raise ValueError(f"{where}: {name} of shape {tuple(t.shape)} and strides {t.stride()} has elements that "
                         f"share memory (an expanded or overlapping view), so it cannot be updated in place; pass "
                         f"a copy (.contiguous())")


def distinct_elements(t: torch.Tensor) -> bool:
    """Whether every element of `t` has its own address. Sufficient test: with the dimensions
    taken by increasing stride, each stride exceeds the farthest offset the smaller ones reach
    (what holds for every dense layout and its slices). It misses only interleavings such as
    strides (3, 2) for shape (2, 3), which no usual view makes, so those count as shared."""
    if t.is_contiguous() or t.numel() == 0:
        return True
    farthest = 0
    for stride, size in sorted((stride, size) for size, stride in zip(t.shape, t.stride()) if size != 1):
        if stride <= farthest:
            return False
        farthest += stride * (size - 1)
    return True


def memory_span(t: torch.Tensor) -> tuple[int, int]:
    """[first, end) byte addresses of `t`'s elements ((0, 0) when it has none)."""
    numel = t.numel()
    if numel == 0:
        return 0, 0
    start = t.data_ptr()
    if t.is_contiguous():
        return start, start + numel * t.element_size()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return start, start + (last + 1) * t.element_size()


def share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a` and `b` have an element at a common address. Exact for views of one buffer
    with the same element size (interleaved columns share none), else whether their address
    ranges meet. Reads only sizes, strides and addresses: no device work. Meta tensors have no
    memory."""
    if a.is_meta or b.is_meta or not a.numel() or not b.numel():
        return False
    (a_start, a_end), (b_start, b_end) = memory_span(a), memory_span(b)
    if not (a_start < b_end and b_start < a_end):
        return False
    if a.is_contiguous() and b.is_contiguous():
        return True  # dense ranges that meet
    size = a.element_size()
    if b.element_size() != size or (a_start - b_start) % size or a.numel() + b.numel() > _EXACT_LIMIT:
        return True  # not on one element grid, or too large to enumerate: they may
    base = min(a_start, b_start)
    return bool(torch.isin(_offsets(a, (a_start - base) // size), _offsets(b, (b_start - base) // size)).any())


_EXACT_LIMIT = 1 << 24  # elements enumerated (on the host) to tell interleaved views apart


def _offsets(t: torch.Tensor, first: int) -> torch.Tensor:
    """The element offsets of `t` from a common base, `first` that of its first element."""
    offsets = torch.tensor(first, dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride()):
        offsets = offsets.unsqueeze(-1) + torch.arange(size, dtype=torch.int64) * stride
    return offsets.reshape(-1)


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `a` and `b` are the same elements in the same places (an update of one by the
    other, element by element, reads each element before it writes it)."""
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype)
