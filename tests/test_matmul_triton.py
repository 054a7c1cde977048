"""Tier 2: the Triton kernels through fusedgrad's autograd ops, with the triton backend forced.

Without CUDA they run under Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET);
with CUDA the same tests run compiled on the GPU. Oracle: torch autograd in float64.
"""

import pytest
import torch

import fusedgrad
from helpers import assert_close, kernel_device, make_operand, relu_matmul_float64

DEVICE = kernel_device()
DTYPES = ["float32", "float16"]
SHAPES = [(1, 1, 1), (7, 17, 1), (17, 100, 7), (64, 129, 100), (129, 7, 17), (33, 64, 65)]


@pytest.fixture(autouse=True)
def triton_backend():
    with fusedgrad.backend("triton"):
        yield


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts launches of the Triton matmul launcher."""
    kernels = fusedgrad.dispatch.load_kernels()
    calls = []
    launch = kernels.matmul

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return launch(*args, **kwargs)

    monkeypatch.setattr(kernels, "matmul", counted)
    return calls


def run(op, a, b, grad_out=None):
    """Forward and backward of `op` on leaf copies of a and b; returns out, a.grad, b.grad."""
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    out = op(a, b)
    if grad_out is None:
        grad_out = torch.randn_like(out)
    out.backward(grad_out)
    return out, a.grad, b.grad, grad_out


@pytest.mark.parametrize("relu", [True, False], ids=["mm_relu", "mm"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_backward_match_float64(shape, dtype, relu):
    M, K, N = shape
    a = make_operand(M, K, getattr(torch, dtype), DEVICE)
    b = make_operand(K, N, getattr(torch, dtype), DEVICE)
    out, grad_a, grad_b, grad_out = run(fusedgrad.mm_relu if relu else fusedgrad.mm, a, b)
    ref_out, ref_a, ref_b = relu_matmul_float64(a, b, grad_out, relu)
    assert out.dtype == a.dtype and grad_a.dtype == a.dtype and grad_b.dtype == b.dtype
    assert out.device == a.device
    if relu:
        assert (out.min() >= 0).item()
    assert_close(out, ref_out, dtype)
    assert_close(grad_a, ref_a, dtype)
    assert_close(grad_b, ref_b, dtype)


LAYOUTS = ["contiguous", "transposed", "sliced"]


@pytest.mark.parametrize("layout_b", LAYOUTS)
@pytest.mark.parametrize("layout_a", LAYOUTS)
def test_any_strides(layout_a, layout_b):
    a = make_operand(37, 70, torch.float32, DEVICE, layout_a)
    b = make_operand(70, 45, torch.float32, DEVICE, layout_b)
    grad_out = make_operand(37, 45, torch.float32, DEVICE, "sliced")  # a strided upstream gradient
    out, grad_a, grad_b, _ = run(fusedgrad.mm_relu, a, b, grad_out)
    ref_out, ref_a, ref_b = relu_matmul_float64(a, b, grad_out)
    assert out.is_contiguous()
    assert_close(out, ref_out, "float32")
    assert_close(grad_a, ref_a, "float32")
    assert_close(grad_b, ref_b, "float32")


def test_expanded_gradient_from_sum():
    """`out.sum().backward()` hands backward a stride-0 gradient; the kernel reads it in place."""
    a = make_operand(20, 30, torch.float32, DEVICE).requires_grad_()
    b = make_operand(30, 40, torch.float32, DEVICE).requires_grad_()
    fusedgrad.mm_relu(a, b).sum().backward()
    _, ref_a, ref_b = relu_matmul_float64(a, b, torch.ones(20, 40))
    assert_close(a.grad, ref_a, "float32")
    assert_close(b.grad, ref_b, "float32")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_like_torch(dtype):
    dtype = getattr(torch, dtype)
    a = make_operand(40, 50, dtype, DEVICE)
    b = make_operand(50, 36, dtype, DEVICE)
    a[3, 7] = float("nan")
    a[10, 0] = float("inf")
    a[11, 5] = -float("inf")
    b[20, 30] = float("nan")
    grad_out = torch.randn(40, 36, dtype=dtype, device=DEVICE)
    grad_out[0, 0] = float("nan")
    out, grad_a, grad_b, _ = run(fusedgrad.mm_relu, a, b, grad_out)
    ref_out, ref_a, ref_b = relu_matmul_float64(a, b, grad_out)
    assert out.isnan().any() and out.isinf().any() and ref_out.isnan().any()
    assert_close(out, ref_out, str(dtype).removeprefix("torch."))
    assert_close(grad_a, ref_a, str(dtype).removeprefix("torch."))
    assert_close(grad_b, ref_b, str(dtype).removeprefix("torch."))


def test_relu_gradient_is_zero_at_zero():
    """A zero row of a gives an exactly-zero pre-activation row: relu'(0) = 0, as in torch."""
    a = make_operand(16, 24, torch.float32, DEVICE)
    a[5] = 0
    b = make_operand(24, 20, torch.float32, DEVICE)
    grad_out = torch.randn(16, 20, device=DEVICE)
    out, grad_a, grad_b, _ = run(fusedgrad.mm_relu, a, b, grad_out)
    assert (out[5] == 0).all()
    assert (grad_a[5] == 0).all()
    _, ref_a, ref_b = relu_matmul_float64(a, b, grad_out)
    assert_close(grad_a, ref_a, "float32")
    assert_close(grad_b, ref_b, "float32")


