"""`mm` and `mm_relu`: matrix products with autograd, backed by one Triton GEMM kernel.

    out    = relu(a @ b)                     (or a @ b for `mm`)
    grad_a = (grad_out * relu'(out)) @ b.T     relu'(out) = 0 where out <= 0, else 1
    grad_b = a.T @ (grad_out * relu'(out))

On the Triton backend, forward saves out (never the pre-activation), and a and b where
backward needs them (b for grad_a, a for grad_b, as torch.mm), and backward applies
relu'(out) inside the two backward GEMMs as they load grad_out. Those GEMMs are the same
Function again (`_BACKWARD`), so backward is differentiable: double backward, gradient
penalties and Hessians are exact, not zero. `matmul_reference` is the same
computation in ATen: the test oracle, and the ATen backend itself. There it runs under torch's
own autograd (mm, then an in-place relu that saves only its output: the same tensors saved),
because a Python autograd.Function would only add overhead around the same ATen calls.
Backend "auto" takes that path where ATen computes the same product (`dispatch.resolve`).
"""

from __future__ import annotations

import torch

from . import dispatch, settings
from .function import Function, by_slices, forward_mode_active, rows_of
from .checks import autocast, check_operands


def matmul_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    relu: bool = False,
    a_relu_mask: torch.Tensor | None = None,
    b_relu_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ATen twin of `fusedgrad.kernels.matmul`, kept on purpose: same arguments (but the
    launch options `config`, `fp32_precision`, `tuner`), same semantics; the CPU path and the
    test oracle of the Triton launcher."""
    if a_relu_mask is not None:
        a = a.masked_fill(a_relu_mask <= 0, 0)  # torch's threshold_backward: NaN passes
    if b_relu_mask is not None:
        b = b.masked_fill(b_relu_mask <= 0, 0)
    out = torch.mm(a, b)
    return out.relu_() if relu else out


# The Triton products backward needs, by what the forward's relu' mask gated: for each side,
# (what grad_a's product gates and with which mask, what grad_b's gates and with which mask).
# With M the mask and G the upstream gradient:
#     out = M * (a @ b)    grad_a = (M * G) @ b.T       grad_b = a.T @ (M * G)
#     out = (M * a) @ b    grad_a = M * (G @ b.T)       grad_b = (M.T * a.T) @ G
#     out = a @ (M * b)    grad_a = G @ (M.T * b.T)     grad_b = M * (a.T @ G)
# (relu(a @ b) is the first, with M = out.) The family is closed under differentiation, so
# backward written in its own products is differentiable again, to any order; relu' is
# piecewise constant, so the mask itself gets no gradient, as in torch's threshold_backward.
_BACKWARD = {
    None: ((None, False), (None, False)),
    "out": (("a", False), ("b", False)),
    "a": (("out", False), ("a", True)),
    "b": (("b", True), ("out", False)),
}
_MASK_ARGUMENT = {"a": "a_relu_mask", "b": "b_relu_mask", "out": "out_relu_mask"}


def _triton_product(a, b, relu: bool, mask, side: str | None, launch: dict) -> torch.Tensor:
    gating = {} if side is None else {_MASK_ARGUMENT[side]: mask}
    return dispatch.load_kernels().matmul(a, b, relu=relu, **gating, **launch)


def _recorded() -> bool:
    """Whether backward's and jvp's products must go through the Function again: under
    create_graph or a torch.func transform (to be recorded, or batched by the vmap rule).
    Otherwise they are plain launches, with no autograd bookkeeping around them."""
    return torch.is_grad_enabled() or torch._C._are_functorch_transforms_active()


class TritonMatmulFunction(Function):
    """relu(a @ b), a @ b, or a @ b with one of a, b and the product gated by relu'(mask)
    (`side` "a", "b" or "out"), in Triton kernels forward and backward, at the `launch`
    settings (fp32 precision, tuner) of the first forward, wherever backward runs."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, relu: bool, mask: torch.Tensor | None,
                side: str | None, launch: dict) -> torch.Tensor:
        return _triton_product(a, b, relu, mask, side, launch)

    @staticmethod
    def setup_context(ctx, inputs, out):
        a, b, relu, mask, side, launch = inputs
        ctx.side, ctx.launch = ("out" if relu else side), launch
        # As torch.mm does: grad_a needs b, grad_b needs a, so a frozen b keeps no activation
        # a alive. relu's output doubles as its mask.
        needs_a, needs_b = ctx.needs_input_grad[:2]
        ctx.save_for_backward(a if needs_b else None, b if needs_a else None,
                              (out if relu else mask) if needs_a or needs_b else None)
        if forward_mode_active():
            ctx.save_for_forward(a, b, out if relu else mask)

    @staticmethod
    def jvp(ctx, a_tangent, b_tangent, _relu, mask_tangent, _side, _launch):
        """out' = P(a', b) + P(a, b'), P the forward's gated product: the gate relu'(mask) is
        piecewise constant, so it passes tangents through unchanged (relu: the gate of out)."""
        a, b, mask = ctx.saved_tensors
        product = TritonMatmulFunction.apply if _recorded() else _triton_product
        terms = [product(x, y, False, mask, ctx.side, ctx.launch)
                 for x, y in ((a_tangent, b), (a, b_tangent)) if x is not None and y is not None]
        return terms[0] + terms[1] if len(terms) == 2 else terms[0]

    @staticmethod
    def vmap(info, in_dims, a, b, relu, mask, side, launch):
        """Batched over a's rows only (b unbatched, a mask on a or on the output batched like
        a or not at all): one product of (batch * M, K) by b, the reshape torch.mm's own rule
        makes. Anything else: slice by slice."""
        a_dim, b_dim, _, mask_dim, _, _ = in_dims
        if a_dim is not None and b_dim is None and (mask_dim is None or side in ("a", "out")):
            rows = a.movedim(a_dim, 0).shape[1]
            gate = rows_of(mask, mask_dim, info.batch_size) if side in ("a", "out") else mask
            out = TritonMatmulFunction.apply(rows_of(a, a_dim, info.batch_size), b, relu, gate, side, launch)
            return out.reshape(info.batch_size, rows, out.shape[1]), 0
        return by_slices(TritonMatmulFunction, info.batch_size, in_dims, a, b, relu, mask, side, launch)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, b, mask = ctx.saved_tensors
        product = TritonMatmulFunction.apply if _recorded() else _triton_product
        (side_a, transposed_a), (side_b, transposed_b) = _BACKWARD[ctx.side]
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = product(grad_out, b.T, False, mask.T if transposed_a else mask, side_a, ctx.launch)
        if ctx.needs_input_grad[1]:
            grad_b = product(a.T, grad_out, False, mask.T if transposed_b else mask, side_b, ctx.launch)
        return grad_a, grad_b, None, None, None, None


def _matmul(op: str, a: torch.Tensor, b: torch.Tensor, relu: bool) -> torch.Tensor:
    a, b = autocast(None, a, b)  # torch.mm's policy: lower precision under torch.autocast
    check_operands(op, a, b)
    if dispatch.resolve(a, gemm=True) == "triton":
        dispatch.load_kernels()  # before the tuner, which imports them too: a missing triton's clear error
        launch = dict(fp32_precision=settings.kernel_fp32_precision(), tuner=settings.tuner())
        return TritonMatmulFunction.apply(a, b, relu, None, None, launch)
    return matmul_reference(a, b, relu=relu)


def mm_relu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`torch.relu(a @ b)` for a (M, K) and b (K, N), with the ReLU fused into the GEMM."""
    return _matmul("mm_relu", a, b, relu=True)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` for a (M, K) and b (K, N)."""
    return _matmul("mm", a, b, relu=False)
