"""`fusedgrad.linear`, `fusedgrad.nn.Linear` and `fusedgrad.nn.MLP` on both backends against
float64 torch (`F.linear`, `nn.Linear`, `nn.Sequential`): values and every gradient, the bias
gradient from the weight-gradient launch, layouts, NaN/Inf, torch.func, compile and export,
autocast, and the modules' parameters and state_dict."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedgrad
from helpers import assert_close, kernel_device, make_operand, torch_mlp_twin

BACKENDS = {"aten": "cpu", "triton": kernel_device()}
DTYPES = {"aten": ["float64", "float32", "bfloat16"], "triton": ["float64", "float32", "float16", "bfloat16"]}
SHAPES = [(1, 1, 1), (7, 13, 5), (33, 64, 17), (5, 0, 3), (0, 4, 3)]  # (rows, in_features, out_features)


def backend_cases():
    return [pytest.param(backend, dtype, id=f"{backend}-{dtype}") for backend in BACKENDS for dtype in DTYPES[backend]]


def count_launches(monkeypatch) -> list:
    """Calls of the Triton launchers that linear's forward and backward use, from here on."""
    kernels, calls = fusedgrad.dispatch.load_kernels(), []
    for name in ("matmul_unchecked", "linear_unchecked", "weight_and_bias_grad_unchecked"):
        launcher = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *args, launcher=launcher, name=name, **kwargs:
                            calls.append(name) or launcher(*args, **kwargs))
    return calls


def float64_linear(x, weight, bias, grad_out, activation, mask_from):
    """Output and gradients of act(F.linear(x, weight, bias)) by torch autograd in float64.
    The ReLU's gradient mask is taken from `mask_from` (the output under test): inputs
    rounded to 16 bits flip the sign of near-zero pre-activations, and each flip would move a
    whole gradient entry."""
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, weight))
    b64 = None if bias is None else bias.detach().double().requires_grad_()
    pre = F.linear(x64, w64, b64)
    out = pre.relu() if activation == "relu" else pre
    grad = grad_out.detach().double()
    if activation == "relu":
        grad = grad.masked_fill(mask_from.detach() <= 0, 0)
    pre.backward(grad)
    return out.detach(), x64.grad, w64.grad, None if b64 is None else b64.grad


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend, dtype", backend_cases())
def test_values_and_gradients_match_float64(backend, dtype, shape, with_bias, activation, monkeypatch):
    M, K, N = shape
    device, dtype_ = BACKENDS[backend], getattr(torch, dtype)
    x = make_operand(M, K, dtype_, device, "transposed" if M % 2 else "contiguous").requires_grad_()
    weight = make_operand(N, K, dtype_, device, "sliced" if N % 2 else "contiguous").requires_grad_()
    bias = torch.randn(N, dtype=dtype_, device=device).requires_grad_() if with_bias else None
    launches = count_launches(monkeypatch)
    with fusedgrad.backend(backend):
        out = fusedgrad.linear(x, weight, bias, activation)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
    assert out.dtype == dtype_ and out.shape == (M, N)
    ref_out, ref_x, ref_w, ref_b = float64_linear(x, weight, bias, grad_out, activation, out)
    assert_close(out, ref_out, dtype)
    # Gradients are bounded relative to the terms they sum (a bias gradient may cancel).
    assert_close(x.grad, ref_x, dtype, scale=(grad_out.double().norm() * weight.double().norm()).item())
    assert_close(weight.grad, ref_w, dtype, scale=(grad_out.double().norm() * x.double().norm()).item())
    if with_bias:
        assert bias.grad.dtype == dtype_
        assert_close(bias.grad, ref_b, dtype, scale=grad_out.double().norm().item() * max(M, 1) ** 0.5)
    if backend == "triton":
        # forward one launch; backward grad_x, and the weight's and bias's gradients in one launch
        weight_grad = "weight_and_bias_grad_unchecked" if with_bias else "matmul_unchecked"
        assert sorted(launches) == sorted(["linear_unchecked", "matmul_unchecked", weight_grad])


@pytest.mark.parametrize("needs", [n for n in itertools.product((False, True), repeat=3) if any(n)],
                         ids=lambda n: "".join("xwb"[i] for i in range(3) if n[i]))
