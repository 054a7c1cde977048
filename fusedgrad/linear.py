"""`linear`: `act(input @ weight.T + bias)` with nn.Linear's layout, on the GEMM kernel.

    out         = act(x @ W.T + b)       W (out_features, in_features), b (out_features,)
    grad_pre    = grad_out * act'(out)   act: identity or relu, relu'(out) = 0 where out <= 0
    grad_x      = grad_pre @ W           one GEMM, act' applied as it loads grad_out
    grad_W      = grad_pre.T @ x         one GEMM, which also sums the rows of the grad_pre.T
    grad_b      = sum over rows of grad_pre   tiles it reads: the bias gradient (`kernels.linear`)

The ops `fusedgrad::linear` and `fusedgrad::weight_and_bias_grad` (the weight and bias
gradients of one launch) each have one kernel choosing Triton or ATen (`linear_reference`,
`weight_and_bias_grad_reference`: the ATen twins, the test oracles). The autograd Function
`LinearFunction` saves out (for the mask, never the pre-activation), x where the weight needs
a gradient and W where x does, as torch's linear does. Its first-order backward is the two
launches; where backward is itself recorded (create_graph, torch.func) it is written in
recorded ops instead, the `gemm` op for both products and a masked sum for the bias, so
double backward is exact. In plain eager mode on the ATen backend `linear` is
`linear_reference` under torch's own autograd, as `mm_relu` is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch, library
from .checks import FLOAT_DTYPES, autocast
from .function import Function, by_slices, forward_mode_active, rows_of
from .matmul import backward_launch, gated_product, records_graph

ACTIVATIONS = (None, "relu")


def linear_reference(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     activation: str | None = None) -> torch.Tensor:
    """ATen twin of the Triton launch: `F.linear`, then the activation (in place: the output
    is the only tensor relu saves)."""
    out = F.linear(input, weight, bias)
    return out.relu_() if activation == "relu" else out


def weight_and_bias_grad_reference(grad_out: torch.Tensor, input: torch.Tensor,
                                   relu_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ATen twin of `kernels.weight_and_bias_grad_unchecked`: (grad_pre.T @ input, the column
    sums of grad_pre), grad_pre = grad_out with relu'(relu_out) applied (NaN passes, as in
    torch's threshold_backward). Differentiable: the recorded backward's bias gradient."""
    grad_pre = grad_out if relu_out is None else grad_out.masked_fill(relu_out <= 0, 0)
    return grad_pre.T @ input, grad_pre.sum(0)


def check_linear(op: str, input, weight, bias, activation) -> None:
    """Raise, naming the argument, unless input (M, in_features), weight (out_features,
    in_features) and bias (out_features,) or None are floating tensors of one dtype and device
    and `activation` is None or "relu"."""
    if activation not in ACTIVATIONS or not (activation is None or type(activation) is str):
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    for name, t, dims in (("input", input, 2), ("weight", weight, 2), ("bias", bias, 1)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported dtypes are "
                            f"{', '.join(str(d).removeprefix('torch.') for d in FLOAT_DTYPES)}")
        if t.dim() != dims:
            raise ValueError(f"{op}: {name} must be {dims}-D, got shape {tuple(t.shape)}")
        if t.dtype != input.dtype:
            raise TypeError(f"{op}: dtypes differ: {name} is {t.dtype}, input is {input.dtype}")
        if t.device != input.device:
            raise ValueError(f"{op}: devices differ: {name} is on {t.device}, input is on {input.device}")
    if weight.shape[1] != input.shape[1]:
        raise ValueError(f"{op}: input {tuple(input.shape)} does not fit weight {tuple(weight.shape)} "
                         f"(in_features {input.shape[1]} != {weight.shape[1]})")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"{op}: bias {tuple(bias.shape)} does not fit weight {tuple(weight.shape)} "
                         f"(out_features {weight.shape[0]})")


def linear_kernel(input, weight, bias=None, activation=None, *, launch: dispatch.Launch | None = None):
    """The CPU and CUDA kernel of `fusedgrad::linear`: check (unless a checked caller passes
    its `launch`), choose the backend, run it."""
    if launch is None:
        check_linear("linear", input, weight, bias, activation)
        launch = dispatch.launch_settings(input, gemm=True)
    if launch.backend == "triton":
        return dispatch.load_kernels().linear_unchecked(input, weight, bias, activation == "relu",
                                                        launch.fp32_precision, launch.tuner)
    return linear_reference(input, weight, bias, activation)


