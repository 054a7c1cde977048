"""Tier 3: needs CUDA (skipped without it; `pytest -m gpu` runs only these).

The tier-2 tests also run compiled on the GPU when CUDA is present; these add what the
interpreter cannot show: tf32 versus IEEE fp32 dots, bf16, a full training run and an operand
beyond 2**31 elements.
"""


import pytest
import torch

import fusedgrad
from fusedgrad.train import TrainConfig, train
from helpers import assert_close, make_operand, relu_matmul_float64, torch_fp32_setting, torch_mlp_twin

pytestmark = pytest.mark.gpu


def relative_error(actual, reference):
    return ((actual.double().cpu() - reference).norm() / reference.norm()).item()


def fused_and_aten(a, b, grad_out):
    results = []
    for name in ("triton", "aten"):
        la, lb = a.detach().requires_grad_(), b.detach().requires_grad_()
        with fusedgrad.backend(name):
            out = fusedgrad.mm_relu(la, lb)
        out.backward(grad_out)
        results.append((out, la.grad, lb.grad))
    return results


@pytest.mark.parametrize("precision, dtype", [("float32", torch.float32), ("tf32", torch.float32),
                                              ("float16", torch.float16), ("bfloat16", torch.bfloat16)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_precisions_match_float64_and_cublas(precision, dtype, layout):
    a = make_operand(300, 1000, dtype, "cuda", layout)
    b = make_operand(1000, 260, dtype, "cuda")
    grad_out = torch.randn(300, 260, dtype=dtype, device="cuda")
    with torch_fp32_setting("tf32" if precision == "tf32" else "ieee"):
        ours, cublas = fused_and_aten(a, b, grad_out)
    # Each backend's gradients against float64 GEMMs masked by that backend's own output.
    reference = relu_matmul_float64(a, b, grad_out, mask_from=ours[0])
    reference_cublas = relu_matmul_float64(a, b, grad_out, mask_from=cublas[0])
    for mine, theirs, ref, ref_cublas in zip(ours, cublas, reference, reference_cublas):
        assert mine.dtype == dtype
        assert_close(mine, ref, precision)
        # Same setting, same precision class: our error is within 4x of cuBLAS's (or tiny).
        assert relative_error(mine, ref) <= max(4 * relative_error(theirs, ref_cublas), 1e-6)
    if precision == "tf32":  # the setting reaches the kernel: tf32 is far coarser than IEEE
        assert relative_error(ours[0], reference[0]) > 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_propagates_on_gpu(dtype):
    a = make_operand(70, 90, dtype, "cuda")
    b = make_operand(90, 50, dtype, "cuda")
    a[1, 2] = float("nan")
    b[3, 4] = float("inf")
    grad_out = torch.randn(70, 50, dtype=dtype, device="cuda")
    out, grad_a, grad_b = fused_and_aten(a, b, grad_out)[0]
    assert out.isnan().any()
    reference = relu_matmul_float64(a, b, grad_out)
    for mine, ref in zip((out, grad_a, grad_b), reference):
        assert torch.equal(mine.isnan().cpu(), ref.isnan())


def test_training_run_matches_reference_loop():
    fused = train(TrainConfig(device="cuda", backend="triton"), log=lambda line: None)
    reference = train(TrainConfig(device="cuda", reference=True), log=lambda line: None)
    assert fused.backend == "triton"
    assert fused.losses[500] < 1e-2
    for step, loss in reference.losses.items():
        assert fused.losses[step] == pytest.approx(loss, rel=5e-2), step
    torch.testing.assert_close(fused.w1, reference.w1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.w2, reference.w2, rtol=1e-4, atol=1e-4)


def test_operand_beyond_2_31_elements():
    """a has 2**31 + 2**21 elements: its row offsets overflow int32 unless computed in int64."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GiB of GPU memory")
    K = 1024
    M = 2**31 // K + 2048
    a = torch.empty(M, K, dtype=torch.float16, device="cuda").normal_()
    b = torch.randn(K, 32, dtype=torch.float16, device="cuda", requires_grad=True)
    grad_out = torch.randn(M, 32, dtype=torch.float16, device="cuda")
    with fusedgrad.backend("triton"):
        out = fusedgrad.mm_relu(a, b)
        out.backward(grad_out)
    tail = slice(M - 4096, M)  # rows whose offsets are past 2**31
    expected = torch.relu(a[tail].double() @ b.detach().double())
    assert_close(out[tail], expected.cpu(), "float16")
    mask = (out > 0).to(grad_out.dtype)
    expected_grad_b = a.T.float() @ (grad_out * mask).float()
    assert relative_error(b.grad, expected_grad_b.double().cpu()) < 3e-3


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["step", "step+graph"])
def test_fused_step_matches_reference_loop(cuda_graph):
    fused = train(TrainConfig(device="cuda", mode="step", cuda_graph=cuda_graph), log=lambda line: None)
    reference = train(TrainConfig(device="cuda", reference=True), log=lambda line: None)
    assert fused.backend == "triton" and fused.mode == "step" + (" + cuda graph" if cuda_graph else "")
    assert fused.losses[500] < 1e-2
    for step, loss in reference.losses.items():
        assert fused.losses[step] == pytest.approx(loss, rel=5e-2), step
    torch.testing.assert_close(fused.w1, reference.w1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.w2, reference.w2, rtol=1e-4, atol=1e-4)


def _tutorial_tensors(seed=0):
    from fusedgrad.train import make_problem
    x, y, w1, w2 = make_problem(TrainConfig(seed=seed), torch.device("cuda"), torch.float32)
    return x, y, w1.detach(), w2.detach()


def test_graph_replay_equals_eager_fused_steps_bitwise():
    x, y, w1, w2 = _tutorial_tensors()
    w1_eager, w2_eager = w1.clone(), w2.clone()
    lr = torch.tensor(1e-6, device="cuda")
    graphed = fusedgrad.CUDAGraphStep(x, y, w1, w2, lr)
    for step in range(20):
        if step == 10:
            graphed.lr.fill_(5e-7)  # a new rate reaches the captured graph
            lr.fill_(5e-7)
        loss_graph = graphed.replay().clone()
        with fusedgrad.backend("triton"):
            loss_eager = fusedgrad.train_step(x, y, w1_eager, w2_eager, lr)
        assert torch.equal(loss_graph, loss_eager), step
    assert torch.equal(w1, w1_eager) and torch.equal(w2, w2_eager)


def count_gpu_work(fn):
    """Kernels, memcpys and memsets one call of `fn` puts on the GPU (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    fn()  # compile and warm up first
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def test_fused_step_is_five_kernel_launches():
    x, y, w1, w2 = _tutorial_tensors()
    with fusedgrad.backend("triton"):
        names = count_gpu_work(lambda: fusedgrad.train_step(x, y, w1, w2, 1e-6))
    assert len(names) == 5, names
    assert all("_matmul_kernel" in name for name in names), names


def test_loss_is_deterministic_on_gpu():
    def run():
        x, y, w1, w2 = _tutorial_tensors(seed=5)
        with fusedgrad.backend("triton"):
            return [fusedgrad.train_step(x, y, w1, w2, 1e-6) for _ in range(20)]
    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    big = torch.randn(3000, 1000, device="cuda")
    with fusedgrad.backend("triton"):
        losses = [fusedgrad.mse_loss(big, torch.zeros_like(big)) for _ in range(5)]
    assert all(torch.equal(loss, losses[0]) for loss in losses)


def test_auto_leaves_ieee_fp32_products_to_cublas():
    """Under "auto", float32 mm_relu at IEEE precision is ATen's result bit for bit; at tf32 and
    with "tf32x3" it is Triton's."""
    a, b = torch.randn(200, 300, device="cuda"), torch.randn(300, 100, device="cuda")
    for torch_setting, ours, expected in [("ieee", "torch", "aten"), ("tf32", "torch", "triton"),
                                          ("ieee", "tf32x3", "triton")]:
        with torch_fp32_setting(torch_setting), fusedgrad.fp32_precision(ours):
            outputs = {}
            for name in ("auto", expected):
                with fusedgrad.backend(name):
                    outputs[name] = fusedgrad.mm_relu(a, b)
        assert torch.equal(outputs["auto"], outputs[expected]), (torch_setting, ours)
    with torch_fp32_setting("ieee"), torch.autocast("cuda", dtype=torch.bfloat16):
        under_autocast = fusedgrad.mm_relu(a, b)  # cast to bf16 as torch.mm is: then on Triton
        assert under_autocast.dtype == torch.mm(a, b).dtype == torch.bfloat16
    with fusedgrad.backend("triton"):
        assert torch.equal(under_autocast, fusedgrad.mm_relu(a.bfloat16(), b.bfloat16()))


def test_tf32x3_is_near_ieee_accuracy():
    """3xTF32 (fusedgrad.fp32_precision("tf32x3")) against IEEE fp32 and plain tf32, on data
    with a wide exponent range: its error must sit near IEEE's, far below tf32's."""
    a = torch.randn(512, 2048, device="cuda") * torch.logspace(-3, 3, 2048, device="cuda")
    b = torch.randn(2048, 384, device="cuda")
    reference = a.double().cpu() @ b.double().cpu()
    errors = {}
    for precision in ("ieee", "tf32", "tf32x3"):
        out = fusedgrad.dispatch.load_kernels().matmul(a, b, fp32_precision=precision)
        errors[precision] = relative_error(out, reference)
    print("relative error vs float64:", errors)
    assert errors["tf32x3"] < errors["tf32"] / 50
    assert errors["tf32x3"] < 10 * errors["ieee"] + 1e-7


def _split_config(split_k):
    return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, SPLIT_K=split_k, num_warps=4, num_stages=3)


def test_split_k_under_graph_replay_and_on_two_streams():
    """Split-K's tile counters and partial tiles: replayed in a CUDA graph and run concurrently
    on two streams, the results stay bitwise equal to one eager launch."""
    kernels = fusedgrad.dispatch.load_kernels()
    a, b = torch.randn(96, 4096, device="cuda"), torch.randn(4096, 64, device="cuda")
    expected = kernels.matmul(a, b, relu=True, config=_split_config(8))
    static_out = [None]
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        kernels.matmul(a, b, relu=True, config=_split_config(8))
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        static_out[0] = kernels.matmul(a, b, relu=True, config=_split_config(8))
    for _ in range(5):
        graph.replay()
        assert torch.equal(static_out[0], expected)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    outs = {0: [], 1: []}
    for _ in range(20):
        for index, stream in enumerate(streams):
            with torch.cuda.stream(stream):
                outs[index].append(kernels.matmul(a, b, relu=True, config=_split_config(8)))
    torch.cuda.synchronize()
    assert all(torch.equal(out, expected) for index in outs for out in outs[index])
    assert_close(expected, (a.double() @ b.double()).relu().cpu(), "float32")


def _kernel_grid_only(monkeypatch):
    """Every Launcher of the kernels launching through kernel[grid], as an unbound launch does."""
    from fusedgrad.kernels import gemm, mse_loss, reduce, sgd
    for launcher in (gemm._LAUNCHER, gemm._PLAIN_LAUNCHER, mse_loss._LAUNCHER, reduce._SUM_LAUNCHER, sgd._LAUNCHER):
        monkeypatch.setattr(launcher, "prebound", False)


def test_prebound_launches_are_bitwise_kernel_grid_and_safe_in_graphs_and_streams(monkeypatch):
    """The fused step and the autograd step, pre-bound and planned (the second call of each key on), give
    bitwise what kernel[grid] gives; pre-bound launches captured in a CUDA graph replay to the
    same bits, and go to whichever stream is current."""
    from fusedgrad.kernels import gemm
    batch, d_in, hidden, d_out = 64, 1000, 100, 10
    x, y = torch.randn(batch, d_in, device="cuda"), torch.randn(batch, d_out, device="cuda")
    start = [torch.randn(d_in, hidden, device="cuda") * 0.05, torch.randn(hidden, d_out, device="cuda") * 0.05]
    lr = torch.tensor(1e-4, device="cuda")  # as a captured step reads it: the same kernel variant

    def steps(count):
        w1, w2 = (w.clone() for w in start)
        losses = [fusedgrad.train_step(x, y, w1, w2, lr) for _ in range(count)]
        a, b = x.T.contiguous().T, w1.clone().requires_grad_()  # a column-major operand too
        out = fusedgrad.mm_relu(a, b)
        out.backward(torch.ones_like(out))
        return torch.stack(losses), w1, w2, out, b.grad

    with fusedgrad.backend("triton"):
        prebound = steps(3)
        assert gemm._PLAIN_LAUNCHER._bound, "the second launch of a key is pre-bound"
        with monkeypatch.context() as patch:
            _kernel_grid_only(patch)
            reference = steps(3)
        for got, expected in zip(prebound, reference):
            assert torch.equal(got, expected)
        w1, w2 = (w.clone() for w in start)
        static = fusedgrad.CUDAGraphStep(x, y, w1, w2, lr)
        losses = torch.stack([static.replay().clone() for _ in range(3)])
        torch.cuda.synchronize()
        assert torch.equal(losses, prebound[0]) and torch.equal(w1, prebound[1]) and torch.equal(w2, prebound[2])
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            w1, w2 = (w.clone() for w in start)
            on_side = torch.stack([fusedgrad.train_step(x, y, w1, w2, lr) for _ in range(3)])
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        assert torch.equal(on_side, prebound[0])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_prebound_launches_follow_the_current_device():
    a, b = torch.randn(64, 100, device="cuda:0"), torch.randn(100, 10, device="cuda:0")
    with fusedgrad.backend("triton"):
        first = fusedgrad.mm_relu(a, b)
        with torch.cuda.device(1):
            on_1 = fusedgrad.mm_relu(a.to("cuda:1"), b.to("cuda:1"))
        again = fusedgrad.mm_relu(a, b)
    assert torch.equal(on_1.cpu(), first.cpu()) and torch.equal(again, first)


def test_autotune_on_gpu_caches_and_never_tunes_in_a_capture(tmp_path):
    """Small shapes keep the candidate lists (and the compile time) short."""
    kernels = fusedgrad.dispatch.load_kernels()
    tuner = kernels.tuning.Tuner(tmp_path / "autotune.json")
    a = make_operand(48, 96, torch.bfloat16, "cuda").requires_grad_()
    b = make_operand(96, 40, torch.bfloat16, "cuda", "transposed").requires_grad_()
    grad_out = torch.randn(48, 40, dtype=torch.bfloat16, device="cuda")
    x, w = torch.randn(192, 2048, device="cuda"), torch.randn(2048, 96, device="cuda")
    kernels.matmul(x, w, relu=True)  # compile the heuristic's kernel before autotuning
    with fusedgrad.backend("triton"), fusedgrad.autotune(), fusedgrad.cache_dir(tmp_path):
        out = fusedgrad.mm_relu(a, b)
    out.backward(grad_out)
    table = tuner.entries()
    assert len(table) == 3  # forward and both masked backward variants, each tuned once
    assert all(entry["ms"] > 0 and entry["config"] in [timed[0] for timed in entry["timed"]]
               for entry in table.values())
    ref_out, ref_a, ref_b = relu_matmul_float64(a, b, grad_out, mask_from=out)
    for actual, reference in ((out, ref_out), (a.grad, ref_a), (b.grad, ref_b)):
        assert_close(actual, reference, "bfloat16")
    # A new bucket inside a capture: the heuristic's config runs, nothing is timed or written.
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = kernels.matmul(x, w, relu=True, tuner=tuner)
    graph.replay()
    torch.cuda.synchronize()
    assert len(kernels.tuning.Tuner(tuner.path).entries()) == 3
    assert_close(captured, (x.double() @ w.double()).relu().cpu(), "float32")
    # The fused step's warm-up (outside its capture) tunes its four tunable GEMMs.
    xs, ys = torch.randn(16, 256, device="cuda"), torch.randn(16, 16, device="cuda")
    w1, w2 = torch.randn(256, 32, device="cuda") * 0.1, torch.randn(32, 16, device="cuda") * 0.1
    with fusedgrad.autotune(), fusedgrad.cache_dir(tmp_path):
        step = fusedgrad.CUDAGraphStep(xs, ys, w1, w2, 1e-3)
    assert len(kernels.tuning.Tuner(tuner.path).entries()) == 3 + 4
    assert torch.isfinite(step.replay()).item()


def test_reduce_overhead_compile_replays_fusedgrad_kernels_in_cuda_graphs():
    """torch.compile(mode="reduce-overhead") of the tutorial's forward and backward on
    fusedgrad's ops: Inductor's CUDA graphs hold the Triton kernels (the profiled steps run
    them on the GPU with no host launch of theirs: Triton launches through the driver API's
    cuLaunchKernel, ATen and graph replays do not), and the losses match eager's to fp32
    rounding."""
    torch._dynamo.reset()
    models = [fusedgrad.TwoLayerNet(100, 50, 10, device="cuda", generator=torch.Generator().manual_seed(0))
              for _ in range(2)]
    x, y = torch.randn(64, 100, device="cuda"), torch.randn(64, 10, device="cuda")

    def loss_of(model):
        return lambda x, y: fusedgrad.mse_loss(model(x), y, reduction="sum")

    compiled, eager = torch.compile(loss_of(models[0]), mode="reduce-overhead"), loss_of(models[1])

    def step(model, loss_fn):
        loss = loss_fn(x, y)
        loss.backward()
        with torch.no_grad():  # ATen's update, outside the graphs: only fusedgrad's kernels are counted
            for w in model.parameters():
                w -= 1e-5 * w.grad
                w.grad = None
        return loss.detach().clone()

    with fusedgrad.backend("triton"):
        losses = [(step(models[0], compiled), step(models[1], eager)) for _ in range(4)]  # warm-up, record
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as profile:
            for _ in range(3):
                step(models[0], compiled)
            torch.cuda.synchronize()
    names = [event.name for event in profile.events()]
    assert sum("_matmul_kernel" in name for name in names) >= 3 * 5  # run on the GPU: 2 forward, 3 backward
    assert not [name for name in names if name.startswith("cuLaunchKernel")], "fusedgrad launched from the host"
    assert any("cudaGraphLaunch" in name for name in names)
    for ours, theirs in losses:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)


def _mlp_problem(dtype, loss="mse", bias=True, sizes=(256, 512, 512, 64)):
    torch.manual_seed(0)
    model = fusedgrad.nn.MLP(list(sizes), bias=bias, device="cuda", dtype=dtype)
    x = torch.randn(128, sizes[0], device="cuda", dtype=dtype)
    target = (torch.randn(128, sizes[-1], device="cuda", dtype=dtype) if loss == "mse"
              else torch.randint(0, sizes[-1], (128,), device="cuda"))
    return model, x, target


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype, precision", [(torch.float32, "float32"), (torch.bfloat16, "bfloat16")])
def test_mlp_step_matches_the_eager_loop_on_gpu(dtype, precision, loss):
    """Three fused MLP steps (bias, momentum, Nesterov, weight decay) against float64 nn.Sequential
    + torch.optim.SGD from the same parameters; the loss before each update."""
    from test_mlp_step import eager_step
    model, x, target = _mlp_problem(dtype, loss)
    reference = torch_mlp_twin(model)
    rule = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    optimizer = torch.optim.SGD(model.parameters(), **rule)
    reference_optimizer = torch.optim.SGD(reference.parameters(), **rule)
    for _ in range(3):
        with fusedgrad.backend("triton"):
            step_loss = model.train_step(x, target, optimizer, loss=loss)
        reference_target = target.double().cpu() if loss == "mse" else target.cpu()
        reference_loss = eager_step(reference, reference_optimizer, x.double().cpu(), reference_target, "mean", loss)
        assert_close(step_loss, reference_loss, precision)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert_close(ours, theirs, precision, scale=3 * theirs.norm().item())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_mlp_graph_replay_equals_eager_steps_bitwise(momentum):
    """MLP.cuda_graph_step: replays (the first one a buffer's first step) give the same loss,
    parameters and momentum buffers, bit for bit, as un-graphed steps on a twin; a changed rate
    is refused."""
    model, x, target = _mlp_problem(torch.bfloat16)
    twin, _, _ = _mlp_problem(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=momentum)
    with fusedgrad.backend("triton"):
        graph_step = model.cuda_graph_step(x, target, optimizer)
        for _ in range(3):
            loss = graph_step.replay()
            twin_loss = twin.train_step(x, target, twin_optimizer)
            assert torch.equal(loss, twin_loss)
    for ours, theirs in zip(model.parameters(), twin.parameters()):
        assert torch.equal(ours, theirs)
        if momentum:
            assert torch.equal(optimizer.state[ours]["momentum_buffer"], twin_optimizer.state[theirs]["momentum_buffer"])
    optimizer.param_groups[0]["lr"] = 0.02
    with pytest.raises(RuntimeError, match="groups changed"):
        graph_step.replay()


def test_mlp_step_launch_count(monkeypatch):
    """3L - 1 GEMM launches and one bias launch for L layers, nothing read back to the host."""
    kernels = fusedgrad.dispatch.load_kernels()
    launches = []
    for module, name in ((kernels.gemm, "launch"), (kernels.sgd, "sgd_step_unchecked")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, original=original, name=name, **k:
                            launches.append(name) or original(*a, **k))
    model, x, target = _mlp_problem(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with fusedgrad.backend("triton"):
        model.train_step(x, target, optimizer)  # the buffers' first step
        assert launches == ["launch"] * (3 * len(model) - 1) + ["sgd_step_unchecked"]
        names = count_gpu_work(lambda: model.train_step(x, target, optimizer))
    assert len(names) == 3 * len(model), names  # the GPU runs those kernels and nothing else
    assert sum("_matmul_kernel" in name for name in names) == 3 * len(model) - 1, names


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_data_parallel_steps_on_nccl_and_captured_in_graphs():
    """`distributed_checks.py 2 nccl`: on GPUs 0 and 1 with NCCL, the data-parallel fused steps
    equal the one-process step on the whole batch, and their CUDA-graph captures (collectives
    included) replay the un-graphed steps."""
    import os
    import pathlib
    import subprocess
    import sys
    script = pathlib.Path(__file__).resolve().parent / "distributed_checks.py"
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(script), "2", "nccl"], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert [line[3:] for line in result.stdout.splitlines() if line.startswith("ok ")] == [
        f"{check} 2 ranks nccl" for check in ("check_mlp_steps", "check_tutorial_steps", "check_graph_steps")], result.stdout