@pytest.mark.parametrize("relu", [True, False], ids=["mm_relu", "mm"])
@pytest.mark.parametrize("shape", [(0, 5, 6), (5, 0, 6), (5, 6, 0), (0, 0, 0)], ids=str)
def test_empty_dimensions(shape, relu):
    M, K, N = shape
    a = torch.randn(M, K, device=DEVICE)
    b = torch.randn(K, N, device=DEVICE)
    out, grad_a, grad_b, grad_out = run(fusedgrad.mm_relu if relu else fusedgrad.mm, a, b)
    ref_out, ref_a, ref_b = relu_matmul_float64(a, b, grad_out, relu)
    for actual, reference in ((out, ref_out), (grad_a, ref_a), (grad_b, ref_b)):
        assert actual.shape == reference.shape
        assert torch.equal(actual.double().cpu(), reference)  # zeros where the sum is empty


def test_gradients_accumulate():
    a = make_operand(9, 19, torch.float32, DEVICE).requires_grad_()
    b = make_operand(19, 11, torch.float32, DEVICE).requires_grad_()
    fusedgrad.mm_relu(a, b).sum().backward()
    first = a.grad.clone(), b.grad.clone()
    fusedgrad.mm_relu(a, b).sum().backward()
    torch.testing.assert_close(a.grad, 2 * first[0])
    torch.testing.assert_close(b.grad, 2 * first[1])


@pytest.mark.parametrize("needs", [(True, False), (False, True), (True, True)], ids=str)
def test_only_needed_gradients_are_computed(needs, kernel_calls):
    a = make_operand(8, 16, torch.float32, DEVICE).requires_grad_(needs[0])
    b = make_operand(16, 12, torch.float32, DEVICE).requires_grad_(needs[1])
    fusedgrad.mm_relu(a, b).sum().backward()
    assert (a.grad is not None, b.grad is not None) == needs
    assert len(kernel_calls) == 1 + sum(needs)  # forward + one GEMM per needed gradient
    assert kernel_calls[0] == {"relu": True, "fp32_precision": None}
    masks = [k for call in kernel_calls[1:] for k in call if k != "fp32_precision"]
    assert masks == [m for m, need in zip(["a_relu_mask", "b_relu_mask"], needs) if need]


@pytest.mark.parametrize("needs", [(True, False), (False, True), (True, True)], ids=str)
def test_saves_only_what_backward_needs(needs):
    """Like torch.mm: b is saved for grad_a, a for grad_b, and the output for the ReLU mask, so a
    frozen weight keeps no activation alive."""
    a = make_operand(8, 16, torch.float32, DEVICE).requires_grad_(needs[0])
    b = make_operand(16, 12, torch.float32, DEVICE).requires_grad_(needs[1])
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fusedgrad.mm_relu(a, b)
    expected = [t for t, need in ((a, needs[1]), (b, needs[0])) if need] + [out]
    assert len(saved) == len(expected)
    assert all(s.data_ptr() == e.data_ptr() and s.shape == e.shape for s, e in zip(saved, expected))
    out.sum().backward()
    assert (a.grad is not None, b.grad is not None) == needs


def test_backend_of_forward_also_runs_backward(kernel_calls):
    a = make_operand(8, 16, torch.float32, DEVICE).requires_grad_()
    b = make_operand(16, 12, torch.float32, DEVICE).requires_grad_()
    out = fusedgrad.mm_relu(a, b)
    with fusedgrad.backend("aten"):
        out.sum().backward()
    assert len(kernel_calls) == 3


def test_fp32_precision_of_forward_also_runs_backward(kernel_calls):
    """fusedgrad.fp32_precision reaches the kernels, and backward keeps the forward's setting
    (as autocast does), even when it runs after the block."""
    a = make_operand(8, 16, torch.float32, DEVICE).requires_grad_()
    b = make_operand(16, 12, torch.float32, DEVICE).requires_grad_()
    with fusedgrad.fp32_precision("tf32x3"):
        out = fusedgrad.mm_relu(a, b)
    out.sum().backward()
    assert [call["fp32_precision"] for call in kernel_calls] == ["tf32x3"] * 3
    _, ref_a, ref_b = relu_matmul_float64(a, b, torch.ones(8, 12))
    assert_close(b.grad, ref_b, "tf32" if DEVICE == "cuda" else "float32")


def test_double_backward_is_refused():
    a = make_operand(8, 16, torch.float32, DEVICE).requires_grad_()
    b = make_operand(16, 12, torch.float32, DEVICE).requires_grad_()
    (grad_a,) = torch.autograd.grad(fusedgrad.mm_relu(a, b).sum(), a, create_graph=True)
    with pytest.raises(RuntimeError):
        grad_a.sum().backward()
