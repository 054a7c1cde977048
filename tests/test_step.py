"""The fused training step: ATen reference against the tutorial loop, Triton (interpreted on
CPU, compiled on CUDA) against the reference, `TwoLayerNet`, and input checks."""

import copy

import pytest
import torch

import fusedgrad
from fusedgrad.train import TrainConfig, make_problem
from helpers import assert_close, kernel_device


def problem(device, batch=16, d_in=70, hidden=33, d_out=5, seed=0):
    config = TrainConfig(batch=batch, d_in=d_in, hidden=hidden, d_out=d_out, seed=seed)
    x, y, w1, w2 = make_problem(config, torch.device(device), torch.float32)
    return x, y, w1.detach(), w2.detach()


def tutorial_loop(x, y, w1, w2, lr, steps):
    """The tutorial's autograd loop in float64; returns the losses and the final weights."""
    w1, w2 = (w.double().cpu().requires_grad_() for w in (w1, w2))
    x, y = x.double().cpu(), y.double().cpu()
    losses = []
    for _ in range(steps):
        loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            w1 -= lr * w1.grad
            w2 -= lr * w2.grad
        w1.grad = w2.grad = None
    return losses, w1.detach(), w2.detach()


@pytest.mark.parametrize("backend, device", [("aten", "cpu"), ("triton", kernel_device())], ids=["aten", "triton"])
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_k_steps_match_the_tutorial_loop(backend, device, tensor_lr):
    x, y, w1, w2 = problem(device)
    lr = 1e-4
    ref_losses, ref_w1, ref_w2 = tutorial_loop(x, y, w1, w2, lr, steps=5)
    step_lr = torch.tensor(lr, device=device) if tensor_lr else lr
    with fusedgrad.backend(backend):
        losses = [fusedgrad.train_step(x, y, w1, w2, step_lr) for _ in range(5)]
    assert all(loss.shape == () and loss.dtype == torch.float32 for loss in losses)
    torch.testing.assert_close(torch.tensor([loss.item() for loss in losses], dtype=torch.float64),
                               torch.tensor(ref_losses, dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(w1.double().cpu(), ref_w1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w2.double().cpu(), ref_w2, rtol=1e-5, atol=1e-5)


def test_triton_step_with_many_tiles_matches_float64():
    """Shapes with several tiles in every GEMM and several loss partial sums."""
    x, y, w1, w2 = problem(kernel_device(), batch=70, d_in=45, hidden=66, d_out=40, seed=1)
    ref_losses, ref_w1, ref_w2 = tutorial_loop(x, y, w1, w2, 1e-4, steps=3)
    with fusedgrad.backend("triton"):
        losses = [fusedgrad.train_step(x, y, w1, w2, 1e-4).item() for _ in range(3)]
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    assert_close(w1, ref_w1, "float32")
    assert_close(w2, ref_w2, "float32")


def test_relu_mask_and_nan():
    """A zero row of x gives a zero hidden row (relu' = 0 there); NaN in x makes the loss NaN."""
    x, y, w1, w2 = problem(kernel_device())
    x[2] = 0
    ref = [t.cpu().clone() for t in (x, y, w1, w2)]
    with fusedgrad.backend("triton"):
        fusedgrad.train_step(x, y, w1, w2, 1e-3)
    fusedgrad.train_step_reference(*ref, 1e-3)
    torch.testing.assert_close(w1.cpu(), ref[2], rtol=1e-5, atol=1e-5)
    x[3, 1] = float("nan")
    with fusedgrad.backend("triton"):
        assert fusedgrad.train_step(x, y, w1, w2, 1e-3).isnan()


def test_two_layer_net():
    torch.manual_seed(0)
    net = fusedgrad.TwoLayerNet(30, 20, 4, generator=torch.Generator().manual_seed(3))
    assert net.w1.shape == (30, 20) and net.w2.shape == (20, 4)
    assert [name for name, _ in net.named_parameters()] == ["w1", "w2"]
    x, y = torch.randn(8, 30), torch.randn(8, 4)
    torch.testing.assert_close(net(x), torch.relu(x @ net.w1) @ net.w2)
    twin = copy.deepcopy(net)
    loss = net.train_step(x, y, 1e-3)
    expected = fusedgrad.train_step_reference(x, y, twin.w1.detach(), twin.w2.detach(), 1e-3)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(net.w1, twin.w1)
    assert net.w1.grad is None  # no autograd tape, no gradients


@pytest.mark.parametrize("change, error, message", [
    (lambda t: {**t, "y": t["y"][:, :2]}, ValueError, r"y is \(16, 2\), w2.T is \(5, 33\)"),
    (lambda t: {**t, "y": t["y"][:3]}, ValueError, "batch sizes differ"),
    (lambda t: {**t, "w2": t["w2"][:5]}, ValueError, r"w1 is \(70, 33\), w2 is \(5, 5\)"),
    (lambda t: {**t, "w2": t["w2"].double()}, TypeError, "w1 is torch.float32, w2 is torch.float64"),
    (lambda t: {**t, "x": t["x"][:, :0], "w1": t["w1"][:0]}, ValueError, "empty dimension"),
    (lambda t: {**t, "lr": torch.ones(2)}, ValueError, "train_step: a tensor lr must be a 0-d floating-point tensor"),
    (lambda t: {**t, "lr": "0.1"}, TypeError, "train_step: lr must be a number or a 0-d tensor, got str"),
    (lambda t: {**t, "lr": -1e-3}, ValueError, "train_step: lr must be finite and >= 0, got -0.001"),
])
def test_bad_input_changes_nothing(change, error, message):
    x, y, w1, w2 = problem("cpu")
    args = change(dict(x=x, y=y, w1=w1, w2=w2, lr=1e-3))
    before = [w1.clone(), w2.clone()]
    with pytest.raises(error, match=message):
        fusedgrad.train_step(**args)
    assert torch.equal(w1, before[0]) and torch.equal(w2, before[1])


def test_settings_reach_the_fused_step(monkeypatch, tmp_path):
    kernels = fusedgrad.dispatch.load_kernels()
    seen = []
    step = kernels.two_layer_sgd_step
    monkeypatch.setattr(kernels, "two_layer_sgd_step", lambda *args: seen.append(args[-2:]) or step(*args))
    x, y, w1, w2 = problem(kernel_device())
    with fusedgrad.backend("triton"):
        fusedgrad.train_step(x, y, w1, w2, 1e-4)
        with fusedgrad.fp32_precision("tf32x3"), fusedgrad.autotune(), fusedgrad.cache_dir(tmp_path):
            fusedgrad.train_step(x, y, w1, w2, 1e-4)
    assert seen[0] == ("ieee", None)
    assert seen[1][0] == "tf32x3" and seen[1][1].path == tmp_path / "autotune.json"


def test_the_step_ignores_autocast():
    """The fused step updates its weights in place in their own dtype, so autocast does not
    apply to it (on ATen, autocast would make the forward's mm bfloat16 and the update fail)."""
    x, y, w1, w2 = problem("cpu")
    ref = [t.clone() for t in (x, y, w1, w2)]
    with torch.autocast("cpu", dtype=torch.bfloat16), fusedgrad.backend("aten"):
        loss = fusedgrad.train_step(x, y, w1, w2, 1e-4)
    expected = fusedgrad.train_step_reference(*ref, 1e-4)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(w1, ref[2])


def square_problem(device, size=40):
    """x, y, w1, w2 all (size, size), so that any of them may stand in for another; several
    output tiles per GEMM, so a read after another tile's write would show."""
    return [torch.randn(size, size, device=device) for _ in range(4)]


# name -> the call's (x, y, w1, w2, lr), made from fresh square tensors and lr: where x, y or lr
# share memory with a weight, the step must give what it gives on copies of them.
SHARED = {
    "x is w1": lambda x, y, w1, w2, lr: (w1, y, w1, w2, lr),
    "x is w1.T": lambda x, y, w1, w2, lr: (w1.T, y, w1, w2, lr),
    "x is w2": lambda x, y, w1, w2, lr: (w2, y, w1, w2, lr),
    "x overlaps w1": lambda x, y, w1, w2, lr: (lambda buffer: (buffer[20:60], y, buffer[:40], w2, lr))(
        torch.cat([w1, x])),
    "y is w2": lambda x, y, w1, w2, lr: (x, w2, w1, w2, lr),
    "y is w1": lambda x, y, w1, w2, lr: (x, w1, w1, w2, lr),
    "lr in w2": lambda x, y, w1, w2, lr: (x, y, w1, w2, w2[3, 5]),
}


@pytest.mark.parametrize("case", SHARED)
@pytest.mark.parametrize("backend, device", [("aten", "cpu"), ("triton", kernel_device())], ids=["aten", "triton"])
def test_inputs_sharing_memory_with_a_weight_give_the_step_on_copies(backend, device, case):
    x, y, w1, w2 = square_problem(device)
    w2[3, 5] = 1e-3  # a usable rate where the lr case reads one
    x, y, w1, w2, lr = SHARED[case](x, y, w1, w2, 1e-3)
    copies = [t.clone() for t in (x, y, w1, w2)] + [lr.clone() if isinstance(lr, torch.Tensor) else lr]
    with fusedgrad.backend(backend):
        expected = fusedgrad.train_step(*copies)
        loss = fusedgrad.train_step(x, y, w1, w2, lr)
    assert torch.equal(loss, expected)
    assert torch.equal(w1, copies[2]) and torch.equal(w2, copies[3])


@pytest.mark.parametrize("backend, device", [("aten", "cpu"), ("triton", kernel_device())], ids=["aten", "triton"])
def test_weights_in_one_buffer_without_common_elements_are_accepted(backend, device):
    """w1 and w2 as column blocks of one (40, 80) buffer: their address ranges interleave, their
    elements do not, so the step runs, and gives the step on separate copies."""
    x, y = torch.randn(40, 40, device=device), torch.randn(40, 40, device=device)
    buffer = torch.randn(40, 80, device=device)
    w1, w2 = buffer[:, :40], buffer[:, 40:]
    copies = [x.clone(), y.clone(), w1.clone(), w2.clone()]
    with fusedgrad.backend(backend):
        expected = fusedgrad.train_step(*copies, 1e-3)
        loss = fusedgrad.train_step(x, y, w1, w2, 1e-3)
    assert torch.equal(loss, expected) and torch.equal(w1, copies[2]) and torch.equal(w2, copies[3])
