"""`fusedgrad.mse_loss`: ATen and Triton (interpreted on CPU, compiled on CUDA) against
float64 `torch.nn.functional.mse_loss`."""

import pytest
import torch
import torch.nn.functional as F

import fusedgrad
from helpers import assert_close, kernel_device

BACKENDS = [("aten", "cpu"), ("triton", kernel_device())]


def float64_reference(input, target, reduction, grad_loss):
    input64 = input.detach().double().cpu().requires_grad_()
    loss = F.mse_loss(input64, target.double().cpu(), reduction=reduction)
    loss.backward(grad_loss.double().cpu())
    return loss.detach(), input64.grad


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("shape", [(64, 10), (1,), (3, 5, 7), (300, 301)], ids=str)  # 300 x 301: multi-program
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_matches_float64(backend, device, dtype, shape, reduction):
    # scaled by 1/4 so that a float16 sum over 90,000 elements stays finite
    input = (0.25 * torch.randn(shape, device=device)).to(getattr(torch, dtype)).requires_grad_()
    target = (0.25 * torch.randn(shape, device=device)).to(getattr(torch, dtype))
    with fusedgrad.backend(backend):
        loss = fusedgrad.mse_loss(input, target, reduction=reduction)
    grad_loss = torch.tensor(3.5, dtype=loss.dtype, device=device)  # an upstream gradient other than 1
    loss.backward(grad_loss)
    ref_loss, ref_grad = float64_reference(input, target, reduction, grad_loss)
    assert loss.shape == () and loss.dtype == input.dtype
    assert_close(loss, ref_loss, dtype)
    assert_close(input.grad, ref_grad, dtype)


@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_target_gradient_and_nan(backend, device):
    input = torch.randn(20, 7, device=device, requires_grad=True)
    target = torch.randn(20, 7, device=device, requires_grad=True)
    with fusedgrad.backend(backend):
        fusedgrad.mse_loss(input, target).backward()
    torch.testing.assert_close(target.grad, -input.grad)
    nan_input = input.detach().clone()
    nan_input[3, 4] = float("nan")
    with fusedgrad.backend(backend):
        assert fusedgrad.mse_loss(nan_input, target.detach()).isnan()


@pytest.mark.parametrize("layout", ["sliced row", "expanded row", "transposed", "sliced"])
@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_strided_inputs(backend, device, layout):
    """Any strides, including those a 1-D view can describe only with a stride other than 1 (a
    single row of a sliced or an expanded tensor)."""
    rows = 1 if layout.endswith("row") else 6
    wide = torch.randn(rows, 11, device=device)
    strided = {"sliced row": wide[:, 1::2], "expanded row": wide[:, :1].expand(rows, 5),
               "transposed": torch.randn(5, rows, device=device).T, "sliced": wide[:, 1::2]}[layout]
    input = torch.randn(rows, 5, device=device)
    for input, target in ((input, strided), (strided.clone(), input)):
        input = input.clone().requires_grad_() if input.is_contiguous() else input.detach().requires_grad_()
        with fusedgrad.backend(backend):
            loss = fusedgrad.mse_loss(input, target, reduction="sum")
        loss.backward(torch.tensor(1.0, device=device))
        ref_loss, ref_grad = float64_reference(input, target, "sum", torch.tensor(1.0))
        assert_close(loss, ref_loss, "float32")
        assert_close(input.grad, ref_grad, "float32")


def test_triton_loss_is_bitwise_deterministic():
    input = torch.randn(300, 301, device=kernel_device())  # several partial sums
    target = torch.randn(300, 301, device=kernel_device())
    with fusedgrad.backend("triton"):
        losses = [fusedgrad.mse_loss(input, target) for _ in range(3)]
    assert all(torch.equal(loss, losses[0]) for loss in losses)


