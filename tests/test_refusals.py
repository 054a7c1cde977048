"""The bad-input matrix: every rejected call raises the documented exception type, names the
offending argument, and leaves every input bitwise as it was, on both backends (ATen, and the
Triton kernels: interpreted on CPU, compiled on CUDA)."""

import pytest
import torch

import fusedgrad
from fusedgrad import kernels
from helpers import kernel_device

BACKENDS = [pytest.param("aten", "cpu", id="aten"), pytest.param("triton", kernel_device(), id="triton")]


def tensors_of(args) -> list[torch.Tensor]:
    """Every tensor among `args`, inside lists and dicts too (an optimizer's parameters)."""
    found = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            found.append(arg)
        elif isinstance(arg, (list, tuple)):
            found.extend(tensors_of(arg))
    return found


def bits(t: torch.Tensor) -> torch.Tensor:
    """An exact copy of `t`'s elements as integers: NaN payloads and -0.0 compare too."""
    integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().cpu().clone().view(integer) if t.is_floating_point() else t.detach().cpu().clone()


def assert_refused(call, args, error: type, names: tuple[str, ...]):
    """`call(*args)` raises `error` whose message names each of `names`, and changes no input."""
    inputs = [t for t in tensors_of(args) if not t.is_meta]  # meta tensors hold no data
    versions = [t._version for t in inputs if not t.is_inference()]
    before = [bits(t) for t in inputs]
    with pytest.raises(error) as raised:
        call(*args)
    for name in names:
        assert name in str(raised.value), f"{name!r} not named in: {raised.value}"
    for t, old in zip(inputs, before):
        assert torch.equal(bits(t), old), "a refused call wrote an input"
    assert versions == [t._version for t in inputs if not t.is_inference()], "a refused call bumped a version"


def step_problem(device, n=6, d_in=5, hidden=4, d_out=3):
    return (torch.randn(n, d_in, device=device), torch.randn(n, d_out, device=device),
            torch.randn(d_in, hidden, device=device), torch.randn(hidden, d_out, device=device))


def overlapping(device, rows, cols):
    """A (rows, cols) view whose rows overlap: row i starts one element after row i - 1."""
    return torch.randn(rows + cols, device=device).as_strided((rows, cols), (1, 1))


def inference(t):
    with torch.inference_mode():
        return t.clone()


# name -> (what to change in (x, y, w1, w2, lr), exception type, names its message must give)
STEP_CASES = {
    "w1 expanded": (lambda x, y, w1, w2, lr: (x, y, w1[:1].expand_as(w1), w2, lr), ValueError, ("w1", "share memory")),
    "w2 expanded": (lambda x, y, w1, w2, lr: (x, y, w1, w2[:, :1].expand_as(w2), lr), ValueError, ("w2",)),
    "w1 overlaps itself": (lambda x, y, w1, w2, lr: (x, y, overlapping(x.device, *w1.shape), w2, lr), ValueError,
                           ("w1",)),
    "w1 is w2": (lambda x, y, w1, w2, lr: (x[:, :4], torch.zeros(6, 4, device=x.device), w1[:4], w1[:4], lr),
                 ValueError, ("w1", "w2")),
    "w2 inside w1": (lambda x, y, w1, w2, lr: (x, y, w1, w1.view(-1)[2:14].view(4, 3), lr), ValueError,
                     ("w1", "w2", "share memory")),
    "w1 inference": (lambda x, y, w1, w2, lr: (x, y, inference(w1), w2, lr), RuntimeError, ("w1", "inference")),
    "w2 inference": (lambda x, y, w1, w2, lr: (x, y, w1, inference(w2), lr), RuntimeError, ("w2", "inference")),
    "lr negative": (lambda x, y, w1, w2, lr: (x, y, w1, w2, -0.1), ValueError, ("lr", ">= 0")),
    "lr nan": (lambda x, y, w1, w2, lr: (x, y, w1, w2, float("nan")), ValueError, ("lr", "finite")),
    "lr inf": (lambda x, y, w1, w2, lr: (x, y, w1, w2, float("inf")), ValueError, ("lr", "finite")),
    "lr text": (lambda x, y, w1, w2, lr: (x, y, w1, w2, "0.1"), TypeError, ("lr",)),
    "lr bool": (lambda x, y, w1, w2, lr: (x, y, w1, w2, True), TypeError, ("lr",)),
    "lr shape (1,)": (lambda x, y, w1, w2, lr: (x, y, w1, w2, torch.tensor([0.1], device=x.device)), ValueError,
                      ("lr", "0-d", "(1,)")),
    "lr integer tensor": (lambda x, y, w1, w2, lr: (x, y, w1, w2, torch.tensor(1, device=x.device)), ValueError,
                          ("lr", "torch.int64")),
    "lr on meta": (lambda x, y, w1, w2, lr: (x, y, w1, w2, torch.tensor(0.1, device="meta")), ValueError,
                   ("lr", "meta")),
    "x not a tensor": (lambda x, y, w1, w2, lr: (x.tolist(), y, w1, w2, lr), TypeError, ("x", "list")),
    "x 3-D": (lambda x, y, w1, w2, lr: (x[None], y, w1, w2, lr), ValueError, ("x", "2-D")),
    "x integer": (lambda x, y, w1, w2, lr: (x.long(), y, w1, w2, lr), TypeError, ("x", "torch.int64")),
    "w1 float64": (lambda x, y, w1, w2, lr: (x, y, w1.double(), w2, lr), TypeError, ("x", "w1", "torch.float64")),
    "w1 rows": (lambda x, y, w1, w2, lr: (x, y, w1[1:], w2, lr), ValueError, ("x", "w1", "inner")),
    "y columns": (lambda x, y, w1, w2, lr: (x, y[:, 1:], w1, w2, lr), ValueError, ("y",)),
    "y batch": (lambda x, y, w1, w2, lr: (x, y[1:], w1, w2, lr), ValueError, ("x", "y", "batch")),
    "empty hidden": (lambda x, y, w1, w2, lr: (x, y, w1[:, :0], w2[:0], lr), ValueError, ("w1", "empty")),
    "lr beyond float32": (lambda x, y, w1, w2, lr: (x, y, w1, w2, 1e300), ValueError, ("lr", "float32")),
    "lr beyond float": (lambda x, y, w1, w2, lr: (x, y, w1, w2, 10**400), ValueError, ("lr", "finite")),
}


