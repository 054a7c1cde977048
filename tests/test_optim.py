"""`fusedgrad.optim.SGD` against `torch.optim.SGD`, on ATen and Triton."""

import copy

import pytest
import torch

import fusedgrad
from torch.optim.optimizer import register_optimizer_step_pre_hook

from fusedgrad.optim import SGD
from helpers import kernel_device, record_grids

BACKENDS = [("aten", "cpu"), ("triton", kernel_device())]
SHAPES = [(100, 100), (10,), (5000,), (3, 4, 5)]  # 5000 > one block of 4096


def make_params(device, dtype=torch.float32):
    params = [torch.randn(s, device=device, dtype=dtype, requires_grad=True) for s in SHAPES]
    twins = [p.detach().clone().requires_grad_() for p in params]
    return params, twins


def fill_grads(params, twins):
    for p, q in zip(params, twins):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()


@pytest.mark.parametrize("tensor_lr", [False, True])
@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_matches_torch_sgd(backend, device, tensor_lr):
    params, twins = make_params(device)
    lr = torch.tensor(0.05, device=device) if tensor_lr else 0.05
    ours, theirs = SGD(params, lr=lr), torch.optim.SGD(twins, lr=0.05)
    with fusedgrad.backend(backend):
        for _ in range(3):
            fill_grads(params, twins)
            ours.step()
            theirs.step()
            ours.zero_grad()
            theirs.zero_grad()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
        assert p.grad is None  # zero_grad sets to None, as torch's does


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")
def test_zero_grad_without_set_to_none_zeroes_in_place_like_torch():
    """Gradients kept, zeroed in place and cut from any graph (one made with create_graph)."""
    params, twins = make_params("cpu")
    for group in (params, twins):
        loss = sum((p * p).sum() for p in group)
        loss.backward(create_graph=True)  # gradients with a grad_fn
    grads = [p.grad for p in params]
    SGD(params, lr=0.1).zero_grad(set_to_none=False)
    torch.optim.SGD(twins, lr=0.1).zero_grad(set_to_none=False)
    for p, q, grad in zip(params, twins, grads):
        assert p.grad is grad and not p.grad.any() and p.grad.grad_fn is None and not p.grad.requires_grad
        assert q.grad.grad_fn is None and not q.grad.requires_grad and not q.grad.any()


@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_parameters_without_gradient_are_left_alone(backend, device):
    params, _ = make_params(device)
    before = [p.detach().clone() for p in params]
    params[0].grad = torch.ones_like(params[0])
    with fusedgrad.backend(backend):
        SGD(params, lr=0.5).step()
    torch.testing.assert_close(params[0].detach(), before[0] - 0.5)
    assert all(torch.equal(p, b) for p, b in zip(params[1:], before[1:]))


