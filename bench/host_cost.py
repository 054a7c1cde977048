"""Host cost of a training step, Triton's real launch path included, on a machine without a GPU.

    python bench/host_cost.py               # writes bench/out/host_cost.json
    python bench/host_cost.py --quick       # fewer calls: a smoke test (the test suite runs it)

At the tutorial's size an un-graphed step is host-bound: what the GPU waits for is Python,
torch's dispatcher and Triton's launch path. This measures that host time on the CPU. Triton's
active driver is replaced by `stub_driver` (run with TRITON_INTERPRET unset): the kernels
compile for sm_90 with the ptxas Triton ships, every launch goes through Triton's normal Python
path, and only the driver's launch call does nothing. The tensors are CPU tensors of the
tutorial's shapes; fusedgrad routes them to its Triton path as it would CUDA tensors.

Timed in one process, interleaved (a round times each case in turn; the result is the median
over rounds of each round's mean), one thread:
    eager_step_us      the tutorial's eager step (autograd, torch ops, `w -= lr * w.grad`) on tiny
                       CPU tensors (4 x 8 x 8 x 4), so its compute is negligible: eager's host cost
    autograd_step_us   fusedgrad's autograd step: mm_relu, mm, mse_loss, backward, SGD step, zero_grad
    fused_step_us      `fusedgrad.train_step`, no CUDA graph
    gemm_launch_us     `fusedgrad.kernels.gemm.launch` alone, per GEMM of the step
    floor_step_us      the autograd step's skeleton: its three autograd Functions (fusedgrad's
                       cheaper `apply`) doing nothing but allocate their outputs and gradients,
                       then `zero_grad`: no check, dispatch, launch or update. What any step
                       built of Python autograd Functions costs before its own work
with `launches` counting the driver launch calls each case makes (what proves the path ran).
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import timeit

import common

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("host_cost.py drives Triton's real launch path: unset TRITON_INTERPRET")

import stub_driver  # noqa: E402  (imports triton, with the interpreter off)

import torch  # noqa: E402

EAGER_SHAPE = common.Shape(batch=4, d_in=8, hidden=8, d_out=4)


def pretend_gpu() -> stub_driver.StubDriver:
    """Install the stub driver and let fusedgrad take its Triton path on CPU tensors, choosing
    tiles as for a 132-multiprocessor GPU."""
    driver = stub_driver.install()
    from fusedgrad import kernels
    from fusedgrad.kernels import tuning
    tuning.multiprocessors = lambda index: stub_driver.MULTIPROCESSORS
    tuning.device_index = lambda device: 0
    # dispatch sends CPU tensors to Triton only when the interpreter runs the kernels; here the
    # compiled kernels "run" on CPU tensors, so the package says so for dispatch's question alone.
    kernels.INTERPRETED = True
    return driver


def gemm_cases() -> dict:
    """The autograd step's five GEMM launches: name -> a callable making it."""
    from fusedgrad.kernels import gemm
    batch, d_in, hidden, d_out = common.TUTORIAL
    x, w1, w2 = torch.randn(batch, d_in), torch.randn(d_in, hidden), torch.randn(hidden, d_out)
    h, grad_y = torch.randn(batch, hidden).relu(), torch.randn(batch, d_out)
    launches = {"relu(x @ w1)": (x, w1, torch.empty(batch, hidden), dict(epilogue="relu")),
                "h @ w2": (h, w2, torch.empty(batch, d_out), {}),
                "grad_y @ w2.T": (grad_y, w2.T, torch.empty(batch, hidden), {}),
                "h.T @ grad_y": (h.T, grad_y, torch.empty(hidden, d_out), {}),
                "(relu'(h) * grad_h).T @ x": (h.T, x, torch.empty(hidden, d_in),
                                              dict(mask_operand=gemm.MASK_A, gate=h.T))}
    return {name: functools.partial(gemm.launch, a, b, c, **options) for name, (a, b, c, options) in launches.items()}