@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_gradients_asked_for(backend, needs):
    """needs_input_grad: each leaf that asks gets its gradient, the others none."""
    device = BACKENDS[backend]
    x, weight, bias = (torch.randn(*shape, device=device).requires_grad_(need)
                       for shape, need in zip(((6, 5), (4, 5), (4,)), needs))
    with fusedgrad.backend(backend):
        out = fusedgrad.linear(x, weight, bias, "relu")
        out.backward(grad_out := torch.randn_like(out))
    _, ref_x, ref_w, ref_b = float64_linear(x, weight, bias, grad_out, "relu", out)
    for leaf, ref, need in ((x, ref_x, needs[0]), (weight, ref_w, needs[1]), (bias, ref_b, needs[2])):
        if need:
            assert_close(leaf.grad, ref, "float32")
        else:
            assert leaf.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_inf_and_relu_at_zero(backend):
    """NaN and Inf propagate as in F.linear then relu; relu'(0) = 0 and a NaN output passes
    its gradient, as torch's threshold_backward."""
    device = BACKENDS[backend]
    x = torch.randn(4, 3, device=device)
    x[1, 0] = float("nan")
    weight = torch.randn(5, 3, device=device)
    weight[2] = 0.0  # column 2 of the output is exactly the bias
    bias = torch.randn(5, device=device)
    bias[2], bias[3] = 0.0, float("inf")  # a zero pre-activation; an infinite column
    for t in (x, weight, bias):
        t.requires_grad_()
    with fusedgrad.backend(backend):
        out = fusedgrad.linear(x, weight, bias, "relu")
        out.backward(grad_out := torch.randn_like(out))
    ref = F.linear(x.detach().double(), weight.detach().double(), bias.detach().double()).relu()
    assert_close(out, ref, "float32")
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    F.linear(x64, w64, b64).relu().backward(grad_out.double())
    for leaf, ref_grad in ((x, x64.grad), (weight, w64.grad), (bias, b64.grad)):
        assert_close(leaf.grad, ref_grad, "float32")
    # Column 2 is 0 in every row but the NaN one: only that row's gradient reaches the bias.
    assert bias.grad[2] == grad_out[1, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dimensions_and_a_vector(backend):
    """input (*, in_features), as F.linear takes it."""
    device = BACKENDS[backend]
    weight, bias = torch.randn(4, 6, device=device), torch.randn(4, device=device)
    with fusedgrad.backend(backend):
        for shape in ((2, 3, 6), (6,), (0, 2, 6)):
            x = torch.randn(*shape, device=device)
            out = fusedgrad.linear(x, weight, bias)
            assert out.shape == shape[:-1] + (4,)
            assert_close(out, F.linear(x.double(), weight.double(), bias.double()), "float32")
        with pytest.raises(ValueError, match="at least one dimension"):
            fusedgrad.linear(torch.tensor(1.0, device=device), weight, bias)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck(backend):
    device = BACKENDS[backend]
    with fusedgrad.backend(backend):
        for activation, with_bias in itertools.product((None, "relu"), (True, False)):
            inputs = (torch.randn(5, 4, device=device, dtype=torch.float64, requires_grad=True),
                      torch.randn(3, 4, device=device, dtype=torch.float64, requires_grad=True))
            if with_bias:
                inputs += (torch.randn(3, device=device, dtype=torch.float64, requires_grad=True),)
            for call in (fusedgrad.linear, torch.ops.fusedgrad.linear):
                function = lambda *t, call=call, a=activation: call(t[0], t[1], t[2] if len(t) > 2 else None, a)
                assert torch.autograd.gradcheck(function, inputs, fast_mode=True)
                assert torch.autograd.gradgradcheck(function, inputs, fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_grad_vmap_and_jvp(backend, monkeypatch):
    """Per-sample gradients by vmap(grad), and forward mode (jvp) against torch's linear."""
    device = BACKENDS[backend]
    x, target = torch.randn(6, 5, device=device), torch.randn(6, 3, device=device)
    weight, bias = torch.randn(3, 5, device=device), torch.randn(3, device=device)

    def loss(linear, weight, bias, x, target):
        return ((linear(x, weight, bias, "relu") - target) ** 2).sum()

    def reference_linear(x, weight, bias, activation):
        return F.linear(x, weight, bias).relu()

    per_sample = torch.func.vmap(torch.func.grad(loss, argnums=(1, 2)), in_dims=(None, None, None, 0, 0))
    with fusedgrad.backend(backend):
        grads = per_sample(fusedgrad.linear, weight, bias, x, target)
    expected = per_sample(reference_linear, weight, bias, x, target)
    for got, ref in zip(grads, expected):
        torch.testing.assert_close(got, ref)
    tangents = tuple(torch.randn_like(t) for t in (x, weight, bias))
    with fusedgrad.backend(backend):
        out, tangent = torch.func.jvp(lambda *t: fusedgrad.linear(*t, "relu"), (x, weight, bias), tangents)
    ref_out, ref_tangent = torch.func.jvp(lambda *t: reference_linear(*t, "relu"), (x, weight, bias), tangents)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tangent, ref_tangent)
    launches = count_launches(monkeypatch)
    with fusedgrad.backend(backend):
        batched = torch.func.vmap(lambda rows: fusedgrad.linear(rows, weight, bias))(x.reshape(2, 3, 5))
    torch.testing.assert_close(batched, F.linear(x, weight, bias).reshape(2, 3, 3))
    assert launches == ([] if backend == "aten" else ["linear_unchecked"])  # the batch's rows in one launch


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_mlp_forward_and_backward(backend, monkeypatch):
    """An MLP compiles in one graph of fusedgrad::linear ops, and its values and gradients
    match eager; on Triton the compiled backward runs the weight-and-bias launch."""
    torch._dynamo.reset()
    device = BACKENDS[backend]
    model = fusedgrad.nn.MLP([5, 8, 6, 3], device=device)
    x, target = torch.randn(7, 5, device=device), torch.randn(7, 3, device=device)

    def step(x, target):
        return fusedgrad.mse_loss(model(x), target)

    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm

    with fusedgrad.backend(backend):
        eager_loss = step(x, target)
        eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
        launches = count_launches(monkeypatch)
        compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
        loss = compiled(x, target)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        launches = list(launches)
        torch.compile(step, backend=recording, fullgraph=True)(x, target)
    torch.testing.assert_close(loss, eager_loss)
    for got, ref in zip(grads, eager_grads):
        torch.testing.assert_close(got, ref)
    assert "fusedgrad.linear" in graphs[0].code
    if backend == "triton":
        assert launches.count("weight_and_bias_grad_unchecked") == 3 and launches.count("linear_unchecked") == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_of_an_mlp(backend):
    device = BACKENDS[backend]
    model = fusedgrad.nn.MLP([5, 8, 3], device=device)
    x = torch.randn(4, 5, device=device)
    with fusedgrad.backend(backend):
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), model(x))
    assert "fusedgrad.linear" in str(exported.graph)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_as_f_linear(backend):
    """Under autocast the product, bias included, computes in the autocast dtype, as F.linear;
    gradients reach the float32 leaves in float32."""
    device = BACKENDS[backend]
    dtype = torch.float16 if backend == "triton" else torch.bfloat16  # the interpreter's bf16 dots are wrong
    x = torch.randn(4, 16, device=device)
    weight, bias = torch.randn(8, 16, device=device).requires_grad_(), torch.randn(8, device=device).requires_grad_()
    with fusedgrad.backend(backend), torch.autocast(device, dtype=dtype):
        out = fusedgrad.linear(x, weight, bias, "relu")
        op_out = torch.ops.fusedgrad.linear(x, weight, bias, "relu")
        expected = F.linear(x, weight, bias)
    assert out.dtype == op_out.dtype == expected.dtype == dtype
    assert_close(out, F.linear(x.double(), weight.double(), bias.double()).relu(),
                 "float16" if dtype == torch.float16 else "bfloat16")
    with fusedgrad.backend(backend):
        out.float().sum().backward()
    assert weight.grad.dtype == bias.grad.dtype == torch.float32