def test_one_launch_for_all_parameters_and_new_addresses(monkeypatch):
    """Fresh gradient tensors every step (new addresses) and one kernel launch per step."""
    from fusedgrad.kernels import sgd
    grids = record_grids(monkeypatch, sgd._LAUNCHER)
    params, twins = make_params(kernel_device())
    ours, theirs = SGD(params, lr=0.1), torch.optim.SGD(twins, lr=0.1)
    with fusedgrad.backend("triton"):
        for _ in range(2):
            fill_grads(params, twins)
            ours.step()
            theirs.step()
    blocks = sum(-(-p.numel() // sgd.BLOCK) for p in params)  # 3 + 1 + 2 + 1
    assert grids == [(blocks,), (blocks,)]
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("max_tensors", [2, None], ids=["2 per launch", "MAX_TENSORS per launch"])
def test_more_parameters_than_one_launch_takes(monkeypatch, max_tensors):
    """Parameters in groups of MAX_TENSORS, one launch each: with 2 per launch, five parameters
    (an empty one inside a group) in three launches; with the default, MAX_TENSORS + 2 in two."""
    from fusedgrad.kernels import sgd
    if max_tensors is not None:
        monkeypatch.setattr(sgd, "MAX_TENSORS", max_tensors)
        sizes = (5, 0, 4097, 1, 300)
    else:
        sizes = tuple(range(1, sgd.MAX_TENSORS + 3))
    grids = record_grids(monkeypatch, sgd._LAUNCHER)
    device = kernel_device()
    params = [torch.randn(n, device=device, requires_grad=True) for n in sizes]
    twins = [p.detach().clone().requires_grad_() for p in params]
    fill_grads(params, twins)
    with fusedgrad.backend("triton"):
        SGD(params, lr=torch.tensor(0.25, device=device)).step()
    torch.optim.SGD(twins, lr=0.25).step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert len(grids) == (3 if max_tensors else 2)


def test_non_contiguous_parameter_takes_the_aten_path():
    base = torch.randn(6, 8, device=kernel_device())
    param = base.T.requires_grad_()  # a non-contiguous leaf
    param.grad = torch.randn(8, 6, device=kernel_device()).T.contiguous().T
    expected = param.detach() - 0.1 * param.grad
    with fusedgrad.backend("triton"):
        SGD([param], lr=0.1).step()
    torch.testing.assert_close(param.detach(), expected)


def test_a_group_lr_set_after_construction_is_checked_before_any_update():
    params, _ = make_params("cpu")
    fill_grads(params, params)
    before = [p.detach().clone() for p in params]
    optimizer = SGD(params, lr=0.1)
    optimizer.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="SGD.step: lr must be finite and >= 0, got nan"):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def sgd_on(backend, params, lr):
    with fusedgrad.backend(backend):
        SGD(params, lr=lr).step()


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_memory_shared_where_the_update_is_still_exact(backend, device):
    """Accepted and exact: parameters that are interleaved columns of one buffer, a parameter
    that is its own gradient, a rate that is an element of a parameter (read from a copy before
    any update, as the step on a copy), and a Fraction rate."""
    from fractions import Fraction
    buffer = torch.randn(5, 8, device=device)
    columns = [torch.nn.Parameter(buffer[:, 0::2]), torch.nn.Parameter(buffer[:, 1::2])]
    for param in columns:
        param.grad = torch.randn_like(param)
    expected = [param.detach() - 0.5 * param.grad for param in columns]
    sgd_on(backend, columns, 0.5)
    assert all(torch.allclose(param, ref) for param, ref in zip(columns, expected))

    own = torch.nn.Parameter(torch.randn(4, 3, device=device))
    own.grad = own.detach()
    expected = own.detach() * 0.75
    sgd_on(backend, [own], Fraction(1, 4))
    assert torch.allclose(own, expected)

    big = [torch.nn.Parameter(torch.randn(9000, device=device)) for _ in range(2)]  # several SGD blocks
    for param in big:
        param.grad = torch.randn_like(param)
    big[0].data[0] = 0.25
    twins = [param.detach().clone() for param in big]
    expected = [twin - 0.25 * param.grad for twin, param in zip(twins, big)]
    sgd_on(backend, big, big[0].detach()[0])  # the rate lives in the first parameter
    assert all(torch.allclose(param, ref) for param, ref in zip(big, expected))


def test_step_hooks_and_the_profiler_see_the_step_as_with_torch_optim():
    """The bare step skips torch's wrapper only when nothing would observe it: step pre and post
    hooks (this optimizer's and global ones) run around the update, and the profiler records the
    step under torch's name."""
    param = torch.randn(4, requires_grad=True)
    optimizer = SGD([param], lr=0.5)
    seen = []
    handles = [optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(("pre", param.clone()))),
               optimizer.register_step_post_hook(lambda opt, args, kwargs: seen.append(("post", param.clone()))),
               register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(("global",)))]
    param.grad = torch.ones(4)
    before = param.detach().clone()
    try:
        optimizer.step()
    finally:
        for handle in handles:
            handle.remove()
    assert [entry[0] for entry in seen] == ["global", "pre", "post"]
    assert torch.equal(seen[1][1], before) and torch.equal(seen[2][1], before - 0.5)  # one rounding: exact
    optimizer.step()  # hooks removed: the bare step
    assert len(seen) == 3
    torch.testing.assert_close(param.detach(), before - 1.0)
    with torch.profiler.profile() as profile:
        optimizer.step()
    assert any(event.name == "Optimizer.step#SGD.step" for event in profile.events())
    torch.testing.assert_close(param.detach(), before - 1.5)