@pytest.mark.parametrize("case", STEP_CASES)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_train_step_refuses(backend, device, case):
    change, error, names = STEP_CASES[case]
    args = change(*step_problem(device), 1e-3)
    with fusedgrad.backend(backend):
        assert_refused(fusedgrad.train_step, args, error, names)


def sgd_params(device, count=3):
    params = [torch.nn.Parameter(torch.randn(4, 3, device=device)) for _ in range(count)]
    for param in params:
        param.grad = torch.randn_like(param)
    return params


def expanded_param(device):
    """A parameter whose elements all share one address, with a gradient of its shape."""
    param = torch.nn.Parameter(torch.randn(1, 3, device=device).expand(4, 3))
    param.grad = torch.randn(4, 3, device=device)
    return param


def views_of_one_buffer(device):
    """Two parameters that overlap in one buffer."""
    buffer = torch.randn(20, device=device)
    first, second = torch.nn.Parameter(buffer[:12].view(4, 3)), torch.nn.Parameter(buffer[6:18].view(4, 3))
    first.grad, second.grad = torch.randn(4, 3, device=device), torch.randn(4, 3, device=device)
    return [first, second]


def grad_inside_other_param(device):
    first, second = sgd_params(device, 2)
    first.grad = second.detach()[:, :]  # the gradient of one is the other parameter's memory
    return [first, second]


def inference_param(device):
    with torch.inference_mode():
        param = torch.nn.Parameter(torch.randn(4, 3, device=device))
    param.grad = torch.randn(4, 3, device=device)
    return param


# name -> (param groups: a list of lists of parameters, and a learning rate per group), error, names
SGD_CASES = {
    "expanded parameter": (lambda d: [sgd_params(d) + [expanded_param(d)]], ValueError,
                           ("param_groups[0]['params'][3]", "share memory")),
    "parameters overlap": (lambda d: [views_of_one_buffer(d)], ValueError,
                           ("param_groups[0]['params'][0]", "param_groups[0]['params'][1]", "share memory")),
    "gradient in a parameter": (lambda d: [grad_inside_other_param(d)], ValueError,
                                ("the gradient of param_groups[0]['params'][0]", "param_groups[0]['params'][1]")),
    "parameters overlap across groups": (lambda d: (lambda views: [sgd_params(d) + views[:1], views[1:]])(
        views_of_one_buffer(d)), ValueError, ("param_groups[0]['params'][3]", "param_groups[1]['params'][0]")),
    "inference parameter in the second group": (lambda d: [sgd_params(d), [inference_param(d)]], RuntimeError,
                                                ("param_groups[1]['params'][0]", "inference")),
    "expanded parameter in the second group": (lambda d: [sgd_params(d), [expanded_param(d)]], ValueError,
                                               ("param_groups[1]['params'][0]",)),
    "the same parameter twice": (lambda d: (lambda params: [params + params[:1]])(sgd_params(d)), ValueError,
                                 ("param_groups[0]['params'][0]", "param_groups[0]['params'][3]")),
}


