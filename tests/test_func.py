"""torch.func over fusedgrad's ops, on both backends (Triton interpreted on CPU, compiled on
CUDA): `grad`, `vmap` (the row rule and the slice-by-slice rule), per-sample gradients
(`vmap(grad)`) and `functional_call`, against the same computation in float64 torch."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

import fusedgrad
from helpers import assert_close, kernel_device

BACKENDS = {"aten": "cpu", "triton": kernel_device()}


def torch_ops(x, w1, w2):
    return torch.relu(x @ w1) @ w2


def fused_ops(x, w1, w2):
    return fusedgrad.mm(fusedgrad.mm_relu(x, w1), w2)


def problem(device):
    return (torch.randn(8, 12, device=device), torch.randn(8, 3, device=device),
            torch.randn(12, 6, device=device), torch.randn(6, 3, device=device))


def float64(*tensors):
    return [t.double().cpu() for t in tensors]


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_and_per_sample_grads(backend):
    x, y, w1, w2 = problem(BACKENDS[backend])

    def loss(forward, loss_fn):
        return lambda w1, w2, x, y: loss_fn(forward(x, w1, w2), y, reduction="sum")

    ours, theirs = loss(fused_ops, fusedgrad.mse_loss), loss(torch_ops, torch.nn.functional.mse_loss)
    with fusedgrad.backend(backend):
        grads = grad(ours, argnums=(0, 1))(w1, w2, x, y)
        per_sample = vmap(grad(ours), in_dims=(None, None, 0, 0))(w1, w2, x[:, None], y[:, None])
    expected = grad(theirs, argnums=(0, 1))(*float64(w1, w2, x, y))
    expected_per_sample = vmap(grad(theirs), in_dims=(None, None, 0, 0))(*float64(w1, w2, x[:, None], y[:, None]))
    assert_close(grads[0], expected[0], "float32")
    assert_close(grads[1], expected[1], "float32")
    assert per_sample.shape == (8, 12, 6)
    assert_close(per_sample, expected_per_sample, "float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_rows_in_one_launch_and_other_batches_by_slices(backend, monkeypatch):
    """Batching over a's rows is one (batch * M, K) product on the Triton backend; batching b
    runs slice by slice. Both equal torch's."""
    x, _, w1, _ = problem(BACKENDS[backend])
    launches = []
    if backend == "triton":
        kernels = fusedgrad.dispatch.load_kernels()
        matmul = kernels.matmul_unchecked
        monkeypatch.setattr(kernels, "matmul_unchecked", lambda a, b, *args: launches.append(a.shape) or matmul(a, b, *args))
    xs, w1s = torch.randn(4, 8, 12, device=x.device), torch.randn(5, 12, 6, device=x.device)
    with fusedgrad.backend(backend):
        rows = vmap(lambda xi: fusedgrad.mm_relu(xi, w1))(xs)
        assert launches == ([(32, 12)] if backend == "triton" else [])
        slices = vmap(lambda wi: fusedgrad.mm_relu(x, wi))(w1s)
        losses = vmap(lambda xi: fusedgrad.mse_loss(xi, x))(xs)
    assert len(launches) == (1 + 5 if backend == "triton" else 0)
    assert_close(rows, torch.relu(xs.double() @ w1.double()), "float32")
    assert_close(slices, torch.relu(x.double() @ w1s.double()), "float32")
    assert_close(losses, (xs.double() - x.double()).square().mean((1, 2)), "float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_call_of_the_module(backend):
    x, y, _, _ = problem(BACKENDS[backend])
    net = fusedgrad.TwoLayerNet(12, 6, 3, device=x.device)
    params = {name: p.detach() for name, p in net.named_parameters()}
    with fusedgrad.backend(backend):
        grads = grad(lambda p: fusedgrad.mse_loss(functional_call(net, p, (x,)), y))(params)
    expected = grad(lambda w: torch.nn.functional.mse_loss(torch_ops(x.double().cpu(), *w), y.double().cpu()))(
        tuple(float64(params["w1"], params["w2"])))
    assert set(grads) == {"w1", "w2"}
    assert_close(grads["w1"], expected[0], "float32")
    assert_close(grads["w2"], expected[1], "float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batches(backend):
    """vmap over an empty batch gives empty outputs of the right shape, as torch's ops do."""
    x, _, _, _ = problem(BACKENDS[backend])
    with fusedgrad.backend(backend):
        empty = vmap(lambda wi: fusedgrad.mm(x, wi))(torch.randn(0, 12, 6, device=x.device))
        empty_loss = vmap(lambda xi: fusedgrad.mse_loss(xi, xi))(torch.randn(0, 5, 4, device=x.device))
    assert empty.shape == (0, 8, 6) and empty_loss.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_gradients_and_vectorized_hessian(backend):
    """`autograd.grad(..., is_grads_batched=True)` and `hessian(..., vectorize=True)` batch
    backward with torch's older vmap; on both backends they match float64 torch."""
    x, _, w1, w2 = problem(BACKENDS[backend])
    w = w1.clone().requires_grad_()
    cotangents = torch.randn(3, 8, 6, device=x.device)
    with fusedgrad.backend(backend):
        (batched,) = torch.autograd.grad(fusedgrad.mm_relu(x, w), w, cotangents, is_grads_batched=True)
    x64, w64 = float64(x, w)
    w64.requires_grad_()
    (expected,) = torch.autograd.grad(torch.relu(x64 @ w64), w64, cotangents.double().cpu(), is_grads_batched=True)
    assert_close(batched, expected, "float32")

    small_x, small_w, head = x[:, :4], w1[:4, :3].contiguous(), w2[:3, :2].contiguous()  # a 12 x 12 Hessian

    def loss(forward, loss_fn):
        return lambda w: loss_fn(forward(small_x.to(w), w, head.to(w)), torch.zeros(8, 2, device=w.device,
                                                                                    dtype=w.dtype), reduction="sum")

    with fusedgrad.backend(backend):
        hessian = torch.autograd.functional.hessian(loss(fused_ops, fusedgrad.mse_loss), small_w, vectorize=True)
    expected = torch.autograd.functional.hessian(loss(torch_ops, torch.nn.functional.mse_loss), small_w.double().cpu(),
                                                 vectorize=True)
    assert hessian.shape == (4, 3, 4, 3) and expected.abs().sum() > 0
    assert_close(hessian, expected, "float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_mode_jvp_jacfwd_and_hessian(backend):
    """Forward-mode AD through the ops' jvp rules: torch.func.jvp, jacfwd (= jacrev), the
    forward-over-reverse torch.func.hessian of the tutorial's loss, and a dual tensor of
    torch.autograd.forward_ad, all against float64 torch."""
    x, y, w1, w2 = problem(BACKENDS[backend])

    def loss(w1, x, w2, y, forward=fused_ops, loss_fn=fusedgrad.mse_loss):
        return loss_fn(forward(x, w1, w2), y, reduction="sum")

    def reference(w1, x, w2, y):
        return loss(w1, x, w2, y, torch_ops, torch.nn.functional.mse_loss)

    tangent = torch.randn_like(w1)
    with fusedgrad.backend(backend):
        _, derivative = torch.func.jvp(lambda w: loss(w, x, w2, y), (w1,), (tangent,))
        forward_jacobian = torch.func.jacfwd(lambda w: fused_ops(x, w, w2))(w1)
        hessian = torch.func.hessian(loss)(w1, x, w2, y)
        with torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(w1, tangent)
            dual_derivative = torch.autograd.forward_ad.unpack_dual(loss(dual, x, w2, y)).tangent
    x64, y64, w1_64, w2_64, tangent64 = float64(x, y, w1, w2, tangent)
    _, expected = torch.func.jvp(lambda w: reference(w, x64, w2_64, y64), (w1_64,), (tangent64,))
    # The derivative is one sum of gradient * tangent terms, which may cancel: relative to their size.
    terms = float(torch.func.grad(reference)(w1_64, x64, w2_64, y64).norm() * tangent64.norm())
    assert_close(derivative, expected, "float32", scale=terms)
    assert_close(dual_derivative, expected, "float32", scale=terms)
    assert_close(forward_jacobian, torch.func.jacrev(lambda w: torch_ops(x64, w, w2_64))(w1_64), "float32")
    expected_hessian = torch.func.hessian(reference)(w1_64, x64, w2_64, y64)
    assert expected_hessian.abs().sum() > 0
    assert_close(hessian, expected_hessian, "float32")
