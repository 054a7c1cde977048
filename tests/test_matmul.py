"""`mm` and `mm_relu` on both backends against float64 autograd: the ATen backend on CPU (tier
1), and the Triton kernels with the triton backend forced (tier 2: interpreted on CPU, compiled
on CUDA). Also `matmul_reference`, the ATen twin of the Triton launcher and the test oracle."""

import inspect

import pytest
import torch

import fusedgrad
from helpers import assert_close, kernel_device, make_operand, relu_matmul_float64

BACKENDS = {"aten": "cpu", "triton": kernel_device()}
# bfloat16 on the interpreter runs its products as fp32 (the interpreter's own bf16 dot is
# wrong); float64 on Triton is tested in test_library (gradcheck).
DTYPES = {"aten": ["float64", "float32", "bfloat16"], "triton": ["float32", "float16", "bfloat16"]}
SHAPES = [(1, 1, 1), (7, 17, 1), (17, 100, 7), (64, 129, 100), (129, 7, 17), (33, 64, 65)]
LAYOUTS = ["contiguous", "transposed", "sliced"]
OPS = {"mm_relu": (fusedgrad.mm_relu, True), "mm": (fusedgrad.mm, False)}


def backend_cases(with_dtypes=False):
    if with_dtypes:
        return [pytest.param(backend, dtype, id=f"{backend}-{dtype}") for backend in BACKENDS for dtype in DTYPES[backend]]
    return [pytest.param(backend, id=backend) for backend in BACKENDS]


def leaves(device, M, K, N, needs=(True, True)):
    """Fresh float32 a (M, K) and b (K, N), requiring grad as `needs` says."""
    return (make_operand(M, K, torch.float32, device).requires_grad_(needs[0]),
            make_operand(K, N, torch.float32, device).requires_grad_(needs[1]))


def run(backend, op, a, b, grad_out=None):
    """Forward and backward of `op` on `backend`, on leaf copies of a and b."""
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    with fusedgrad.backend(backend):
        out = op(a, b)
    if grad_out is None:
        grad_out = torch.randn_like(out)
    out.backward(grad_out)
    return out, a.grad, b.grad, grad_out


def check_against_float64(a, b, out, grad_a, grad_b, grad_out, precision, relu=True):
    ref_out, ref_a, ref_b = relu_matmul_float64(a, b, grad_out, relu)
    assert_close(out, ref_out, precision)
    assert_close(grad_a, ref_a, precision)
    assert_close(grad_b, ref_b, precision)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend, dtype", backend_cases(with_dtypes=True))
def test_forward_and_backward_match_float64(backend, dtype, shape, op):
    M, K, N = shape
    fn, relu = OPS[op]
    device = BACKENDS[backend]
    a = make_operand(M, K, getattr(torch, dtype), device)
    b = make_operand(K, N, getattr(torch, dtype), device)
    out, grad_a, grad_b, grad_out = run(backend, fn, a, b)
    assert out.dtype == a.dtype and grad_a.dtype == a.dtype and grad_b.dtype == b.dtype
    assert out.device == a.device
    if relu:
        assert (out.min() >= 0).item()
    check_against_float64(a, b, out, grad_a, grad_b, grad_out, dtype, relu)


@pytest.mark.parametrize("layout_b", LAYOUTS)
@pytest.mark.parametrize("layout_a", LAYOUTS)
@pytest.mark.parametrize("backend", backend_cases())
def test_any_strides(backend, layout_a, layout_b):
    device = BACKENDS[backend]
    a = make_operand(37, 70, torch.float32, device, layout_a)
    b = make_operand(70, 45, torch.float32, device, layout_b)
    grad_out = make_operand(37, 45, torch.float32, device, "sliced")  # a strided upstream gradient
    out, grad_a, grad_b, _ = run(backend, fusedgrad.mm_relu, a, b, grad_out)
    assert out.is_contiguous()
    check_against_float64(a, b, out, grad_a, grad_b, grad_out, "float32")


@pytest.mark.parametrize("backend", backend_cases())
def test_expanded_gradient_from_sum(backend):
    """`out.sum().backward()` hands backward a stride-0 gradient; the kernel reads it in place."""
    a, b = leaves(BACKENDS[backend], 20, 30, 40)
    with fusedgrad.backend(backend):
        fusedgrad.mm_relu(a, b).sum().backward()
    _, ref_a, ref_b = relu_matmul_float64(a, b, torch.ones(20, 40))
    assert_close(a.grad, ref_a, "float32")
    assert_close(b.grad, ref_b, "float32")