def test_triton_mean_of_empty_is_nan_like_torch():
    empty = torch.randn(0, 4, device=kernel_device())
    with fusedgrad.backend("triton"):
        assert fusedgrad.mse_loss(empty, empty, reduction="mean").isnan()
        assert fusedgrad.mse_loss(empty, empty, reduction="sum") == 0


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((torch.randn(3), torch.randn(4)), {}, ValueError, r"input \(3,\), target \(4,\)"),
    ((torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64)), {}, TypeError, "torch.int64"),
    ((torch.randn(3), torch.randn(3)), {"reduction": "max"}, ValueError, "one of mean, sum, none, got 'max'"),
    ((torch.randn(3), torch.randn(3, device="meta")), {}, ValueError, "cpu, target on meta"),
])
def test_bad_input(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        fusedgrad.mse_loss(*args, **kwargs)


def test_signature_and_default_are_torchs():
    """F.mse_loss's parameters in F.mse_loss's order, and its default: the mean."""
    import inspect
    ours, theirs = inspect.signature(fusedgrad.mse_loss), inspect.signature(F.mse_loss)
    assert list(ours.parameters) == list(theirs.parameters)
    assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()]
    input, target = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(fusedgrad.mse_loss(input, target), F.mse_loss(input, target))
    with pytest.warns(UserWarning, match="deprecated"):  # as torch, the legacy flags still choose
        torch.testing.assert_close(fusedgrad.mse_loss(input, target, size_average=False),
                                   F.mse_loss(input, target, reduction="sum"))


@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_none_weight_promotion_and_autocast_follow_torch(backend, device):
    input = torch.randn(4, 6, device=device, dtype=torch.float16, requires_grad=True)
    target = torch.randn(4, 6, device=device)
    with fusedgrad.backend(backend):
        elementwise = fusedgrad.mse_loss(input, target, reduction="none")
        promoted = fusedgrad.mse_loss(input, target)  # float16 with float32: float32, as torch
        with torch.autocast(device, dtype=torch.bfloat16):
            under_autocast = fusedgrad.mse_loss(input.to(torch.bfloat16), target.to(torch.bfloat16))
    expected = F.mse_loss(input.detach().float().cpu(), target.cpu(), reduction="none")
    assert elementwise.dtype == torch.float32 and elementwise.shape == (4, 6)
    torch.testing.assert_close(elementwise.cpu(), expected)
    assert promoted.dtype == torch.float32 == F.mse_loss(input.detach().cpu(), target.cpu()).dtype
    torch.testing.assert_close(promoted.cpu(), expected.mean())
    promoted.backward()
    assert input.grad.dtype == torch.float16  # the cast is differentiable: the leaf gets its own dtype
    assert under_autocast.dtype == torch.float32  # autocast's float32 list, as F.mse_loss



@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_second_derivatives_match_float64(backend, device, reduction):
    """Double backward through the loss: a penalty on d loss / d (input, target), and the
    Hessian of the loss of a linear model, equal float64 torch's (not zero)."""
    input = torch.randn(6, 4, device=device, requires_grad=True)
    target = torch.randn(6, 4, device=device, requires_grad=True)

    def penalty(input, target, loss_fn):
        grad_input, grad_target = torch.autograd.grad(loss_fn(input, target, reduction=reduction),
                                                      (input, target), create_graph=True)
        return (grad_input * torch.arange(24.0).reshape(6, 4).to(input)).sum() + grad_target.square().sum()

    with fusedgrad.backend(backend):
        penalty(input, target, fusedgrad.mse_loss).backward()
    input64, target64 = (t.detach().double().cpu().requires_grad_() for t in (input, target))
    penalty(input64, target64, F.mse_loss).backward()
    assert_close(input.grad, input64.grad, "float32")
    assert_close(target.grad, target64.grad, "float32")

    x, y = torch.randn(5, 3, device=device), torch.randn(5, 2, device=device)
    with fusedgrad.backend(backend):
        hessian = torch.autograd.functional.hessian(
            lambda w: fusedgrad.mse_loss(x @ w, y, reduction=reduction), torch.randn(3, 2, device=device))
    expected = torch.autograd.functional.hessian(
        lambda w: F.mse_loss(x.double().cpu() @ w, y.double().cpu(), reduction=reduction),
        torch.zeros(3, 2, dtype=torch.float64))  # a quadratic: the same Hessian everywhere
    assert expected.abs().sum() > 0
    assert_close(hessian, expected, "float32")
