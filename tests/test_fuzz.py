"""The fuzz tier: property-based tests (hypothesis) of every public op and the fused step
against float64 references, on ATen and on the Triton kernels (interpreted on CPU, compiled on
CUDA).

Each example draws sizes (0, 1 and odd ones among them), a dtype, a layout per tensor
(contiguous, transposed, sliced, offset into a larger buffer, and for tensors an op only reads
also expanded rows or columns) and values: standard normal with NaN, +-Inf, 0 and -0.0 dropped
into random places. The default profile is seeded (`derandomize`), so CI sees the same examples
on every run; FUSEDGRAD_FUZZ=long runs many more examples from fresh seeds.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedgrad
from fusedgrad import kernels
from helpers import assert_close, kernel_device, relu_matmul_float64

PROFILE = os.environ.get("FUSEDGRAD_FUZZ", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"FUSEDGRAD_FUZZ must be ci or long, got {PROFILE!r}")
EXAMPLES = {"ci": {"aten": 300, "triton": 40}, "long": {"aten": 5000, "triton": 600}}[PROFILE]
BACKENDS = {"aten": "cpu", "triton": kernel_device()}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
SPECIALS = (math.nan, math.inf, -math.inf, 0.0, -0.0)
WRITABLE = ("contiguous", "transposed", "sliced", "offset")  # layouts an in-place update can write
READABLE = WRITABLE + ("expanded rows", "expanded columns")  # and those an op can only read

sizes = st.one_of(st.sampled_from([0, 1, 2, 3, 16, 17]), st.integers(0, 40))
positive_sizes = st.one_of(st.sampled_from([1, 2, 3, 16, 17]), st.integers(1, 24))


def fuzz(backend: str):
    """The examples of one backend under the profile in force; hypothesis keeps no database
    (CI starts clean) and no deadline (the interpreter's speed varies)."""
    return settings(max_examples=EXAMPLES[backend], derandomize=PROFILE == "ci", database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def values(data, shape, dtype, specials=True) -> torch.Tensor:
    """A contiguous CPU tensor of `shape`: seeded standard normal, some entries special."""
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    t = torch.randn(shape, generator=generator, dtype=torch.float64)
    if specials and t.numel():
        for place, special in data.draw(st.lists(st.tuples(st.integers(0, 2**20), st.sampled_from(SPECIALS)),
                                                 max_size=3), label="specials"):
            t.view(-1)[place % t.numel()] = special
    return t.to(dtype)


def laid_out(t: torch.Tensor, layout: str, device) -> torch.Tensor:
    """`t` (2-D) on `device`, stored as `layout`: the same values where the layout can hold them
    (an expanded layout repeats t's first row or column)."""
    t = t.to(device)
    rows, cols = t.shape
    if layout == "contiguous":
        return t
    if layout == "transposed":
        return t.T.contiguous().T
    if layout == "sliced":
        wide = torch.zeros(rows, 2 * cols + 1, dtype=t.dtype, device=device)
        wide[:, 1::2] = t
        return wide[:, 1::2]
    if layout == "offset":
        flat = torch.zeros(t.numel() + 3, dtype=t.dtype, device=device)
        flat[3:] = t.reshape(-1)
        return flat[3:].view(rows, cols)
    if layout == "expanded rows":
        return t[:1].expand(rows, cols)
    if layout == "expanded columns":
        return t[:, :1].expand(rows, cols)
    raise ValueError(layout)


def matrix(data, rows, cols, dtype, device, layouts=READABLE, specials=True) -> torch.Tensor:
    return laid_out(values(data, (rows, cols), dtype, specials), data.draw(st.sampled_from(layouts), label="layout"),
                    device)


def dtype_of(data) -> str:
    return data.draw(st.sampled_from(list(DTYPES)), label="dtype")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mm_and_mm_relu_match_float64(backend):
    @fuzz(backend)
    @given(data=st.data(), relu=st.booleans())
    def check(data, relu):
        device, name = BACKENDS[backend], dtype_of(data)
        M, K, N = data.draw(sizes, label="M"), data.draw(sizes, label="K"), data.draw(sizes, label="N")
        a = matrix(data, M, K, DTYPES[name], device).requires_grad_()
        b = matrix(data, K, N, DTYPES[name], device).requires_grad_()
        grad_out = matrix(data, M, N, DTYPES[name], device)
        with fusedgrad.backend(backend):
            out = (fusedgrad.mm_relu if relu else fusedgrad.mm)(a, b)
            out.backward(grad_out)
        assert out.dtype == a.dtype and out.shape == (M, N)
        reference, ref_a, ref_b = relu_matmul_float64(a, b, grad_out, relu, mask_from=out)
        assert_close(out, reference.to(out.dtype), name)
        assert_close(a.grad, ref_a.to(a.dtype), name)
        assert_close(b.grad, ref_b.to(b.dtype), name)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_loss_matches_float64(backend):
    @fuzz(backend)
    @given(data=st.data(), reduction=st.sampled_from(["mean", "sum", "none"]))
    def check(data, reduction):
        device, name = BACKENDS[backend], dtype_of(data)
        rows, cols = data.draw(sizes, label="rows"), data.draw(sizes, label="cols")
        input = matrix(data, rows, cols, DTYPES[name], device, layouts=WRITABLE).requires_grad_()
        target = matrix(data, rows, cols, DTYPES[name], device)
        with fusedgrad.backend(backend):
            loss = fusedgrad.mse_loss(input, target, reduction=reduction)
            grad_loss = values(data, loss.shape, loss.dtype, specials=False).to(device)
            loss.backward(grad_loss)
        input64 = input.detach().double().cpu().requires_grad_()
        reference = F.mse_loss(input64, target.double().cpu(), reduction=reduction)
        reference.backward(grad_loss.double().cpu())
        assert loss.dtype == input.dtype and loss.shape == reference.shape
        assert_close(loss, reference.to(loss.dtype), name)
        assert_close(input.grad, input64.grad.to(input.dtype), name)

    check()


def tutorial_step_float64(x, y, w1, w2, lr):
    """The tutorial's step by torch autograd in float64: (loss, new w1, new w2)."""
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    w1, w2 = (w.detach().double().cpu().requires_grad_() for w in (w1, w2))
    loss = (torch.relu(x @ w1) @ w2 - y).pow(2).sum()
    loss.backward()
    return loss.detach(), (w1 - lr * w1.grad).detach(), (w2 - lr * w2.grad).detach()


def step_magnitudes(x, y, w1, w2, lr) -> tuple[float, float, float]:
    """The norms that the step's loss, w1 and w2 are computed to within rounding of: each
    quantity of the step with every term taken by its absolute value (Inf and NaN as 0), so that
    results whose terms cancel (a loss near zero, a weight its update nearly zeroes) are held to
    the rounding of their terms, which is all the step's 16-bit intermediates allow."""
    x, y, w1, w2 = (torch.nan_to_num(t.detach().double().cpu(), nan=0.0, posinf=0.0, neginf=0.0).abs()
                    for t in (x, y, w1, w2))
    hidden = x @ w1
    difference = hidden @ w2 + y
    grad_hidden = 2 * difference @ w2.T
    return ((difference**2).sum().item(), (w1 + lr * x.T @ grad_hidden).norm().item(),
            (w2 + lr * hidden.T @ (2 * difference)).norm().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_matches_float64(backend):
    @fuzz(backend)
    @given(data=st.data(), lr=st.sampled_from([0.0, 1e-3, 0.1]), tensor_lr=st.booleans())
    def check(data, lr, tensor_lr):
        device, name = BACKENDS[backend], dtype_of(data)
        dtype = DTYPES[name]
        n, d_in, hidden, d_out = (data.draw(positive_sizes, label=label) for label in ("N", "D_in", "H", "D_out"))
        x = matrix(data, n, d_in, dtype, device)
        y = matrix(data, n, d_out, dtype, device)
        w1 = matrix(data, d_in, hidden, dtype, device, layouts=WRITABLE)
        w2 = matrix(data, hidden, d_out, dtype, device, layouts=WRITABLE)
        # The float64 step on copies: its rate as the step reads it (a float32 tensor rounds it).
        rate = torch.tensor(lr, device=device) if tensor_lr else lr
        rate64 = float(rate) if tensor_lr else lr
        ref_loss, ref_w1, ref_w2 = tutorial_step_float64(x, y, w1, w2, rate64)
        w1_before, w2_before = w1.detach().double().cpu(), w2.detach().double().cpu()
        with fusedgrad.backend(backend):
            loss = fusedgrad.train_step(x, y, w1, w2, rate)
        loss_scale, w1_scale, w2_scale = step_magnitudes(x, y, w1_before, w2_before, rate64)
        assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and loss.shape == ()
        assert_close(loss, ref_loss.to(loss.dtype), name, loss_scale)
        assert_close(w1, ref_w1.to(dtype), name, w1_scale)
        assert_close(w2, ref_w2.to(dtype), name, w2_scale)

    check()


def sgd_settings(data) -> dict:
    """torch.optim.SGD settings for one group: each drawn, Nesterov where it is allowed."""
    momentum = data.draw(st.sampled_from([0.0, 0.9]), label="momentum")
    nesterov = momentum > 0 and data.draw(st.booleans(), label="nesterov")
    return dict(momentum=momentum, nesterov=nesterov,
                dampening=0.0 if nesterov else data.draw(st.sampled_from([0.0, 0.3]), label="dampening"),
                weight_decay=data.draw(st.sampled_from([0.0, 0.01]), label="weight_decay"),
                maximize=data.draw(st.booleans(), label="maximize"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_step_matches_float64(backend):
    """Several parameter groups, each with its own dtype, rate (a number or a tensor) and
    settings, two steps (a momentum buffer's first and second), against torch.optim.SGD in
    float64 from the same values."""
    @fuzz(backend)
    @given(data=st.data(), groups=st.integers(1, 3))
    def check(data, groups):
        device = BACKENDS[backend]
        param_groups, reference_groups, pairs = [], [], []
        for _ in range(groups):
            name = dtype_of(data)
            lr = data.draw(st.sampled_from([0.0, 1e-3, 0.5]), label="lr")
            rate = torch.tensor(lr, device=device) if data.draw(st.booleans(), label="tensor lr") else lr
            settings = sgd_settings(data)
            params, references = [], []
            for _ in range(data.draw(st.integers(1, 3), label="parameters")):
                rows, cols = data.draw(sizes, label="rows"), data.draw(sizes, label="cols")
                param = torch.nn.Parameter(matrix(data, rows, cols, DTYPES[name], device, layouts=WRITABLE,
                                                  specials=False))
                params.append(param)
                references.append(torch.nn.Parameter(param.detach().double().cpu()))
                pairs.append((param, references[-1], name, rows, cols))
            param_groups.append({"params": params, "lr": rate, **settings})
            reference_groups.append({"params": references, "lr": lr, **settings})
        ours, theirs = fusedgrad.optim.SGD(param_groups), torch.optim.SGD(reference_groups)
        for _ in range(2):
            for param, reference, name, rows, cols in pairs:
                param.grad = matrix(data, rows, cols, DTYPES[name], device)
                reference.grad = param.grad.double().cpu()
            with fusedgrad.backend(backend):
                ours.step()
            theirs.step()
            for param, reference, name, _, _ in pairs:  # the next step starts from the same values
                assert_close(param, reference.detach().to(param.dtype), name)
                reference.data.copy_(param.detach().double().cpu())
                if param in ours.state:
                    theirs.state[reference]["momentum_buffer"].copy_(ours.state[param]["momentum_buffer"].double())

    check()


def test_kernels_matmul_with_each_gate_matches_float64():
    """The Triton launcher itself (the family the ops' backward is made of) against its ATen
    twin in float64: relu, or a relu' mask on a, on b or on the product."""
    @fuzz("triton")
    @given(data=st.data(), gate=st.sampled_from([None, "relu", "a_relu_mask", "b_relu_mask", "out_relu_mask"]))
    def check(data, gate):
        device, name = BACKENDS["triton"], dtype_of(data)
        M, K, N = data.draw(sizes, label="M"), data.draw(sizes, label="K"), data.draw(sizes, label="N")
        a = matrix(data, M, K, DTYPES[name], device)
        b = matrix(data, K, N, DTYPES[name], device)
        shapes = {"a_relu_mask": (M, K), "b_relu_mask": (K, N), "out_relu_mask": (M, N)}
        options = {"relu": True} if gate == "relu" else {}
        if gate in shapes:
            options[gate] = matrix(data, *shapes[gate], DTYPES[name], device)
        out = kernels.matmul(a, b, **options)
        reference = fusedgrad.matmul_reference(a.double().cpu(), b.double().cpu(),
                                               **{key: value.double().cpu() if isinstance(value, torch.Tensor)
                                                  else value for key, value in options.items()})
        assert out.dtype == a.dtype and out.is_contiguous()
        assert_close(out, reference.to(out.dtype), name)

    check()