@pytest.mark.parametrize("backend, dtype", [case for case in backend_cases(with_dtypes=True)
                                             if case.values[1] != "bfloat16"])
def test_nan_and_inf_propagate_like_torch(backend, dtype):
    device = BACKENDS[backend]
    dtype = getattr(torch, dtype)
    a = make_operand(40, 50, dtype, device)
    b = make_operand(50, 36, dtype, device)
    a[3, 7] = float("nan")
    a[10, 0] = float("inf")
    a[11, 5] = -float("inf")
    b[20, 30] = float("nan")
    grad_out = torch.randn(40, 36, dtype=dtype, device=device)
    grad_out[0, 0] = float("nan")
    out, grad_a, grad_b, _ = run(backend, fusedgrad.mm_relu, a, b, grad_out)
    assert out.isnan().any() and out.isinf().any() and out[3].isnan().all()
    check_against_float64(a, b, out, grad_a, grad_b, grad_out, str(dtype).removeprefix("torch."))


@pytest.mark.parametrize("backend", backend_cases())
def test_relu_gradient_is_zero_at_zero(backend):
    """A zero row of a gives an exactly-zero pre-activation row: relu'(0) = 0, as in torch."""
    device = BACKENDS[backend]
    a = make_operand(16, 24, torch.float32, device)
    a[5] = 0
    b = make_operand(24, 20, torch.float32, device)
    grad_out = torch.randn(16, 20, device=device)
    out, grad_a, grad_b, _ = run(backend, fusedgrad.mm_relu, a, b, grad_out)
    assert (out[5] == 0).all()
    assert (grad_a[5] == 0).all()
    check_against_float64(a, b, out, grad_a, grad_b, grad_out, "float32")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(0, 5, 6), (5, 0, 6), (5, 6, 0), (0, 0, 0)], ids=str)
@pytest.mark.parametrize("backend", backend_cases())
def test_empty_dimensions(backend, shape, op):
    M, K, N = shape
    fn, relu = OPS[op]
    device = BACKENDS[backend]
    a, b = torch.randn(M, K, device=device), torch.randn(K, N, device=device)
    out, grad_a, grad_b, grad_out = run(backend, fn, a, b)
    ref_out, ref_a, ref_b = relu_matmul_float64(a, b, grad_out, relu)
    for actual, reference in ((out, ref_out), (grad_a, ref_a), (grad_b, ref_b)):
        assert actual.shape == reference.shape
        assert torch.equal(actual.double().cpu(), reference)  # zeros where the sum is empty


@pytest.mark.parametrize("backend", backend_cases())
def test_gradients_accumulate(backend):
    a, b = leaves(BACKENDS[backend], 9, 19, 11)
    with fusedgrad.backend(backend):
        fusedgrad.mm_relu(a, b).sum().backward()
        first = a.grad.clone(), b.grad.clone()
        fusedgrad.mm_relu(a, b).sum().backward()
    torch.testing.assert_close(a.grad, 2 * first[0])
    torch.testing.assert_close(b.grad, 2 * first[1])


@pytest.mark.parametrize("needs", [(True, False), (False, True), (True, True)], ids=str)
@pytest.mark.parametrize("backend", backend_cases())
def test_saves_only_what_backward_needs(backend, needs):
    """Like torch.mm: b is saved for grad_a, a for grad_b, and the output for the ReLU mask, so a
    frozen weight keeps no activation alive."""
    a, b = leaves(BACKENDS[backend], 8, 16, 12, needs)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with fusedgrad.backend(backend):
            out = fusedgrad.mm_relu(a, b)
    expected = [t for t, need in ((a, needs[1]), (b, needs[0])) if need] + [out]
    assert sorted((s.data_ptr(), s.shape) for s in saved) == sorted((e.data_ptr(), e.shape) for e in expected)
    out.sum().backward()
    assert (a.grad is not None, b.grad is not None) == needs


