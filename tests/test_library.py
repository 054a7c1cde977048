"""fusedgrad's ops as torch.library operators, on both backends (Triton interpreted on CPU,
compiled on CUDA): `opcheck` of every op, torch.compile (fullgraph, aot_eager and inductor,
forward and backward), torch.export, autocast through the dispatcher, meta tensors, and the
version counters of the in-place ops."""

import pytest
import torch
from torch.library import opcheck

import fusedgrad
from helpers import assert_close, kernel_device

BACKENDS = {"aten": "cpu", "triton": kernel_device()}
OPS = ("gemm", "mm_relu", "mm", "linear", "weight_and_bias_grad", "mse_loss", "mse_loss_and_grad", "sgd_",
       "train_step_")


def leaf(*shape, device):
    return torch.randn(*shape, device=device).requires_grad_()


def op_cases(device):
    """(op name, args, kwargs) covering each op's arguments: every mask of gemm, every reduction."""
    a, b = leaf(5, 7, device=device), leaf(7, 3, device=device)
    mask_of = {"a_relu_mask": (5, 7), "b_relu_mask": (7, 3), "out_relu_mask": (5, 3)}
    prediction, target = leaf(5, 3, device=device), torch.randn(5, 3, device=device)
    transposed = torch.randn(3, 5, device=device).T.requires_grad_()  # outputs contiguous all the same
    params = [torch.randn(4, 3, device=device), torch.randn(6, device=device)]
    grads = [torch.randn_like(p) for p in params]
    x, y = torch.randn(6, 5, device=device), torch.randn(6, 2, device=device)
    w1, w2 = torch.randn(5, 4, device=device), torch.randn(4, 2, device=device)
    return [
        ("gemm", (a, b), {}),
        ("gemm", (a, b), {"relu": True}),
        *[("gemm", (a, b), {name: torch.randn(shape, device=device)}) for name, shape in mask_of.items()],
        ("mm_relu", (a, b), {}),
        ("mm", (a, b), {}),
        *[("linear", (a, leaf(4, 7, device=device), bias), {"activation": activation})
          for bias in (None, leaf(4, device=device)) for activation in (None, "relu")],
        ("linear", (transposed, leaf(4, 3, device=device).detach().T.contiguous().T), {}),
        *[("weight_and_bias_grad", (leaf(5, 4, device=device), a, relu_out), {})
          for relu_out in (None, torch.randn(5, 4, device=device).relu())],
        *[("mse_loss", (prediction, target), {"reduction": r}) for r in ("mean", "sum", "none")],
        ("mse_loss_and_grad", (prediction, target, True), {}),
        ("mse_loss_and_grad", (transposed, target, False), {}),
        ("mse_loss", (transposed, target), {"reduction": "none"}),
        ("sgd_", (params, grads, [None] * len(params), [0.1] * len(params), []), {}),
        ("sgd_", (params, grads, [torch.tensor(0.1, device=device)] * len(params), [0.0] * len(params), []), {}),
        ("sgd_", (params, grads, [None, torch.tensor(0.2, device=device)] + [None] * (len(params) - 2),
                  [0.1, 0.0] + [0.3] * (len(params) - 2), []), {}),  # a rate per parameter: several groups
        # momentum on the second parameter only (one buffer), fresh; then weight decay, Nesterov and
        # maximize on a buffer that has been written
        ("sgd_", (params, grads, [None] * 2, [0.1] * 2, [torch.empty(6, device=device)], [0.0, 0.9], [], [], [],
                  [], [False, True]), {}),
        ("sgd_", (params, grads, [None] * 2, [0.1] * 2, [torch.randn(6, device=device)], [0.0, 0.9], [0.0, 0.0],
                  [0.01, 0.02], [False, True], [True, True], [False, False]), {}),
        ("train_step_", (x, y, w1, w2, None, 1e-3), {}),
    ]