def floor_step():
    """The autograd step of the tutorial's shapes as Python autograd Functions that only
    allocate: forward saves what fusedgrad's Functions save, backward allocates the gradients."""
    from fusedgrad.function import Function
    from fusedgrad.train import TrainConfig, make_problem

    class Product(Function):
        @staticmethod
        def forward(a, b):
            return torch.empty((a.shape[0], b.shape[1]))

        @staticmethod
        def setup_context(ctx, inputs, out):
            ctx.save_for_backward(*inputs, out)

        @staticmethod
        def backward(ctx, grad_out):
            a, b, _ = ctx.saved_tensors
            needs_a, needs_b = ctx.needs_input_grad
            return torch.empty(a.shape) if needs_a else None, torch.empty(b.shape) if needs_b else None

    class Loss(Function):
        @staticmethod
        def forward(input, target):
            return torch.empty(()), torch.empty(input.shape)

        @staticmethod
        def setup_context(ctx, inputs, outputs):
            ctx.save_for_backward(outputs[1])

        @staticmethod
        def backward(ctx, grad_loss, _grad_of_grad):
            return ctx.saved_tensors[0], None

    x, y, w1, w2 = make_problem(TrainConfig(), torch.device("cpu"), torch.float32)

    def step():
        loss = Loss.apply(Product.apply(Product.apply(x, w1), w2), y)[0]
        loss.backward()
        w1.grad = w2.grad = None
        return loss

    return step


def step_cases() -> dict:
    """name -> a callable running one step."""
    from fusedgrad.train import TrainConfig, make_problem, make_step
    import fusedgrad
    eager = make_problem(TrainConfig(**EAGER_SHAPE._asdict()), torch.device("cpu"), torch.float32)
    tutorial = make_problem(TrainConfig(), torch.device("cpu"), torch.float32)
    autograd = make_step("autograd", False, *tutorial, 1e-6)
    fused = make_step("step", False, *tutorial, 1e-6)

    def on_triton(step):
        def run():
            with fusedgrad.backend("triton"):
                return step()
        return run

    return {"eager_step_us": make_step("reference", False, *eager, 1e-6),
            "autograd_step_us": on_triton(autograd), "fused_step_us": on_triton(fused), "floor_step_us": floor_step()}


def time_interleaved(cases: dict, number: int, rounds: int, driver) -> tuple[dict, dict]:
    """(median µs per call, driver launches per call) of each case."""
    launches = {}
    for name, fn in cases.items():  # warm up: compile, tune, allocate
        fn()
        before = driver.launches
        fn()
        launches[name] = driver.launches - before
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(1e6 * timeit.timeit(fn, number=number) / number)
    return {name: statistics.median(values) for name, values in times.items()}, launches


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, "host_cost.json")
    parser.add_argument("--quick", action="store_true", help="few calls: checks the path, not the speed")
    parser.add_argument("--number", type=int, default=None, help="calls per case per round (default 200; quick 5)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 15; quick 2)")
    args = parser.parse_args(argv)
    number = args.number or (5 if args.quick else 200)
    rounds = args.rounds or (2 if args.quick else 15)
    torch.set_num_threads(1)
    driver = pretend_gpu()
    gemms = gemm_cases()
    cases = step_cases()
    cases.update({f"gemm {name}": launch for name, launch in gemms.items()})
    times, launches = time_interleaved(cases, number, rounds, driver)
    result = {name: times[name] for name in ("eager_step_us", "autograd_step_us", "fused_step_us", "floor_step_us")}
    result["gemm_launch_us"] = [{"gemm": name, "us": times[f"gemm {name}"]} for name in gemms]
    result["launches"] = launches
    result["autograd_vs_eager"] = result["autograd_step_us"] / result["eager_step_us"]
    result["fused_vs_eager"] = result["fused_step_us"] / result["eager_step_us"]
    result["floor_vs_eager"] = result["floor_step_us"] / result["eager_step_us"]
    result.update(number=number, rounds=rounds, quick=args.quick, launcher=driver.launcher_cls.__name__,
                  multiprocessors=stub_driver.MULTIPROCESSORS)
    for name, us in times.items():
        print(f"{name:40s} {us:7.1f} µs   {launches[name]} launches")
    print(f"autograd step / eager step {result['autograd_vs_eager']:.2f}   "
          f"fused step / eager step {result['fused_vs_eager']:.2f}   floor / eager step {result['floor_vs_eager']:.2f}")
    common.write_result(args.json, result, torch.device("cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