@pytest.mark.parametrize("backend", backend_cases())
def test_autocast_follows_torch_mm(backend):
    """Under torch.autocast the products compute in autocast's dtype and return it, as torch.mm
    does, so the tutorial's forward runs (float32 weights, 16-bit activations), and the loss
    computes in float32; gradients reach the float32 leaves. (16-bit: float16, whose dots the
    interpreter gets right.)"""
    device = BACKENDS[backend]
    x, y = torch.randn(8, 24, device=device), torch.randn(8, 5, device=device)
    w1, w2 = leaves(device, 24, 16, 5)[0], leaves(device, 16, 5, 1)[0]
    with fusedgrad.backend(backend), torch.autocast(device, dtype=torch.float16):
        h = fusedgrad.mm_relu(x, w1)
        out = fusedgrad.mm(h, w2)
        loss = fusedgrad.mse_loss(out, y, reduction="sum")
    assert h.dtype == out.dtype == torch.float16 and loss.dtype == torch.float32
    loss.backward()
    assert w1.grad.dtype == w2.grad.dtype == torch.float32
    half = lambda t: t.detach().half().double().cpu()
    assert_close(h, (half(x) @ half(w1)).relu(), "float16")
    assert_close(out, half(h) @ half(w2), "float16")


@pytest.mark.parametrize("op", OPS)
def test_aten_backend_is_twice_differentiable(op):
    a = torch.randn(12, 9, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 7, dtype=torch.float64, requires_grad=True)
    with fusedgrad.backend("aten"):
        assert torch.autograd.gradcheck(OPS[op][0], (a, b))
        assert torch.autograd.gradgradcheck(OPS[op][0], (a, b))


def test_reference_masks_follow_threshold_backward():
    """relu'(out) is 0 where out <= 0 (so at 0 too) and 1 elsewhere, NaN included."""
    grad = torch.randn(4, 6, dtype=torch.float64)
    out = torch.tensor([0.0, -1.0, 2.0, float("nan"), float("inf"), -0.0], dtype=torch.float64).expand(4, 6)
    eye = torch.eye(6, dtype=torch.float64)
    expected = torch.ops.aten.threshold_backward(grad, out, 0)
    assert torch.equal(fusedgrad.matmul_reference(grad, eye, a_relu_mask=out), expected)
    assert torch.equal(fusedgrad.matmul_reference(eye[:4, :4], grad, b_relu_mask=out), expected)


# The Triton backend's own Function: which kernels it launches, with which settings.

@pytest.fixture
def kernel_calls(monkeypatch):
    """Keyword arguments of each call of the Triton matmul launcher the ops use."""
    kernels = fusedgrad.dispatch.load_kernels()
    calls = []
    launch = kernels.matmul_unchecked

    def counted(*args, **kwargs):
        arguments = inspect.signature(launch).bind(*args, **kwargs).arguments
        calls.append({name: value for name, value in arguments.items() if name not in ("a", "b")})
        return launch(*args, **kwargs)

    monkeypatch.setattr(kernels, "matmul_unchecked", counted)
    return calls


def triton_leaves(needs=(True, True)):
    return leaves(BACKENDS["triton"], 8, 16, 12, needs)


@pytest.mark.parametrize("needs", [(True, False), (False, True), (True, True)], ids=str)
def test_only_needed_gradients_are_computed(needs, kernel_calls):
    a, b = triton_leaves(needs)
    with fusedgrad.backend("triton"):
        fusedgrad.mm_relu(a, b).sum().backward()
    assert (a.grad is not None, b.grad is not None) == needs
    assert len(kernel_calls) == 1 + sum(needs)  # forward + one GEMM per needed gradient
    assert {k: v for k, v in kernel_calls[0].items() if not k.endswith("_mask") or v is not None} == {
        "relu": True, "fp32_precision": "ieee", "tuner": None}
    masks = [k for call in kernel_calls[1:] for k, v in call.items() if k.endswith("_mask") and v is not None]
    assert masks == [m for m, need in zip(["a_relu_mask", "b_relu_mask"], needs) if need]


def test_backend_of_forward_also_runs_backward(kernel_calls):
    a, b = triton_leaves()
    with fusedgrad.backend("triton"):
        out = fusedgrad.mm_relu(a, b)
    with fusedgrad.backend("aten"):
        out.sum().backward()
    assert len(kernel_calls) == 3