def test_refusals_name_the_argument():
    x, weight, bias = torch.randn(4, 3), torch.randn(5, 3), torch.randn(5)
    cases = [
        ((x, weight, bias, "gelu"), ValueError, "activation"),
        ((x, weight, bias, True), ValueError, "activation"),
        ((x, weight.double(), bias), TypeError, "weight"),
        ((x, weight, bias.double()), TypeError, "bias"),
        ((x, weight, torch.randn(4)), ValueError, "bias"),
        ((x, weight, torch.randn(5, 1)), ValueError, "bias"),
        ((x, torch.randn(5, 4), bias), ValueError, "in_features"),
        ((x, torch.randn(5), bias), ValueError, "weight"),
        ((x.int(), weight, bias), TypeError, "input"),
        ((x, "weight", bias), TypeError, "weight"),
        ((x, weight, torch.randn(5, device="meta")), ValueError, "devices differ"),
    ]
    for backend in BACKENDS:
        with fusedgrad.backend(backend):
            for args, error, name in cases:
                # (the dispatcher itself refuses arguments of the wrong Python type to the op)
                schema_typed = isinstance(args[1], torch.Tensor) and not any(isinstance(a, bool) for a in args[3:])
                for call in (fusedgrad.linear, torch.ops.fusedgrad.linear) if schema_typed else (fusedgrad.linear,):
                    with pytest.raises(error, match=name):
                        call(*args)