@pytest.mark.parametrize("case", SGD_CASES)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_sgd_step_refuses_before_updating_any_group(backend, device, case):
    make_groups, error, names = SGD_CASES[case]
    groups = make_groups(device)
    optimizer = fusedgrad.optim.SGD([{"params": params} for params in groups], lr=0.1)
    every = [t for params in groups for param in params for t in (param, param.grad)]
    with fusedgrad.backend(backend):
        assert_refused(lambda *_: optimizer.step(), every, error, names)


@pytest.mark.parametrize("lr, error, names", [
    (-0.5, ValueError, ("lr", ">= 0")), (float("nan"), ValueError, ("lr", "finite")),
    (1e300, ValueError, ("lr", "float32")), ("0.1", TypeError, ("lr", "str")),
    (torch.tensor([0.1]), ValueError, ("lr", "0-d", "(1,)")), (torch.tensor(0.1, device="meta"), ValueError, ("lr",)),
])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_sgd_step_refuses_a_learning_rate_set_after_construction(backend, device, lr, error, names):
    good, bad = sgd_params(device, 2), sgd_params(device, 1)
    optimizer = fusedgrad.optim.SGD([{"params": good}, {"params": bad}], lr=0.1)
    optimizer.param_groups[1]["lr"] = lr
    every = [t for param in good + bad for t in (param, param.grad)]
    with fusedgrad.backend(backend):
        assert_refused(lambda *_: optimizer.step(), every, error, names)


def test_sgd_refuses_a_backend_that_cannot_take_a_later_group():
    """Backends are chosen for every parameter before any is updated: forced Triton refuses a
    complex parameter in the second group, and the first group stays as it was."""
    good = sgd_params("cpu", 2)
    odd = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    odd.grad = torch.randn_like(odd)
    optimizer = fusedgrad.optim.SGD([{"params": good}, {"params": [odd]}], lr=0.1)
    every = [t for param in good + [odd] for t in (param, param.grad)]
    with fusedgrad.backend("triton"):
        assert_refused(lambda *_: optimizer.step(), every, TypeError, ("torch.complex64",))


def momentum_optimizer(device):
    """Two groups with momentum, after a first step (so their buffers exist), with new gradients;
    and every tensor a step could write or read."""
    first, second = sgd_params(device, 2), sgd_params(device, 2)
    optimizer = fusedgrad.optim.SGD([{"params": first}, {"params": second, "nesterov": True}], lr=0.1, momentum=0.9)
    optimizer.step()
    for param in first + second:
        param.grad = torch.randn_like(param)
    every = [t for param in first + second for t in (param, param.grad, optimizer.state[param]["momentum_buffer"])]
    return optimizer, every