def test_settings_of_forward_also_run_backward(kernel_calls, tmp_path):
    """fusedgrad.fp32_precision and autotuning reach the kernels, and backward keeps the
    forward's settings (as autocast does), even when it runs after the block."""
    a, b = triton_leaves()
    with fusedgrad.backend("triton"), fusedgrad.fp32_precision("tf32x3"), fusedgrad.autotune(), \
            fusedgrad.cache_dir(tmp_path):
        out = fusedgrad.mm_relu(a, b)
    out.sum().backward()
    assert [call["fp32_precision"] for call in kernel_calls] == ["tf32x3"] * 3
    assert all(call["tuner"].path == tmp_path / "autotune.json" for call in kernel_calls)
    _, ref_a, ref_b = relu_matmul_float64(a, b, torch.ones(8, 12))
    assert_close(b.grad, ref_b, "tf32" if BACKENDS["triton"] == "cuda" else "float32")


def float64_leaves(a, b):
    return a.detach().double().cpu().requires_grad_(), b.detach().double().cpu().requires_grad_()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", backend_cases())
def test_gradient_penalty_matches_float64(backend, op):
    """Double backward: the gradient of a penalty on the first gradients (create_graph=True)
    equals float64 torch's, on both backends. With relu, the second derivatives flow through
    relu'(out) held fixed, as in torch."""
    fn, relu = OPS[op]
    device = BACKENDS[backend]
    a, b = leaves(device, 13, 21, 9)
    weight, probe = torch.randn(13, 9, device=device), torch.randn(21, 9, device=device)

    def penalized(a, b, product):
        grad_a, grad_b = torch.autograd.grad((product(a, b) * weight.to(a)).sum(), (a, b), create_graph=True)
        return grad_a.square().sum() + (grad_b * probe.to(a)).sum()

    with fusedgrad.backend(backend):
        penalized(a, b, fn).backward()
    a64, b64 = float64_leaves(a, b)
    penalized(a64, b64, lambda a, b: torch.relu(a @ b) if relu else a @ b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    assert_close(a.grad, a64.grad, "float32")
    assert_close(b.grad, b64.grad, "float32")


@pytest.mark.parametrize("backend", backend_cases())
def test_hessian_matches_float64(backend):
    """torch.autograd.functional.hessian of a loss through mm and mm_relu: not zero, torch's."""
    device = BACKENDS[backend]
    x, w2 = torch.randn(6, 5, device=device), torch.randn(4, 3, device=device)
    w1 = torch.randn(5, 4, device=device)

    def loss(w1, mm_relu, mm):
        return mm(mm_relu(x.to(w1), w1), w2.to(w1)).square().sum()

    with fusedgrad.backend(backend):
        hessian = torch.autograd.functional.hessian(lambda w: loss(w, fusedgrad.mm_relu, fusedgrad.mm), w1)
    expected = torch.autograd.functional.hessian(
        lambda w: loss(w, lambda a, b: torch.relu(a @ b), torch.mm), w1.double().cpu())
    assert hessian.shape == (5, 4, 5, 4) and expected.abs().sum() > 0
    assert_close(hessian, expected, "float32")


@pytest.mark.parametrize("side", ["a", "b", "out"])
def test_every_gated_product_is_twice_differentiable(side):
    """The Triton Function's three gated forms, each differentiated twice (a penalty on its
    first gradients), against float64 torch with the same fixed mask."""
    device = BACKENDS["triton"]
    a, b = leaves(device, 11, 17, 7)
    mask = torch.randn({"a": (11, 17), "b": (17, 7), "out": (11, 7)}[side], device=device)
    weight = torch.randn(11, 7, device=device)
    launch = fusedgrad.dispatch.Launch("triton", "ieee")

    def gate(t, where, mask):
        return t * (mask > 0).to(t) if where == side else t

    def penalized(a, b, product, mask):
        grad_a, grad_b = torch.autograd.grad((product(a, b, mask) * weight.to(a)).sum(), (a, b), create_graph=True)
        return grad_a.square().sum() + grad_b.square().sum()

    triton = lambda a, b, mask: fusedgrad.matmul.GemmFunction.apply(a, b, False, mask, side, launch)
    reference = lambda a, b, mask: gate(gate(a, "a", mask) @ gate(b, "b", mask), "out", mask)
    penalized(a, b, triton, mask).backward()
    a64, b64 = float64_leaves(a, b)
    penalized(a64, b64, reference, mask.double().cpu()).backward()
    assert_close(a.grad, a64.grad, "float32")
    assert_close(b.grad, b64.grad, "float32")
