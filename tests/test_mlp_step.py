"""`MLP.train_step`, the fused step of any MLP, on both backends against k steps of the eager
loop: float64 `nn.Sequential` + `F.mse_loss` + `torch.optim.SGD`, with every SGD setting,
depths 1, 2, 3 and 5, both reductions; the optimizer's state shared with its own steps and
loadable into torch's; launch counts; refusals."""

import copy

import pytest
import torch
import torch.nn.functional as F

import fusedgrad
from helpers import assert_close, kernel_device, torch_mlp_twin as eager_twin

BACKENDS = {"aten": "cpu", "triton": kernel_device()}
RULES = {"plain": {}, "momentum": dict(momentum=0.9), "nesterov": dict(momentum=0.9, nesterov=True, weight_decay=0.01),
         "dampened": dict(momentum=0.5, dampening=0.3, maximize=True, weight_decay=0.1)}
DEPTHS = {1: [5, 3], 2: [5, 8, 3], 3: [5, 8, 7, 4], 5: [6, 9, 8, 7, 5, 3]}


def eager_step(model, optimizer, x, target, reduction, loss="mse"):
    optimizer.zero_grad()
    criterion = F.mse_loss if loss == "mse" else F.cross_entropy
    loss = criterion(model(x), target, reduction=reduction)
    loss.backward()
    optimizer.step()
    return loss.detach()