@pytest.mark.parametrize("key, value, error, names", [
    ("momentum", -0.5, ValueError, ("momentum", ">= 0", "-0.5")),
    ("momentum", True, TypeError, ("momentum", "bool")),
    ("dampening", float("nan"), ValueError, ("dampening", "finite")),
    ("dampening", 0.5, ValueError, ("Nesterov", "dampening 0.5")),
    ("weight_decay", "0.1", TypeError, ("weight_decay", "str")),
    ("weight_decay", 1e300, ValueError, ("weight_decay", "float32")),
    ("maximize", 1, TypeError, ("maximize", "bool")),
])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_sgd_step_refuses_group_settings_set_after_construction(backend, device, key, value, error, names):
    """A setting of the second group changed after construction: nothing of either group (nor
    a momentum buffer) is written."""
    with fusedgrad.backend(backend):
        optimizer, every = momentum_optimizer(device)
        optimizer.param_groups[1][key] = value
        assert_refused(lambda *_: optimizer.step(), every, error, names)


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "shared with a parameter", "expanded"])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_sgd_step_refuses_a_momentum_buffer_that_does_not_fit(backend, device, case):
    """A buffer put in the state (a loaded state dict, or by hand) that does not match its
    parameter, or that shares memory with another, is named before anything is written."""
    with fusedgrad.backend(backend):
        optimizer, every = momentum_optimizer(device)
        params = optimizer.param_groups[1]["params"]
        state = optimizer.state[params[1]]
        name = "the momentum buffer of param_groups[1]['params'][1]"
        bad, names = {
            "wrong shape": (torch.zeros(3, 4, device=device), (name, "(3, 4)", "(4, 3)")),
            "wrong dtype": (torch.zeros(4, 3, device=device, dtype=torch.float64), (name, "torch.float64")),
            "shared with a parameter": (params[0].detach(), (name, "param_groups[1]['params'][0]", "share memory")),
            "expanded": (torch.zeros(1, 3, device=device).expand(4, 3), (name, "share memory")),
        }[case]
        state["momentum_buffer"] = bad
        assert_refused(lambda *_: optimizer.step(), every + [bad], ValueError, names)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_the_sgd_operator_checks_all_its_parameters(backend, device):
    """`fusedgrad::sgd_`, what a compiled step runs: one call for every group (a rate each), so
    its kernel refuses parameters that overlap across groups, gradients that do not match and
    lists that differ in length, before any write."""
    views = views_of_one_buffer(device)
    params = sgd_params(device, 2) + views
    grads = [param.grad for param in params]
    rates = ([None] * 4, [0.1, 0.1, 0.2, 0.3])
    with fusedgrad.backend(backend):
        assert_refused(torch.ops.fusedgrad.sgd_, (params, grads, *rates, []), ValueError, ("params[2]", "params[3]"))
        assert_refused(torch.ops.fusedgrad.sgd_, (params[:2], grads[:1], [None] * 2, [0.1] * 2, []), ValueError,
                       ("2 parameters but 1 gradients",))
        assert_refused(torch.ops.fusedgrad.sgd_, (params[:2], [grads[0], grads[1][:2]], [None] * 2, [0.1] * 2, []),
                       ValueError, ("the gradient of params[1]", "(2, 3)", "(4, 3)"))
        assert_refused(torch.ops.fusedgrad.sgd_, (params[:2], grads[:2], [None], [0.1], []), ValueError, ("lr_tensors",))
        buffer = torch.zeros_like(params[1])
        assert_refused(torch.ops.fusedgrad.sgd_, (params[:2], grads[:2], [None] * 2, [0.1] * 2, [buffer], [0.9]),
                       ValueError, ("2 parameters but 1 momentums",))
        assert_refused(torch.ops.fusedgrad.sgd_, (params[:2], grads[:2], [None] * 2, [0.1] * 2, [], [0.0, 0.9]),
                       ValueError, ("1 parameters with momentum but 0 momentum_buffers",))
        assert_refused(torch.ops.fusedgrad.sgd_, (params[:2], grads[:2], [None] * 2, [0.1] * 2, [params[0]],
                                                  [0.0, 0.9]), ValueError, ("params[0]", "share memory"))


def mm_operands(device):
    return torch.randn(5, 4, device=device), torch.randn(4, 3, device=device)