def _check_weight_and_bias_grad(grad_out, input, relu_out) -> None:
    op = "weight_and_bias_grad"
    for name, t in (("grad_out", grad_out), ("input", input), ("relu_out", relu_out)):
        if t is None and name == "relu_out":
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be a 2-D floating tensor, got {type(t).__name__} "
                            f"{tuple(getattr(t, 'shape', ()))}")
        if t.dtype != grad_out.dtype or t.device != grad_out.device:
            raise TypeError(f"{op}: {name} is {t.dtype} on {t.device}, grad_out is {grad_out.dtype} on "
                            f"{grad_out.device}")
    if input.shape[0] != grad_out.shape[0] or (relu_out is not None and relu_out.shape != grad_out.shape):
        raise ValueError(f"{op}: grad_out {tuple(grad_out.shape)}, input {tuple(input.shape)} and relu_out "
                         f"{None if relu_out is None else tuple(relu_out.shape)} do not fit")


def weight_and_bias_grad_kernel(grad_out, input, relu_out=None, *, launch: dispatch.Launch | None = None):
    """The CPU and CUDA kernel of `fusedgrad::weight_and_bias_grad`."""
    if launch is None:
        _check_weight_and_bias_grad(grad_out, input, relu_out)
        launch = dispatch.launch_settings(grad_out, gemm=True)
    if launch.backend == "triton":
        return dispatch.load_kernels().weight_and_bias_grad_unchecked(grad_out, input, relu_out,
                                                                      launch.fp32_precision, launch.tuner)
    return weight_and_bias_grad_reference(grad_out, input, relu_out)


def _bias_grad(grad_out, relu_out):
    """The bias gradient alone, a masked sum in ATen (differentiable)."""
    return (grad_out if relu_out is None else grad_out.masked_fill(relu_out <= 0, 0)).sum(0)


def _weight_and_bias_grad_recorded(grad_out, x, relu_out, launch: dispatch.Launch | None):
    """The weight and bias gradients in recorded ops, the gated product (`gemm`) and a masked
    sum, so that they can be differentiated again."""
    gate, side = (None, None) if relu_out is None else (relu_out.T, "a")
    return gated_product(grad_out.T, x, False, gate, side, launch, recorded=True), _bias_grad(grad_out, relu_out)


def _weight_and_bias_grad_autograd(grad_out, input, relu_out=None):
    """The op's autograd kernel: the recorded form where a gradient is wanted, else the kernel."""
    library.refuse_transforms("weight_and_bias_grad")
    _check_weight_and_bias_grad(grad_out, input, relu_out)
    if not (torch.is_grad_enabled() and (grad_out.requires_grad or input.requires_grad)):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.fusedgrad.weight_and_bias_grad(grad_out, input, relu_out)
    launch = dispatch.launch_settings(grad_out, gemm=True) if library.eager(grad_out, input, relu_out) else None
    return _weight_and_bias_grad_recorded(grad_out, input, relu_out, launch)


class LinearFunction(Function):
    """act(x @ weight.T + bias) (act: relu if `relu`), at `launch` (the forward's settings;
    None where a graph is being built, when the kernels read them as they run)."""

    @staticmethod
    def forward(x, weight, bias, relu: bool, launch: dispatch.Launch | None):
        if launch is not None:
            return linear_kernel(x, weight, bias, "relu" if relu else None, launch=launch)
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.fusedgrad.linear(x, weight, bias, "relu" if relu else None)

    @staticmethod
    def setup_context(ctx, inputs, out):
        x, weight, bias, relu, launch = inputs
        ctx.relu, ctx.launch = relu, launch
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        ctx.save_for_backward(x if needs_weight else None, weight if needs_x else None,
                              out if relu and (needs_x or needs_weight or needs_bias) else None)
        if forward_mode_active():
            ctx.save_for_forward(x, weight, out if relu else None)

    @staticmethod
    def jvp(ctx, x_tangent, weight_tangent, bias_tangent, _relu, _launch):
        """out' = relu'(out) * (x' @ W.T + x @ W'.T + b') (relu' piecewise constant, so it
        passes tangents through; 1 without the activation)."""
        x, weight, out = ctx.saved_tensors
        launch = backward_launch(ctx, x_tangent, weight_tangent)
        side = "out" if ctx.relu else None
        terms = [gated_product(a, b, False, out, side, launch, records_graph())
                 for a, b in ((x_tangent, weight.T), (x, None if weight_tangent is None else weight_tangent.T))
                 if a is not None and b is not None]
        if bias_tangent is not None:
            shape = (x.shape[0], weight.shape[0])
            bias_term = bias_tangent.expand(shape)
            terms.append(bias_term.masked_fill(out <= 0, 0) if ctx.relu else bias_term.contiguous())
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, relu, launch):
        """Batched over x's rows only: one (batch * M, in_features) product, as torch's linear
        batches; anything else slice by slice."""
        x_dim, weight_dim, bias_dim, _, _ = in_dims
        if x_dim is not None and weight_dim is None and bias_dim is None:
            rows = x.movedim(x_dim, 0).shape[1]
            out = LinearFunction.apply(rows_of(x, x_dim, info.batch_size), weight, bias, relu, launch)
            return out.reshape(info.batch_size, rows, out.shape[1]), 0
        return by_slices(LinearFunction, info.batch_size, in_dims, x, weight, bias, relu, launch)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        recorded, launch = records_graph(), backward_launch(ctx, grad_out)
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        side = "a" if ctx.relu else None
        grad_x = grad_weight = grad_bias = None
        if needs_x:
            grad_x = gated_product(grad_out, weight, False, out, side, launch, recorded)
        if needs_weight and needs_bias:
            if recorded:
                grad_weight, grad_bias = _weight_and_bias_grad_recorded(grad_out, x, out, launch)
            elif launch is not None:
                grad_weight, grad_bias = weight_and_bias_grad_kernel(grad_out, x, out, launch=launch)
            else:
                with torch._C._AutoDispatchBelowAutograd():
                    grad_weight, grad_bias = torch.ops.fusedgrad.weight_and_bias_grad(grad_out, x, out)
        elif needs_weight:
            grad_weight = gated_product(grad_out.T, x, False, None if out is None else out.T, side, launch, recorded)
        elif needs_bias:
            grad_bias = _bias_grad(grad_out, out)
        return grad_x, grad_weight, grad_bias, None, None