def draw_target(loss, rows, classes, device, dtype=torch.float64):
    if loss == "mse":
        return torch.randn(rows, classes, device=device, dtype=dtype)
    return torch.randint(0, classes, (rows,), device=device)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_equal_the_eager_loop_in_float64(backend, depth, rule, reduction, loss):
    device, sizes = BACKENDS[backend], DEPTHS[depth]
    model = fusedgrad.nn.MLP(sizes, bias=depth != 3, device=device, dtype=torch.float64)
    reference = eager_twin(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, **RULES[rule])
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, **RULES[rule])
    for _ in range(3):
        x = torch.randn(7, sizes[0], device=device, dtype=torch.float64)
        target = draw_target(loss, 7, sizes[-1], device)
        with fusedgrad.backend(backend):
            step_loss = model.train_step(x, target, optimizer, loss=loss, reduction=reduction)
        reference_loss = eager_step(reference, reference_optimizer, x.cpu(), target.cpu(), reduction, loss)
        assert step_loss.dtype == torch.float64 and step_loss.shape == ()
        assert_close(step_loss, reference_loss, "float64")
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert_close(ours, theirs, "float64")
    for ours, theirs in zip(optimizer.state_dict()["state"].values(), reference_optimizer.state_dict()["state"].values()):
        assert_close(ours["momentum_buffer"], theirs["momentum_buffer"], "float64")
    assert len(optimizer.state) == (len(list(model.parameters())) if RULES[rule] and "momentum" in RULES[rule] else 0)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_16_and_32_bit_steps_on_triton(dtype, loss):
    """One step of each dtype against float64 from the same parameters: the loss (float32 for
    16-bit models) and the parameters after it."""
    device, dtype_ = BACKENDS["triton"], getattr(torch, dtype)
    model = fusedgrad.nn.MLP([16, 32, 16, 8], device=device, dtype=dtype_)
    reference = eager_twin(model)
    rule = dict(lr=0.5, momentum=0.9, weight_decay=0.01)
    optimizer, reference_optimizer = (torch.optim.SGD(model.parameters(), **rule),
                                      torch.optim.SGD(reference.parameters(), **rule))
    x, target = torch.randn(16, 16, device=device, dtype=dtype_), draw_target(loss, 16, 8, device, dtype_)
    with fusedgrad.backend("triton"):
        step_loss = model.train_step(x, target, optimizer, loss=loss)
    reference_target = target.double().cpu() if loss == "mse" else target.cpu()
    reference_loss = eager_step(reference, reference_optimizer, x.double().cpu(), reference_target, "mean", loss)
    assert step_loss.dtype == torch.float32
    assert_close(step_loss, reference_loss, dtype)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert ours.dtype == dtype_
        # Three times a product's bound: a step also rounds each layer's gradient and the
        # updated parameter to the dtype.
        assert_close(ours, theirs, dtype, scale=3 * theirs.double().norm().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_with_autograd_steps_and_torch_state(backend):
    """Fused steps and the optimizer's own steps share its momentum buffers; its state_dict
    then loads into torch.optim.SGD, which carries on alike."""
    device = BACKENDS[backend]
    model = fusedgrad.nn.MLP([5, 8, 3], device=device, dtype=torch.float64)
    reference = eager_twin(model)
    rule = dict(lr=0.05, momentum=0.9, nesterov=True)
    optimizer = fusedgrad.optim.SGD(model.parameters(), **rule)
    reference_optimizer = torch.optim.SGD(reference.parameters(), **rule)
    for step in range(4):
        x, target = (torch.randn(6, n, device=device, dtype=torch.float64) for n in (5, 3))
        with fusedgrad.backend(backend):
            if step % 2 == 0:
                model.train_step(x, target, optimizer)
            else:
                eager_step(model, optimizer, x, target, "mean")
        eager_step(reference, reference_optimizer, x.cpu(), target.cpu(), "mean")
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert_close(ours, theirs, "float64")
    carried_on = torch.optim.SGD(model.parameters(), **rule)
    carried_on.load_state_dict(optimizer.state_dict())
    x, target = (torch.randn(6, n, device=device, dtype=torch.float64) for n in (5, 3))
    eager_step(model, carried_on, x, target, "mean")
    eager_step(reference, reference_optimizer, x.cpu(), target.cpu(), "mean")
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert_close(ours, theirs, "float64")


@pytest.mark.parametrize("backend", BACKENDS)
def test_biases_in_a_group_of_their_own(backend, monkeypatch):
    """Biases with their own rate and no weight decay, as is common; on Triton 3L - 1 GEMM
    launches and one bias launch for L layers."""
    device = BACKENDS[backend]
    model = fusedgrad.nn.MLP([5, 8, 7, 3], device=device, dtype=torch.float64)
    reference = eager_twin(model)

    def groups(module):
        weights = [p for name, p in module.named_parameters() if name.endswith("weight")]
        biases = [p for name, p in module.named_parameters() if name.endswith("bias")]
        return [dict(params=weights, weight_decay=0.05), dict(params=biases, lr=0.2)]

    optimizer = torch.optim.SGD(groups(model), lr=0.05, momentum=0.8)
    reference_optimizer = torch.optim.SGD(groups(reference), lr=0.05, momentum=0.8)
    kernels = fusedgrad.dispatch.load_kernels() if backend == "triton" else None
    launches = []
    if kernels is not None:
        for module, name in ((kernels.gemm, "launch"), (kernels.sgd, "sgd_step_unchecked")):
            original = getattr(module, name)
            monkeypatch.setattr(module, name, lambda *a, original=original, name=name, **k:
                                launches.append(name) or original(*a, **k))
    for _ in range(2):
        x, target = (torch.randn(6, n, device=device, dtype=torch.float64) for n in (5, 3))
        with fusedgrad.backend(backend):
            model.train_step(x, target, optimizer, reduction="sum")
        eager_step(reference, reference_optimizer, x.cpu(), target.cpu(), "sum")
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert_close(ours, theirs, "float64")
    if kernels is not None:
        assert launches == (["launch"] * 8 + ["sgd_step_unchecked"]) * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_tutorial_is_the_special_case(backend):
    """MLP([d_in, hidden, d_out], bias=False) with plain SGD on the summed loss takes the
    tutorial step's update (its weights transposed: nn.Linear's layout)."""
    device = BACKENDS[backend]
    model = fusedgrad.nn.MLP([10, 6, 4], bias=False, device=device, dtype=torch.float64)
    w1, w2 = model[0].weight.detach().T.clone(), model[1].weight.detach().T.clone()
    x, y = torch.randn(5, 10, device=device, dtype=torch.float64), torch.randn(5, 4, device=device, dtype=torch.float64)
    with fusedgrad.backend(backend):
        loss = model.train_step(x, y, torch.optim.SGD(model.parameters(), lr=1e-3), reduction="sum")
        tutorial_loss = fusedgrad.train_step(x, y, w1, w2, 1e-3)
    assert_close(loss, tutorial_loss, "float64")
    assert_close(model[0].weight.T, w1, "float64")
    assert_close(model[1].weight.T, w2, "float64")


@pytest.mark.parametrize("backend", BACKENDS)
def test_versions_bumped_and_compile_runs_it_eagerly(backend):
    device = BACKENDS[backend]
    model = fusedgrad.nn.MLP([5, 4, 3], device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, target = torch.randn(6, 5, device=device), torch.randn(6, 3, device=device)
    versions = [p._version for p in model.parameters()]
    with fusedgrad.backend(backend):
        loss = torch.compile(lambda: model.train_step(x, target, optimizer), backend="aot_eager")()
    assert loss.shape == () and torch.isfinite(loss)
    assert all(p._version > v for p, v in zip(model.parameters(), versions))
    assert all(optimizer.state[p]["momentum_buffer"]._version > 0 for p in model.parameters())


@pytest.mark.parametrize("classes", [3, 128, 129, 300])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_in_the_epilogue_and_in_a_kernel_of_its_own(backend, classes, monkeypatch):
    """Up to FUSED_CLASSES classes the loss is the last GEMM's epilogue (one row of logits per
    tile), beyond them one more launch: both equal the float64 eager loop."""
    device = BACKENDS[backend]
    model = fusedgrad.nn.MLP([6, 9, classes], device=device, dtype=torch.float64)
    reference = eager_twin(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    separate = []
    if backend == "triton":
        kernels = fusedgrad.dispatch.load_kernels()
        original = kernels.cross_entropy.cross_entropy_and_grad_
        monkeypatch.setattr(kernels.cross_entropy, "cross_entropy_and_grad_",
                            lambda *a: separate.append(1) or original(*a))
    for reduction in ("mean", "sum"):
        x, target = torch.randn(33, 6, device=device, dtype=torch.float64), torch.randint(0, classes, (33,), device=device)
        with fusedgrad.backend(backend):
            loss = model.train_step(x, target, optimizer, loss="cross_entropy", reduction=reduction)
        assert_close(loss, eager_step(reference, reference_optimizer, x.cpu(), target.cpu(), reduction,
                                      "cross_entropy"), "float64")
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert_close(ours, theirs, "float64")
    if backend == "triton":
        from fusedgrad.kernels.mlp_step import FUSED_CLASSES
        assert len(separate) == (0 if classes <= FUSED_CLASSES else 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_class_out_of_range_gives_nan(backend):
    """A class index outside [0, C) (torch's ignore_index -100 among them: not supported) makes
    the loss and the step NaN, on the device as on the CPU: never a silent finite answer."""
    device = BACKENDS[backend]
    model = fusedgrad.nn.MLP([5, 4, 3], device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 5, device=device)
    with fusedgrad.backend(backend):
        loss = model.train_step(x, torch.tensor([0, 2, 3, 1], device=device), optimizer, loss="cross_entropy")
        assert loss.isnan()
        assert model[-1].weight.isnan().any()
        loss = model.train_step(x, torch.tensor([0, -100, 1, 1], device=device), optimizer, loss="cross_entropy")
        assert loss.isnan()


def test_cuda_graph_step_needs_cuda_tensors():
    model = fusedgrad.nn.MLP([5, 3])
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        model.cuda_graph_step(torch.randn(4, 5), torch.randn(4, 3), torch.optim.SGD(model.parameters(), lr=0.1))


def test_refusals_change_nothing():
    model = fusedgrad.nn.MLP([5, 4, 3])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, target = torch.randn(6, 5), torch.randn(6, 3)
    before = copy.deepcopy(model.state_dict())
    other = torch.optim.SGD(list(model.parameters())[:2], lr=0.1)
    cases = [
        ((x, target, optimizer), dict(loss="l1"), ValueError, "loss"),
        ((x, target, optimizer), dict(reduction="none"), ValueError, "reduction"),
        ((x, target, torch.optim.Adam(model.parameters())), {}, TypeError, "optimizer"),
        ((x, target, other), {}, ValueError, "not in the optimizer"),
        ((x, target[:, :2], optimizer), {}, ValueError, "target"),
        ((x.double(), target, optimizer), {}, ValueError, "x must be"),
        ((x[:, :4], target, optimizer), {}, ValueError, "features"),
        ((x[:0], target[:0], optimizer), {}, ValueError, "empty"),
        ((x, target, optimizer), dict(loss="cross_entropy"), ValueError, "class indices"),
        ((x, torch.zeros(6, dtype=torch.int32), optimizer), dict(loss="cross_entropy"), ValueError, "int64"),
    ]
    for args, kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            model.train_step(*args, **kwargs)
    optimizer.param_groups[0]["momentum"] = -1.0
    with pytest.raises(ValueError, match="momentum"):
        model.train_step(x, target, optimizer)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert not optimizer.state
