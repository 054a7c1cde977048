"""`mm` and `mm_relu`: matrix products with autograd, backed by one Triton GEMM kernel.

    out    = relu(a @ b)                     (or a @ b for `mm`)
    grad_a = (grad_out * relu'(out)) @ b.T     relu'(out) = 0 where out <= 0, else 1
    grad_b = a.T @ (grad_out * relu'(out))

The ops `fusedgrad::mm_relu`, `fusedgrad::mm` and `fusedgrad::gemm` (the product with a ReLU or
one relu' mask, which backward uses) share one kernel, `gemm_kernel`: the Triton launcher or
`matmul_reference`, the same computation in ATen (the test oracle, and the ATen backend).
Their autograd is `GemmFunction`: forward saves out (never the pre-activation), and a and b
where backward needs them (b for grad_a, a for grad_b, as torch.mm), and backward applies
relu'(out) inside the two backward GEMMs as they load grad_out. Those GEMMs are the same op
again (`_BACKWARD`), so backward is differentiable: double backward, gradient penalties and
Hessians are exact, not zero.

In plain eager mode on the ATen backend `mm_relu` is `matmul_reference` under torch's own
autograd (mm, then an in-place relu that saves only its output: the same tensors saved), since
a Python autograd Function would only add host time around the same ATen calls; backend "auto"
takes that path where ATen computes the same product (`dispatch.resolve`).
"""

from __future__ import annotations

import torch

from . import dispatch, library
from .checks import autocast, check_operands
from .function import Function, by_slices, forward_mode_active, rows_of