def test_every_op_is_registered():
    for name in OPS:
        assert isinstance(getattr(torch.ops.fusedgrad, name), torch._ops.OpOverloadPacket)
    schema = str(torch.ops.fusedgrad.mse_loss.default._schema)
    assert schema == 'fusedgrad::mse_loss(Tensor input, Tensor target, str reduction="mean") -> Tensor'
    assert "Tensor(a!)[] params" in str(torch.ops.fusedgrad.sgd_.default._schema)
    assert "Tensor(a!) w1, Tensor(b!) w2" in str(torch.ops.fusedgrad.train_step_.default._schema)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_passes_for_every_op(backend):
    """torch.library.opcheck: schema (what is mutated, aliasing), autograd registration, fake
    tensor (meta) implementation, and AOT dispatch with dynamic shapes."""
    checked = set()
    with fusedgrad.backend(backend):
        for name, args, kwargs in op_cases(BACKENDS[backend]):
            results = opcheck(getattr(torch.ops.fusedgrad, name).default, args, kwargs)
            assert set(results.values()) == {"SUCCESS"}, (name, kwargs, results)
            checked.add(name)
    assert checked == set(OPS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_tensors_give_shapes_and_dtypes(backend):
    a, b = torch.empty(5, 7, device="meta"), torch.empty(7, 3, device="meta")
    with fusedgrad.backend(backend):
        assert torch.ops.fusedgrad.mm_relu(a, b).shape == fusedgrad.mm_relu(a, b).shape == (5, 3)
        loss = torch.ops.fusedgrad.mse_loss(torch.empty(4, 2, device="meta", dtype=torch.bfloat16),
                                            torch.empty(4, 2, device="meta"))
        assert loss.shape == () and loss.dtype == torch.float32  # promoted, as F.mse_loss
        step_loss = fusedgrad.train_step(torch.empty(6, 5, device="meta"), torch.empty(6, 3, device="meta"),
                                         torch.empty(5, 4, device="meta"), torch.empty(4, 3, device="meta"), 0.1)
        assert step_loss.shape == () and step_loss.is_meta
        with pytest.raises(ValueError, match="inner dimensions differ"):
            torch.ops.fusedgrad.mm(a, a)


def test_operators_under_torch_func_raise_and_name_the_public_function():
    a, b = torch.randn(4, 3), torch.randn(3, 2)
    with pytest.raises(RuntimeError, match="call fusedgrad.mm_relu instead"):
        torch.func.grad(lambda a: torch.ops.fusedgrad.mm_relu(a, b).sum())(a)
    with pytest.raises(RuntimeError, match="call fusedgrad.mse_loss instead"):
        torch.func.grad(lambda a: torch.ops.fusedgrad.mse_loss(a, b.T))(a)
    assert torch.func.grad(lambda a: fusedgrad.mm_relu(a, b).sum())(a).shape == (4, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inductor_takes_a_strided_prediction(backend):
    """The fakes promise what the kernels return (contiguous gradients), so Inductor's layout
    checks hold for a transposed prediction too."""
    torch._dynamo.reset()
    device = BACKENDS[backend]
    x, target = torch.randn(3, 5, device=device, requires_grad=True), torch.randn(5, 3, device=device)
    with fusedgrad.backend(backend):
        loss = torch.compile(lambda x, t: fusedgrad.mse_loss(x.T * 1.0, t), fullgraph=True)(x, target)
        loss.backward()
    assert_close(x.grad.T, 2 * (x.detach().T.double() - target.double()) / 15, "float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_step_loss_is_float32_for_16_bit_inputs(backend):
    """The fused step's loss is summed and returned in float32 for 16-bit inputs on both
    backends (a float16 sum of squares overflows at the tutorial's scale)."""
    device = BACKENDS[backend]
    def near(value, *shape):  # entries near `value`: every output is about 320, its square past 65504
        return (value + 0.1 * torch.randn(*shape)).to(device, torch.float16)

    x, y, w1, w2 = near(4.0, 6, 5), torch.zeros(6, 3, device=device, dtype=torch.float16), near(2.0, 5, 4), near(2.0, 4, 3)
    expected = (torch.relu(x.double() @ w1.double()) @ w2.double()).square().sum()
    with fusedgrad.backend(backend):
        loss = fusedgrad.train_step(x, y, w1, w2, 0.0)
    assert loss.dtype == torch.float32 and expected > 65504  # beyond float16's range
    assert_close(loss, expected, "float16")


def tutorial(x, y, w1, w2):
    return fusedgrad.mse_loss(fusedgrad.mm(fusedgrad.mm_relu(x, w1), w2), y, reduction="sum")


def tutorial_torch(x, y, w1, w2):
    return torch.nn.functional.mse_loss(torch.relu(x @ w1) @ w2, y, reduction="sum")


def tutorial_problem(device):
    return (torch.randn(6, 5, device=device), torch.randn(6, 3, device=device),
            leaf(5, 4, device=device), leaf(4, 3, device=device))


def float64_copies(*tensors):
    return [t.detach().double().cpu().requires_grad_(t.requires_grad) for t in tensors]


def count_launches(monkeypatch) -> list:
    """Calls of the Triton GEMM and loss launchers, from here on."""
    kernels, calls = fusedgrad.dispatch.load_kernels(), []
    for name in ("matmul_unchecked", "mse_loss_and_grad"):
        launcher = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *args, launcher=launcher, name=name, **kwargs:
                            calls.append(name) or launcher(*args, **kwargs))
    return calls


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_forward_and_backward(backend, compiler, monkeypatch):
    """A function and a module on fusedgrad's ops compile in one graph, and their values and
    gradients match float64 torch; on the Triton backend the compiled code runs the Triton
    kernels, forward and backward."""
    torch._dynamo.reset()
    x, y, w1, w2 = tutorial_problem(BACKENDS[backend])
    compiled = torch.compile(tutorial, backend=compiler, fullgraph=True)
    launches = count_launches(monkeypatch)
    with fusedgrad.backend(backend):
        loss = compiled(x, y, w1, w2)
        loss.backward()
    # forward: two products and the loss; backward: grad_w2, grad_h and grad_w1 (x needs none)
    assert sorted(launches) == ([] if backend == "aten" else ["matmul_unchecked"] * 5 + ["mse_loss_and_grad"])
    x64, y64, w1_64, w2_64 = float64_copies(x, y, w1, w2)
    expected = tutorial_torch(x64, y64, w1_64, w2_64)
    expected.backward()
    assert_close(loss, expected, "float32")
    assert_close(w1.grad, w1_64.grad, "float32")
    assert_close(w2.grad, w2_64.grad, "float32")

    model = fusedgrad.TwoLayerNet(5, 4, 3, device=x.device)
    compiled_model = torch.compile(model, backend=compiler, fullgraph=True)
    with fusedgrad.backend(backend):
        out = compiled_model(x)
        out.square().sum().backward()
    reference = fusedgrad.TwoLayerNet(5, 4, 3).double()
    reference.load_state_dict({k: v.detach().double().cpu() for k, v in model.state_dict().items()})
    torch_out = torch.relu(x.double().cpu() @ reference.w1) @ reference.w2
    torch_out.square().sum().backward()
    assert_close(out, torch_out, "float32")
    assert_close(model.w1.grad, reference.w1.grad, "float32")


def test_compiled_graph_holds_fusedgrad_ops():
    """What Dynamo hands its backend: the fusedgrad ops themselves, not their insides."""
    torch._dynamo.reset()
    seen = []

    def backend(graph_module, example_inputs):
        seen.extend(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return graph_module

    x, y, w1, w2 = tutorial_problem("cpu")
    torch.compile(tutorial, backend=backend, fullgraph=True)(x, y, w1, w2)
    assert {"fusedgrad.mm_relu", "fusedgrad.mm", "fusedgrad.mse_loss"} <= set(seen), seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_of_the_tutorial_net(backend):
    model = fusedgrad.TwoLayerNet(5, 4, 3, device=BACKENDS[backend])
    x = torch.randn(6, 5, device=BACKENDS[backend])
    with fusedgrad.backend(backend):
        exported = torch.export.export(model, (x,))
        targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
        assert targets == ["fusedgrad.mm_relu.default", "fusedgrad.mm.default"]
        fresh = torch.randn(6, 5, device=x.device)
        assert_close(exported.module()(fresh), torch.relu(fresh.double() @ model.w1.double()) @ model.w2.double(),
                     "float32")


@pytest.mark.parametrize("rule", [{}, dict(momentum=0.9, nesterov=True, weight_decay=0.01)], ids=["plain", "momentum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_training_step_with_the_optimizer(backend, rule):
    """A whole autograd step compiled, optimizer included: the in-place update (and with
    momentum the buffers, made on the first compiled step) is functionalized and written back,
    and the weights and buffers match eager's."""
    torch._dynamo.reset()
    device = BACKENDS[backend]
    x, y, w1, w2 = tutorial_problem(device)
    eager_w1, eager_w2 = (w.detach().clone().requires_grad_() for w in (w1, w2))

    def step(x, y, w1, w2, optimizer):
        loss = tutorial(x, y, w1, w2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    with fusedgrad.backend(backend):
        compiled = torch.compile(step, backend="aot_eager")
        optimizer = fusedgrad.optim.SGD([w1, w2], lr=1e-3, **rule)
        eager_optimizer = fusedgrad.optim.SGD([eager_w1, eager_w2], lr=1e-3, **rule)
        for _ in range(3):
            compiled(x, y, w1, w2, optimizer)
            step(x, y, eager_w1, eager_w2, eager_optimizer)
    torch.testing.assert_close(w1, eager_w1)
    torch.testing.assert_close(w2, eager_w2)
    for w, eager_w in ((w1, eager_w1), (w2, eager_w2)):
        assert optimizer.state[w].keys() == eager_optimizer.state[eager_w].keys() == (
            {"momentum_buffer"} if rule else set())
        if rule:
            torch.testing.assert_close(optimizer.state[w]["momentum_buffer"],
                                       eager_optimizer.state[eager_w]["momentum_buffer"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_fused_step_writes_its_weights(backend):
    torch._dynamo.reset()
    device = BACKENDS[backend]
    x, y = torch.randn(6, 5, device=device), torch.randn(6, 3, device=device)
    w1, w2 = torch.randn(5, 4, device=device), torch.randn(4, 3, device=device)
    ref = [t.clone() for t in (x, y, w1, w2)]
    with fusedgrad.backend(backend):
        loss = torch.compile(fusedgrad.train_step, backend="aot_eager", fullgraph=True)(x, y, w1, w2, 1e-3)
    expected = fusedgrad.train_step_reference(*ref, 1e-3)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(w1, ref[2])
    torch.testing.assert_close(w2, ref[3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_ops_bump_version_counters(backend):
    """A tensor autograd saved, then updated in place by the fused step or the optimizer,
    makes backward raise, as after torch's own in-place ops."""
    device = BACKENDS[backend]
    with fusedgrad.backend(backend):
        w = leaf(4, 3, device=device)
        out = torch.mm(torch.randn(2, 4, device=device), w * 1.0).sum()
        weight = w.detach()
        saved = torch.randn(4, 3, device=device, requires_grad=True)
        product = (saved * weight).sum()  # saves weight for saved's gradient
        before = weight._version
        w.grad = torch.ones_like(w)
        fusedgrad.optim.SGD([w], lr=0.1).step()
        assert weight._version > before
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            product.backward()
        out.backward()

        x, y = torch.randn(6, 5, device=device), torch.randn(6, 3, device=device)
        w1, w2 = torch.randn(5, 4, device=device), torch.randn(4, 3, device=device)
        versions = (w1._version, w2._version)
        fusedgrad.train_step(x, y, w1, w2, 1e-3)
        assert w1._version > versions[0] and w2._version > versions[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_through_the_dispatcher(backend):
    """Calling the ops directly (as a compiled graph does): under autocast the products
    compute in the autocast dtype and the loss in float32, as torch.mm and F.mse_loss."""
    device = BACKENDS[backend]
    a, b = torch.randn(4, 16, device=device), torch.randn(16, 8, device=device)
    dtype = torch.float16 if backend == "triton" else torch.bfloat16  # the interpreter's bf16 dots are wrong
    with fusedgrad.backend(backend), torch.autocast(device, dtype=dtype):
        out = torch.ops.fusedgrad.mm_relu(a, b)
        loss = torch.ops.fusedgrad.mse_loss(out, torch.randn(4, 8, device=device))
        expected = torch.relu(torch.mm(a, b))
    assert out.dtype == expected.dtype == dtype and loss.dtype == torch.float32
    assert_close(out, torch.relu(a.double() @ b.double()), "float16" if dtype == torch.float16 else "bfloat16")


def float64_cases(device):
    """(name, function, inputs) in float64: each op differentiated in every argument it has a
    gradient for (a mask gets none: relu' is piecewise constant)."""
    a, b = (torch.randn(3, 4, device=device, dtype=torch.float64, requires_grad=True),
            torch.randn(4, 2, device=device, dtype=torch.float64, requires_grad=True))
    masks = {"a_relu_mask": (3, 4), "b_relu_mask": (4, 2), "out_relu_mask": (3, 2)}
    target = torch.randn(3, 2, device=device, dtype=torch.float64, requires_grad=True)
    gemm = torch.ops.fusedgrad.gemm
    return [("mm_relu", fusedgrad.mm_relu, (a, b)), ("mm", fusedgrad.mm, (a, b)),
            *[(name, lambda a, b, m=torch.randn(shape, device=device, dtype=torch.float64), name=name:
               gemm(a, b, **{name: m}), (a, b)) for name, shape in masks.items()],
            *[(f"mse_loss {r}", lambda p, t, r=r: fusedgrad.mse_loss(p, t, reduction=r), (a @ b, target))
              for r in ("mean", "sum")]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_gradcheck_and_gradgradcheck(backend, monkeypatch):
    """torch's own float64 checks of first and second derivatives (fast mode: a random
    projection of the Jacobian), on the Triton kernels themselves (their float64 path) as on ATen."""
    launches = count_launches(monkeypatch)
    with fusedgrad.backend(backend):
        for name, function, inputs in float64_cases(BACKENDS[backend]):
            inputs = tuple(t.detach().requires_grad_() for t in inputs)
            assert torch.autograd.gradcheck(function, inputs, fast_mode=True), name
            assert torch.autograd.gradgradcheck(function, inputs, fast_mode=True), name
    assert (len(launches) > 0) == (backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_under_autocast(backend):
    """An autocast region inside a compiled function: the products come out in the autocast
    dtype and the loss in float32, as in eager mode, and gradients reach float32 leaves."""
    torch._dynamo.reset()
    device = BACKENDS[backend]
    dtype = torch.float16 if backend == "triton" else torch.bfloat16  # the interpreter's bf16 dots are wrong

    def forward(x, w1, w2, y):
        with torch.autocast(device, dtype=dtype):
            out = fusedgrad.mm(fusedgrad.mm_relu(x, w1), w2)
            return out, fusedgrad.mse_loss(out, y, reduction="sum")

    x, y, w1, w2 = tutorial_problem(device)
    with fusedgrad.backend(backend):
        out, loss = torch.compile(forward, backend="aot_eager", fullgraph=True)(x, w1, w2, y)
        eager_out, eager_loss = forward(x, w1, w2, y)
        loss.backward()
    assert out.dtype == eager_out.dtype == dtype and loss.dtype == eager_loss.dtype == torch.float32
    torch.testing.assert_close(out, eager_out)
    assert w1.grad.dtype == torch.float32 and w1.grad.abs().sum() > 0