def _linear_fake(input, weight, bias=None, activation=None):
    check_linear("linear", input, weight, bias, activation)
    return input.new_empty((input.shape[0], weight.shape[0]))


def _linear_autograd(input, weight, bias=None, activation=None):
    library.refuse_transforms("linear")
    check_linear("linear", input, weight, bias, activation)
    launch = dispatch.launch_settings(input, gemm=True) if library.eager(input, weight, bias) else None
    return LinearFunction.apply(input, weight, bias, activation == "relu", launch)


def _weight_and_bias_grad_fake(grad_out, input, relu_out=None):
    _check_weight_and_bias_grad(grad_out, input, relu_out)
    return grad_out.new_empty((grad_out.shape[1], input.shape[1])), grad_out.new_empty(grad_out.shape[1])


library.define("linear(Tensor input, Tensor weight, Tensor? bias=None, str? activation=None) -> Tensor",
               linear_kernel, _linear_fake, _linear_autograd, autocast_dtype=None)
library.define("weight_and_bias_grad(Tensor grad_out, Tensor input, Tensor? relu_out=None) -> (Tensor, Tensor)",
               weight_and_bias_grad_kernel, _weight_and_bias_grad_fake, _weight_and_bias_grad_autograd,
               autocast_dtype=None)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None) -> torch.Tensor:
    """`act(input @ weight.T + bias)`, `torch.nn.functional.linear` followed by the activation
    (None or "relu"), fused: one GEMM forward, the bias add and ReLU in its epilogue; backward
    one GEMM for the input's gradient and one for the weight's and the bias's together.

    input (*, in_features), weight (out_features, in_features), bias (out_features,) or None;
    returns (*, out_features) in input's dtype. Autocast casts as for `F.linear`."""
    if not library.eager(input, weight, bias):
        return _rows_apply(lambda rows: torch.ops.fusedgrad.linear(rows, weight, bias, activation), input, weight)
    input, weight, bias = autocast(None, input, weight, bias)
    return _rows_apply(lambda rows: _linear_eager(rows, weight, bias, activation), input, weight)


def _linear_eager(rows, weight, bias, activation):
    check_linear("linear", rows, weight, bias, activation)
    launch = dispatch.launch_settings(rows, gemm=True)
    if launch.backend == "triton":
        return LinearFunction.apply(rows, weight, bias, activation == "relu", launch)
    return linear_reference(rows, weight, bias, activation)


def _rows_apply(run, input, weight):
    """`run` on input as a matrix of rows: (*, in_features) flattened to (rows, in_features)
    and the result shaped back (*, out_features), as F.linear takes any leading dimensions."""
    if not isinstance(input, torch.Tensor) or input.dim() == 2:
        return run(input)
    if input.dim() == 0:
        raise ValueError("linear: input must have at least one dimension, got a 0-d tensor")
    if isinstance(weight, torch.Tensor):
        leading = input.shape[:-1]
        out = run(input.reshape(-1, input.shape[-1]))
        return out.reshape(*leading, out.shape[-1])
    return run(input)  # the checks explain
