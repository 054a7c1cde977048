"""The `fusedgrad` operator namespace: fusedgrad's ops as torch.library operators.

Each op is defined with a schema and registered, per dispatch key, as
    CPU, CUDA         the kernel: it checks its arguments, then chooses the backend (Triton or
                      ATen, `dispatch.resolve`) and runs it; Dynamo never traces this choice
    Meta (fake)       shapes and dtypes only, for FakeTensor tracing: torch.compile, export
    Autograd          an autograd Function whose backward runs the ops' products again (double
                      backward)
    AutocastCPU/CUDA  the casts autocast applies to the torch op it replaces (mm, mse_loss)
Mutating ops declare what they write (`Tensor(a!)`), so functionalization (torch.compile,
export) knows; their kernels bump the version counters of what they write, as torch's in-place
ops do.

Registration uses the low-level `torch.library.Library` rather than `torch.library.custom_op`:
custom_op's Python wrapping costs several times what the rest of a small op's call does, and
these ops are host-bound at small sizes (bench/NOTES.md, "torch.library"). For the same reason
the public functions (`fusedgrad.mm_relu`, ...) skip the dispatcher in plain eager mode
(`eager`) and call the same kernels and Functions directly; whenever a graph is being built
(torch.compile, export, FakeTensor or any other dispatch mode, tensor subclasses) they call
the ops, so that the graph records `fusedgrad::` ops.
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch

from .checks import autocast

LIBRARY = torch.library.Library("fusedgrad", "DEF")
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_AUTOCAST_KEYS = (torch._C.DispatchKey.AutocastCPU, torch._C.DispatchKey.AutocastCUDA)


def eager(*tensors: torch.Tensor) -> bool:
    """Whether nothing but the kernels themselves would see this call: not compiling or
    exporting, no dispatch mode active (FakeTensor, functionalization, proxy tracing, opcheck),
    and no tensor subclass (which may intercept ops) among `tensors`. torch.func transforms are
    eager: the Functions carry their own rules for them."""
    return not torch.compiler.is_compiling() and untraced(*tensors)  # is_compiling first: Dynamo folds it


def untraced(*tensors) -> bool:
    """`eager` less the question Dynamo needs answered first: for code Dynamo does not trace
    (backward, which only compiled autograd traces, and then on FakeTensors)."""
    if torch._C._len_torch_dispatch_stack():
        return False
    for t in tensors:  # a loop, not all(...): this runs on every eager call
        if type(t) not in _PLAIN_TYPES and isinstance(t, torch.Tensor):  # not tensors: the checks say
            return False
    return True


def define(schema: str, kernel: Callable, fake: Callable, autograd: Callable | None = None, *,
           autocast_dtype: torch.dtype | None | bool = False, mutating: bool = False) -> torch._ops.OpOverloadPacket:
    """Define `fusedgrad::<schema>` with `kernel` on CPU and CUDA, `fake` for FakeTensors and
    meta tensors, `autograd` as its autograd kernel, and, unless `autocast_dtype` is False,
    autocast kernels casting floating (non-float64) tensors to `autocast_dtype`, or to
    autocast's own dtype for None (torch's policy for mm). A `mutating` op (an in-place
    update, not differentiable) gets an autograd kernel that runs it below autograd, under
    no_grad, as torch's in-place optimizer steps run."""
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    for key in ("CPU", "CUDA"):
        LIBRARY.impl(name, kernel, key)
    torch.library.register_fake(f"fusedgrad::{name}", fake, lib=LIBRARY)
    op = getattr(torch.ops.fusedgrad, name)
    if mutating:
        autograd = _below_autograd(op.default)
    if autograd is not None:
        LIBRARY.impl(name, autograd, "Autograd")
    if autocast_dtype is not False:
        for key in _AUTOCAST_KEYS:
            LIBRARY.impl(name, _autocast_kernel(op.default, key, autocast_dtype), key.name)
    return op


def _below_autograd(op: torch._ops.OpOverload):
    def kernel(*args, **kwargs):
        with torch._C._AutoDispatchBelowAutograd(), torch.no_grad():
            return op(*args, **kwargs)

    return kernel


def _autocast_kernel(op: torch._ops.OpOverload, key: torch._C.DispatchKey, dtype: torch.dtype | None):
    excluded = torch._C.DispatchKeySet(key)

    def kernel(*args, **kwargs):
        args = autocast(dtype, *args)  # outside the guard, which turns autocast off for what it runs
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op(*args, **kwargs)

    return kernel


def refuse_transforms(op: str) -> None:
    """Raise if torch.func transforms are active: an operator's autograd kernel cannot run its
    autograd Function inside them. The public functions can (they call the Functions, which
    have torch.func rules, directly), so the error says to call those."""
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(f"torch.ops.fusedgrad.{op} called inside a torch.func transform: the operators do "
                           f"not support torch.func; call fusedgrad.{op.removesuffix('_and_grad')} instead, "
                           f"which does")


def lr_arguments(lr: float | torch.Tensor) -> tuple[torch.Tensor | None, float]:
    """A learning rate as the in-place ops' schemas take it: (lr_tensor, lr), the tensor or None
    and the number (0.0 beside a tensor), since a schema argument has one type. A real number
    becomes a float (a Fraction or a numpy scalar, as every kernel takes it); anything else is
    passed on for the checks to refuse."""
    if isinstance(lr, torch.Tensor):
        return lr, 0.0
    if isinstance(lr, numbers.Real) and not isinstance(lr, bool):
        try:
            return None, float(lr)
        except OverflowError:  # an int beyond float: the checks refuse it
            pass
    return None, lr


def bump_versions(*tensors: torch.Tensor) -> None:
    """Mark `tensors` as written in place (what torch's in-place ops do), so that autograd
    refuses a saved copy of them that has since changed. Inference tensors have no version."""
    torch.autograd.graph.increment_version([t for t in tensors if not t.is_inference()])