def matmul_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    relu: bool = False,
    a_relu_mask: torch.Tensor | None = None,
    b_relu_mask: torch.Tensor | None = None,
    out_relu_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ATen twin of `fusedgrad.kernels.matmul`, kept on purpose: same arguments (but the
    launch options `config`, `fp32_precision`, `tuner`), same semantics; the CPU path and the
    test oracle of the Triton launcher."""
    if a_relu_mask is not None:
        a = a.masked_fill(a_relu_mask <= 0, 0)  # torch's threshold_backward: NaN passes
    if b_relu_mask is not None:
        b = b.masked_fill(b_relu_mask <= 0, 0)
    out = torch.mm(a, b)
    if out_relu_mask is not None:
        out.masked_fill_(out_relu_mask <= 0, 0)
    return out.relu_() if relu else out


# The products backward needs, by what the forward's relu' mask gated: for each side, (what
# grad_a's product gates and with which mask, what grad_b's gates and with which mask).
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
# (a_relu_mask, b_relu_mask, out_relu_mask), the op's and the kernel's mask arguments, for a side.
_MASKS = {"a": lambda mask: (mask, None, None), "b": lambda mask: (None, mask, None),
          "out": lambda mask: (None, None, mask)}
_NO_MASKS = (None, None, None)


def _check_gemm(op, a, b, relu, a_relu_mask, b_relu_mask, out_relu_mask) -> None:
    check_operands(op, a, b)
    masks = {"a_relu_mask": (a_relu_mask, a.shape), "b_relu_mask": (b_relu_mask, b.shape),
             "out_relu_mask": (out_relu_mask, (a.shape[0], b.shape[1]))}
    given = [name for name, (mask, _) in masks.items() if mask is not None]
    if len(given) + bool(relu) > 1:
        raise ValueError(f"{op}: at most one of relu, a_relu_mask, b_relu_mask, out_relu_mask; got "
                         f"{', '.join((['relu'] if relu else []) + given)}")
    for name in given:
        mask, shape = masks[name]
        if not isinstance(mask, torch.Tensor) or mask.shape != shape or mask.device != a.device:
            raise ValueError(f"{op}: {name} must be a tensor of shape {tuple(shape)} on {a.device}, got "
                             f"{tuple(getattr(mask, 'shape', ()))} on {getattr(mask, 'device', None)}")


def gemm_kernel(a, b, relu=False, a_relu_mask=None, b_relu_mask=None, out_relu_mask=None, *,
                op: str = "gemm", launch: dispatch.Launch | None = None) -> torch.Tensor:
    """The CPU and CUDA kernel of all three ops (`op` names the one called): check, choose the
    backend, run it. With `launch`, from a caller that has checked, at those settings."""
    if launch is None:
        _check_gemm(op, a, b, relu, a_relu_mask, b_relu_mask, out_relu_mask)
        launch = dispatch.launch_settings(a, gemm=True)
    if launch.backend == "triton":
        # checked above (`_check_gemm`; `dispatch.resolve` refuses dtypes the kernels lack)
        return dispatch.load_kernels().matmul_unchecked(a, b, relu, a_relu_mask, b_relu_mask, out_relu_mask,
                                                        launch.fp32_precision, launch.tuner)
    return matmul_reference(a, b, relu=relu, a_relu_mask=a_relu_mask, b_relu_mask=b_relu_mask,
                            out_relu_mask=out_relu_mask)


def _gemm_fake(a, b, relu=False, a_relu_mask=None, b_relu_mask=None, out_relu_mask=None, *,
               op: str = "gemm") -> torch.Tensor:
    _check_gemm(op, a, b, relu, a_relu_mask, b_relu_mask, out_relu_mask)
    return a.new_empty((a.shape[0], b.shape[1]))


def gated_product(a, b, relu: bool, mask, side: str | None, launch: dispatch.Launch | None, recorded: bool):
    """The gated product, recorded by autograd (`recorded`) or not: at `launch`, straight to
    the Function or the kernel; with `launch` None (a graph is being built) through the op,
    whose kernel reads the settings when it runs."""
    masks = _NO_MASKS if side is None else _MASKS[side](mask)
    if launch is None:
        if recorded:
            return torch.ops.fusedgrad.gemm(a, b, relu, *masks)
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.fusedgrad.gemm(a, b, relu, *masks)
    if recorded:
        return GemmFunction.apply(a, b, relu, mask, side, launch)
    return gemm_kernel(a, b, relu, *masks, launch=launch)


def backward_launch(ctx, *tensors) -> dispatch.Launch | None:
    """The forward's `Launch` for backward's and jvp's products, or None (the op) where the
    forward ran eagerly but they are traced (compiled autograd) or batched by torch's older
    vmap (`autograd.grad(..., is_grads_batched=True)`, `hessian(..., vectorize=True)`), which
    runs an op without a batching rule slice by slice."""
    if ctx.launch is None or not library.untraced(*tensors):
        return None
    for t in tensors:
        if t is not None and torch._C._functorch.is_legacy_batchedtensor(t):
            return None
    return ctx.launch


def records_graph() -> bool:
    """Whether backward's and jvp's products must be recorded: under create_graph or a
    torch.func transform (to be differentiated again, or batched by the vmap rule)."""
    return torch.is_grad_enabled() or torch._C._are_functorch_transforms_active()


class GemmFunction(Function):
    """relu(a @ b), a @ b, or a @ b with one of a, b and the product gated by relu'(mask)
    (`side` "a", "b" or "out"), forward and backward in `gemm_kernel`, at `launch` (the
    forward's settings, so backward runs at them wherever it is called; None where a graph is
    being built: the kernels then read the settings when they run)."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, relu: bool, mask: torch.Tensor | None,
                side: str | None, launch: dispatch.Launch | None) -> torch.Tensor:
        if launch is not None and side is None:  # the eager forward of mm, mm_relu: straight to the kernel
            return gemm_kernel(a, b, relu, launch=launch)
        return gated_product(a, b, relu, mask, side, launch, recorded=False)

    @staticmethod
    def setup_context(ctx, inputs, out):
        a, b, relu, mask, side, launch = inputs
        ctx.side = "out" if relu else side
        ctx.launch = launch
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
        launch = backward_launch(ctx, a_tangent, b_tangent)
        terms = [gated_product(x, y, False, mask, ctx.side, launch, records_graph())
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
            out = GemmFunction.apply(rows_of(a, a_dim, info.batch_size), b, relu, gate, side, launch)
            return out.reshape(info.batch_size, rows, out.shape[1]), 0
        return by_slices(GemmFunction, info.batch_size, in_dims, a, b, relu, mask, side, launch)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, b, mask = ctx.saved_tensors
        recorded, launch = records_graph(), backward_launch(ctx, grad_out)
        (side_a, transposed_a), (side_b, transposed_b) = _BACKWARD[ctx.side]
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = gated_product(grad_out, b.T, False, mask.T if transposed_a else mask, side_a, launch, recorded)
        if ctx.needs_input_grad[1]:
            grad_b = gated_product(a.T, grad_out, False, mask.T if transposed_b else mask, side_b, launch, recorded)
        return grad_a, grad_b, None, None, None, None


def _gemm_autograd(a, b, relu=False, a_relu_mask=None, b_relu_mask=None, out_relu_mask=None, *, op="gemm"):
    library.refuse_transforms(op)
    _check_gemm(op, a, b, relu, a_relu_mask, b_relu_mask, out_relu_mask)  # before the Function reads a side
    launch = dispatch.launch_settings(a, gemm=True) if library.eager(a, b) else None  # traced: read at run time
    for side, mask in (("a", a_relu_mask), ("b", b_relu_mask), ("out", out_relu_mask)):
        if mask is not None:
            return GemmFunction.apply(a, b, False, mask, side, launch)
    return GemmFunction.apply(a, b, relu, None, None, launch)


def _define_product(op: str, relu: bool) -> None:
    """`fusedgrad::<op>(a, b)`: `gemm` with its ReLU on or off and no mask."""
    library.define(f"{op}(Tensor a, Tensor b) -> Tensor",
                   lambda a, b: gemm_kernel(a, b, relu, op=op), lambda a, b: _gemm_fake(a, b, relu, op=op),
                   lambda a, b: _gemm_autograd(a, b, relu, op=op), autocast_dtype=None)


library.define("gemm(Tensor a, Tensor b, bool relu=False, Tensor? a_relu_mask=None, Tensor? b_relu_mask=None, "
               "Tensor? out_relu_mask=None) -> Tensor", gemm_kernel, _gemm_fake, _gemm_autograd, autocast_dtype=None)
_define_product("mm_relu", relu=True)
_define_product("mm", relu=False)


def _matmul(op: str, a: torch.Tensor, b: torch.Tensor, relu: bool) -> torch.Tensor:
    if not library.eager(a, b):
        return getattr(torch.ops.fusedgrad, op)(a, b)
    a, b = autocast(None, a, b)  # torch.mm's policy: lower precision under torch.autocast
    check_operands(op, a, b)
    launch = dispatch.launch_settings(a, gemm=True)
    if launch.backend == "triton":
        return GemmFunction.apply(a, b, relu, None, None, launch)
    return matmul_reference(a, b, relu=relu)


def mm_relu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`torch.relu(a @ b)` for a (M, K) and b (K, N), with the ReLU fused into the GEMM."""
    return _matmul("mm_relu", a, b, relu=True)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` for a (M, K) and b (K, N)."""
    return _matmul("mm", a, b, relu=False)