def test_linear_module_is_torch_linear():
    """Same parameters, names, initialisation (for the same seed) and state_dict as
    nn.Linear, loadable both ways; the activation is an argument of its own."""
    torch.manual_seed(3)
    ours = fusedgrad.nn.Linear(6, 4, activation="relu", dtype=torch.float64)
    torch.manual_seed(3)
    theirs = nn.Linear(6, 4, dtype=torch.float64)
    assert isinstance(ours, nn.Linear)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor)
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x).relu())
    theirs.load_state_dict(nn.Linear(6, 4, dtype=torch.float64).state_dict())
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x).relu())
    assert fusedgrad.nn.Linear(6, 4, bias=False).bias is None
    assert "activation='relu'" in repr(ours)
    with pytest.raises(ValueError, match="activation"):
        fusedgrad.nn.Linear(6, 4, activation="tanh")


@pytest.mark.parametrize("sizes", [[5, 3], [5, 8, 3], [5, 8, 6, 3], [5, 8, 7, 6, 4, 3]], ids=lambda s: f"depth{len(s) - 1}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_mlp_trains_as_nn_sequential_with_torch_sgd(backend, sizes):
    """Depths 1, 2, 3 and 5: three autograd steps with fusedgrad.optim.SGD (momentum,
    Nesterov, weight decay) equal three steps of float64 nn.Sequential with torch.optim.SGD."""
    device = BACKENDS[backend]
    model = fusedgrad.nn.MLP(sizes, device=device)
    reference = torch_mlp_twin(model)
    assert len(model) == len(sizes) - 1 and all(layer.activation == "relu" for layer in list(model)[:-1])
    assert isinstance(model[:1], nn.Sequential) and model[:1][0] is model[0]
    assert model[-1].activation is None
    rule = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)
    optimizer = fusedgrad.optim.SGD(model.parameters(), **rule)
    reference_optimizer = torch.optim.SGD(reference.parameters(), **rule)
    for _ in range(3):
        x, target = torch.randn(9, sizes[0], device=device), torch.randn(9, sizes[-1], device=device)
        with fusedgrad.backend(backend):
            optimizer.zero_grad()
            loss = fusedgrad.mse_loss(model(x), target)
            loss.backward()
            optimizer.step()
        reference_optimizer.zero_grad()
        reference_loss = F.mse_loss(reference(x.double()), target.double())
        reference_loss.backward()
        reference_optimizer.step()
        assert_close(loss, reference_loss, "float32")
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert_close(ours, theirs, "float32")


def test_mlp_layout_and_refusals():
    tutorial = fusedgrad.nn.MLP([1000, 100, 10], bias=False)
    assert [tuple(p.shape) for p in tutorial.parameters()] == [(100, 1000), (10, 100)]
    assert list(tutorial.state_dict()) == ["0.weight", "1.weight"]
    assert tutorial.sizes == (1000, 100, 10)
    for sizes, error in (([5], ValueError), (5, ValueError), ([5, -1], ValueError), ([5, 2.0], ValueError),
                         ([5, True], ValueError), ("53", ValueError)):
        with pytest.raises(error, match="sizes"):
            fusedgrad.nn.MLP(sizes)
    with pytest.raises(TypeError, match="bias"):
        fusedgrad.nn.MLP([5, 3], bias=1)