OP_CASES = {
    "mm a 3-D": (lambda a, b: (fusedgrad.mm, (a[None], b)), ValueError, ("mm", "a", "2-D")),
    "mm_relu b not a tensor": (lambda a, b: (fusedgrad.mm_relu, (a, b.tolist())), TypeError, ("b", "list")),
    "mm dtypes differ": (lambda a, b: (fusedgrad.mm, (a, b.double())), TypeError, ("a", "b", "torch.float64")),
    "mm inner sizes": (lambda a, b: (fusedgrad.mm, (a, b[1:])), ValueError, ("a", "b", "(5, 4)", "(3, 3)")),
    "mm integer": (lambda a, b: (fusedgrad.mm, (a.int(), b.int())), TypeError, ("a", "torch.int32")),
    "mse_loss shapes": (lambda a, b: (fusedgrad.mse_loss, (a, a[1:])), ValueError, ("input", "target")),
    "mse_loss reduction": (lambda a, b: (lambda x, y: fusedgrad.mse_loss(x, y, reduction="avg"), (a, a.clone())),
                           ValueError, ("reduction", "'avg'")),
    "mse_loss integer target": (lambda a, b: (fusedgrad.mse_loss, (a, a.long())), TypeError, ("target",)),
    "kernels.matmul a a list": (lambda a, b: (kernels.matmul, ([[1.0]], b)), TypeError, ("a", "list")),
    "kernels.matmul b 3-D": (lambda a, b: (kernels.matmul, (a, b[None])), ValueError, ("b", "2-D")),
    "kernels.matmul mask not a tensor": (lambda a, b: (lambda x, y: kernels.matmul(x, y, out_relu_mask=1.0), (a, b)),
                                         TypeError, ("out_relu_mask",)),
    "kernels.matmul SPLIT_K 0": (lambda a, b: (lambda x, y: kernels.matmul(
        x, y, config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, SPLIT_K=0)), (a, b)), ValueError, ("SPLIT_K",)),
    "kernels.matmul SPLIT_K -1": (lambda a, b: (lambda x, y: kernels.matmul(
        x, y, config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, SPLIT_K=-1)), (a, b)), ValueError, ("SPLIT_K",)),
    "kernels.matmul BLOCK_M 3": (lambda a, b: (lambda x, y: kernels.matmul(
        x, y, config=dict(BLOCK_M=3, BLOCK_N=16, BLOCK_K=16)), (a, b)), ValueError, ("BLOCK_M",)),
    "kernels.matmul unknown field": (lambda a, b: (lambda x, y: kernels.matmul(
        x, y, config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, WARPS=4)), (a, b)), ValueError, ("WARPS",)),
    "kernels.matmul precision": (lambda a, b: (lambda x, y: kernels.matmul(x, y, fp32_precision="fast"), (a, b)),
                                 ValueError, ("fast",)),
}


@pytest.mark.parametrize("case", OP_CASES)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_ops_refuse(backend, device, case):
    make, error, names = OP_CASES[case]
    a, b = mm_operands(device)
    call, args = make(a, b)
    with fusedgrad.backend(backend):
        assert_refused(call, args, error, names)


@pytest.mark.parametrize("call, error, names", [
    (lambda: fusedgrad.TwoLayerNet(-1, 3, 2), ValueError, ("d_in", "-1")),
    (lambda: fusedgrad.TwoLayerNet(4, 2.5, 2), TypeError, ("hidden", "float")),
    (lambda: fusedgrad.TwoLayerNet(4, 3, True), TypeError, ("d_out", "bool")),
    (lambda: fusedgrad.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr="0.1"), TypeError, ("lr", "str")),
    (lambda: fusedgrad.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=-1.0), ValueError, ("lr", ">= 0")),
    (lambda: fusedgrad.optim.SGD([torch.nn.Parameter(torch.ones(2))], momentum=-0.1), ValueError, ("momentum",)),
    (lambda: fusedgrad.optim.SGD([torch.nn.Parameter(torch.ones(2))], nesterov=True), ValueError,
     ("Nesterov", "momentum 0")),
    (lambda: fusedgrad.optim.SGD([torch.nn.Parameter(torch.ones(2))], differentiable=True), ValueError,
     ("differentiable",)),
    (lambda: fusedgrad.optim.SGD([torch.nn.Parameter(torch.ones(2))], foreach=True, fused=True), RuntimeError,
     ("fused", "foreach")),
    (lambda: fusedgrad.CUDAGraphStep(None, None, None, None, 0.1), TypeError, ("x", "NoneType")),
    (lambda: fusedgrad.CUDAGraphStep(*step_problem("cpu"), -1.0), ValueError, ("lr",)),
    (lambda: fusedgrad.backend("fast").__enter__(), ValueError, ("backend", "'fast'")),
    (lambda: fusedgrad.fp32_precision("tf16").__enter__(), ValueError, ("fp32 precision", "'tf16'")),
], ids=["TwoLayerNet-negative", "TwoLayerNet-float", "TwoLayerNet-bool", "SGD-lr-text", "SGD-lr-negative",
        "SGD-momentum-negative", "SGD-nesterov-alone", "SGD-differentiable", "SGD-fused-and-foreach",
        "CUDAGraphStep-None", "CUDAGraphStep-lr", "backend-name", "fp32-precision-name"])
def test_constructors_and_settings_refuse(call, error, names):
    with pytest.raises(error) as raised:
        call()
    for name in names:
        assert name in str(raised.value), f"{name!r} not named in: {raised.value}"