def test_step_runs_without_grad_and_restores_grad_mode():
    param = torch.randn(3, requires_grad=True)
    param.grad = torch.ones(3)
    optimizer = SGD([param], lr=0.1)
    optimizer.step()
    assert torch.is_grad_enabled() and param.grad_fn is None and param.requires_grad
    with torch.no_grad():
        optimizer.step()
        assert not torch.is_grad_enabled()


# torch.optim.SGD's settings, each way a step can differ: momentum (first step and later ones),
# dampening, weight decay, Nesterov, maximize, and all at once.
RULES = {
    "momentum": dict(momentum=0.9),
    "dampening": dict(momentum=0.5, dampening=0.3),
    "weight decay": dict(weight_decay=0.01),
    "nesterov": dict(momentum=0.9, nesterov=True, weight_decay=0.01),
    "maximize": dict(momentum=0.8, maximize=True),
    "all but nesterov": dict(momentum=0.7, dampening=0.1, weight_decay=0.02, maximize=True),
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_every_setting_matches_torch_sgd_step_for_step(backend, device, rule):
    """Four steps (the buffers' first and later ones) with fresh gradients, against
    torch.optim.SGD in float64 on the same values; then the state holds torch's buffers."""
    params, twins = make_params(device)
    references = [p.detach().double().cpu().requires_grad_() for p in params]
    ours = SGD(params, lr=0.05, **RULES[rule])
    theirs = torch.optim.SGD(references, lr=0.05, **RULES[rule])
    with fusedgrad.backend(backend):
        for _ in range(4):
            fill_grads(params, twins)
            for p, r in zip(params, references):
                r.grad = p.grad.double().cpu()
            ours.step()
            theirs.step()
    for p, r in zip(params, references):
        torch.testing.assert_close(p.detach().double().cpu(), r.detach(), rtol=1e-5, atol=1e-5)
        if RULES[rule].get("momentum"):
            buffer = ours.state[p]["momentum_buffer"]
            assert buffer.dtype == p.dtype and buffer.device == p.device
            torch.testing.assert_close(buffer.double().cpu(), theirs.state[r]["momentum_buffer"], rtol=1e-5, atol=1e-5)
        else:
            assert p not in ours.state and r not in theirs.state  # torch keeps no state without momentum


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_each_step_in_each_dtype_is_torch_sgd_rounded_once(dtype):
    """Triton's update in each dtype, step by step against torch.optim.SGD in float64 from the
    same values (parameters and buffers as they are before the step): within the rounding of
    the buffer and the parameter to their dtype (float64: exact scalars, which the kernel reads
    from tensors rather than fp32 arguments)."""
    device = kernel_device()
    params = [torch.randn(s, device=device, dtype=dtype, requires_grad=True) for s in SHAPES]
    rule = RULES["nesterov"]
    ours = SGD(params, lr=0.1, **rule)
    eps = torch.finfo(dtype).eps
    with fusedgrad.backend("triton"):
        for _ in range(3):
            references = [p.detach().double().cpu().requires_grad_() for p in params]
            theirs = torch.optim.SGD(references, lr=0.1, **rule)
            for p, r in zip(params, references):
                p.grad = torch.randn_like(p)
                r.grad = p.grad.double().cpu()
                if p in ours.state:
                    theirs.state[r]["momentum_buffer"] = ours.state[p]["momentum_buffer"].double().cpu()
            ours.step()
            theirs.step()
            for p, r in zip(params, references):
                torch.testing.assert_close(p.detach().double().cpu(), r.detach(), rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_state_dicts_load_both_ways_and_the_steps_go_on_alike(backend, device):
    """torch's state (param_groups keys, a momentum_buffer per parameter) loads into ours and
    ours into torch's; the steps after the load match those of the optimizer that was saved."""
    rule = dict(momentum=0.9, dampening=0.1, weight_decay=0.01)
    params, twins = make_params(device)
    ours, theirs = SGD(params, lr=0.05, **rule), torch.optim.SGD(twins, lr=0.05, **rule)
    with fusedgrad.backend(backend):
        fill_grads(params, twins)
        ours.step()
        theirs.step()
        saved_ours, saved_theirs = ours.state_dict(), theirs.state_dict()
        assert saved_ours["param_groups"][0].keys() == saved_theirs["param_groups"][0].keys()
        assert saved_ours["state"].keys() == saved_theirs["state"].keys()
        assert all(entry.keys() == {"momentum_buffer"} for entry in saved_ours["state"].values())
        # Swap: each optimizer's parameters continue from the other's saved state.
        mine = [p.detach().clone().requires_grad_() for p in params]
        torch_copy = [p.detach().clone().requires_grad_() for p in params]
        loaded_ours, loaded_theirs = SGD(mine, lr=1.0), torch.optim.SGD(torch_copy, lr=1.0)
        loaded_ours.load_state_dict(copy.deepcopy(saved_theirs))  # as torch.save and torch.load would: no
        loaded_theirs.load_state_dict(copy.deepcopy(saved_ours))  # buffer shared with the saved optimizer
        for _ in range(2):
            grads = [torch.randn_like(p) for p in params]
            for group in (params, twins, mine, torch_copy):
                for p, grad in zip(group, grads):
                    p.grad = grad.clone()
            for optimizer in (ours, theirs, loaded_ours, loaded_theirs):
                optimizer.step()
    for group in (params, mine, torch_copy):
        for p, q in zip(group, twins):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-5)


def test_one_launch_per_kind_of_group_with_momentum(monkeypatch):
    """Two groups with momentum and one without, over two steps: the first step is one launch
    per group (all buffers fresh), so is the second (all buffers read); a group's parameters
    go in one launch whatever their number."""
    from fusedgrad.kernels import sgd
    grids = record_grids(monkeypatch, sgd._LAUNCHER)
    params, twins = make_params(kernel_device())
    settings = [dict(momentum=0.9), dict(momentum=0.5, nesterov=True), dict()]
    groups = [params[:2], params[2:3], params[3:]]
    twin_groups = [twins[:2], twins[2:3], twins[3:]]
    ours = SGD([dict(params=g, **s) for g, s in zip(groups, settings)], lr=0.1)
    theirs = torch.optim.SGD([dict(params=g, **s) for g, s in zip(twin_groups, settings)], lr=0.1)
    with fusedgrad.backend("triton"):
        for _ in range(2):
            fill_grads(params, twins)
            ours.step()
            theirs.step()
    assert len(grids) == 2 * len(groups)
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_nan_and_inf_propagate_as_in_torch_sgd(backend, device):
    """A NaN gradient reaches its buffer and its parameter; an infinite parameter stays infinite
    without weight decay (weight_decay * p is not added as 0 * inf) and is NaN after momentum
    steps only where torch's is."""
    rule = dict(momentum=0.9)
    param = torch.nn.Parameter(torch.tensor([1.0, float("inf"), 2.0, -float("inf")], device=device))
    twin = torch.nn.Parameter(param.detach().cpu().clone())
    ours, theirs = SGD([param], lr=0.1, **rule), torch.optim.SGD([twin], lr=0.1, **rule)
    with fusedgrad.backend(backend):
        for grad in ([float("nan"), 1.0, 1.0, 1.0], [1.0, 1.0, float("inf"), 1.0]):
            param.grad = torch.tensor(grad, device=device)
            twin.grad = param.grad.cpu()
            ours.step()
            theirs.step()
    torch.testing.assert_close(param.detach().cpu(), twin.detach(), equal_nan=True)
    torch.testing.assert_close(ours.state[param]["momentum_buffer"].cpu(), theirs.state[twin]["momentum_buffer"],
                               equal_nan=True)


@pytest.mark.parametrize("backend, device", BACKENDS, ids=["aten", "triton"])
def test_momentum_buffers_are_written_in_place_with_their_versions_bumped(backend, device):
    param = torch.nn.Parameter(torch.randn(6, device=device))
    optimizer = SGD([param], lr=0.1, momentum=0.9)
    with fusedgrad.backend(backend):
        param.grad = torch.randn_like(param)
        optimizer.step()
        buffer = optimizer.state[param]["momentum_buffer"]
        version = buffer._version
        param.grad = torch.randn_like(param)
        optimizer.step()
    assert optimizer.state[param]["momentum_buffer"] is buffer and buffer._version > version
