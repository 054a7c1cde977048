"""Pre-bound launches against `kernel[grid]`, on Triton's real launch path with a stubbed driver.

    python tests/prebound_checks.py     # TRITON_INTERPRET unset; `test_launch.py` runs it

Each check launches a real kernel (compiled for sm_90) both ways and compares what reached the
driver's launch call (`bench/stub_driver.py`): grid, stream, function handle (a new one per
loaded binary, so a different compiled kernel shows) and every kernel argument. Run in a process
of its own, since the test suite turns Triton's interpreter on. Prints `ok <check>` per check;
the exit status is 1 if any failed.
"""

from __future__ import annotations

import pathlib
import sys
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))

import host_cost  # noqa: E402  (bench/host_cost.py: its GPU pretence, stub driver included)
import stub_driver  # noqa: E402

DRIVER = host_cost.pretend_gpu()

import torch  # noqa: E402
from triton import knobs  # noqa: E402

from fusedgrad.kernels import cross_entropy, gemm, mse_loss, reduce, sgd  # noqa: E402


class Recorder:
    """Stands in for a module's Launcher and keeps each call's (launcher, grid, args, variant) in
    `calls` (which several recorders may share). Plans (`Launcher.launch_plan`) are refused
    unless `planned`, so every launch is recorded."""

    def __init__(self, launcher, planned: bool = False, calls: list | None = None):
        self.launcher, self.planned = launcher, planned
        self.calls = [] if calls is None else calls
        self.prebound = launcher.prebound

    def __call__(self, grid, args, variant, plan=None):
        self.calls.append((self.launcher, grid, args, variant))
        self.launcher(grid, args, variant, plan if self.planned else None)  # refused plans: not stored either

    def launch_plan(self, plan, pointers, floats) -> bool:
        return self.planned and self.launcher.launch_plan(plan, pointers, floats)


def launches_of(module, fn, planned: bool = False) -> list:
    """The (launcher, grid, args, variant) of each launch `fn()` makes through `module`'s
    Launchers (gemm has two: its plain entry and the whole kernel), in launch order; plans are
    taken only if `planned` (else every launch is recorded)."""
    names = {gemm: ("_LAUNCHER", "_PLAIN_LAUNCHER"), reduce: ("_SUM_LAUNCHER",)}.get(module, ("_LAUNCHER",))
    launchers, calls = {name: getattr(module, name) for name in names}, []
    for name, launcher in launchers.items():
        setattr(module, name, Recorder(launcher, planned, calls))
    try:
        fn()
    finally:
        for name, launcher in launchers.items():
            setattr(module, name, launcher)
    return calls


def by_kernel_grid(launcher, grid, args, variant) -> stub_driver.Launch:
    launcher.kernel[grid](*args, **launcher.meta_of(*variant))
    return DRIVER.last_launch


def prebound(launcher, grid, args, variant) -> stub_driver.Launch:
    """The second launch of a key: the first binds it, the second is pre-bound."""
    launcher(grid, args, variant)
    before = DRIVER.launches
    launcher(grid, args, variant)
    assert DRIVER.launches == before + 1, "a pre-bound launch must reach the driver once"
    return DRIVER.last_launch


def same(x, y) -> bool:
    if isinstance(x, tuple) and isinstance(y, tuple):
        return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
    return x is y or type(x) is type(y) and x == y


def assert_same_launch(launcher, grid, args, variant, what: str) -> stub_driver.Launch:
    expected = by_kernel_grid(launcher, grid, args, variant)
    got = prebound(launcher, grid, args, variant)
    assert launcher._bound, f"{what}: nothing was bound"
    assert same(got, expected), f"{what}: pre-bound {got}\n  differs from kernel[grid] {expected}"
    return got


def tutorial_tensors():
    batch, d_in, hidden, d_out = 64, 1000, 100, 10
    return (torch.randn(batch, d_in), torch.randn(d_in, hidden), torch.randn(hidden, d_out),
            torch.randn(batch, d_out))


def check_every_tutorial_launch_is_the_same_as_kernel_grid():
    """The fused step's five GEMMs (every epilogue but relu-masked A), the autograd backward's
    gated GEMM, the loss and its partial sums, and SGD."""
    x, w1, w2, y = tutorial_tensors()
    from fusedgrad.kernels.train_step import two_layer_sgd_step
    calls = launches_of(gemm, lambda: two_layer_sgd_step(x, y, w1, w2, 1e-3))
    h = torch.randn(64, 100)
    calls += launches_of(gemm, lambda: gemm.matmul(x.T, torch.randn(64, 100), b_relu_mask=h))
    calls += launches_of(mse_loss, lambda: mse_loss.mse_loss_and_grad(y, torch.randn(64, 10), True))
    big = torch.randn(mse_loss.SINGLE_PROGRAM_MAX + 5)
    calls += launches_of(reduce, lambda: mse_loss.mse_loss_and_grad(big, torch.randn_like(big), False))
    calls += launches_of(sgd, lambda: sgd.sgd_step([w1, w2], [torch.randn_like(w1), torch.randn_like(w2)], 1e-3))
    calls += launches_of(sgd, lambda: sgd.sgd_step([w1.double()], [w1.double()], torch.tensor(0.1).double()))
    kinds = [launcher.kernel.fn.__name__ for launcher, *_ in calls]
    assert kinds == ["_plain_matmul_kernel"] * 6 + ["_squared_error_kernel", "_sum_partials_kernel"] + ["_sgd_kernel"] * 2, kinds
    for launcher, grid, args, variant in calls:
        assert_same_launch(launcher, grid, args, variant, f"{launcher.kernel} {variant}")


def mlp_step_case(dtype=torch.float32, fresh=False, loss="mse", classes=8):
    """(a step of a two-layer MLP with biases, momentum, weight decay and Nesterov, its
    tensors): `kernels.mlp_step`'s every kind of launch."""
    from fusedgrad.kernels.config import Update, UpdateRule
    from fusedgrad.kernels.mlp_step import mlp_sgd_step
    weights = [torch.randn(32, 16, dtype=dtype), torch.randn(classes, 32, dtype=dtype)]
    biases = [torch.randn(32, dtype=dtype), torch.randn(classes, dtype=dtype)]
    x = torch.randn(4, 16, dtype=dtype)
    target = torch.randn(4, classes, dtype=dtype) if loss == "mse" else torch.randint(0, classes, (4,))
    rule = UpdateRule(momentum=0.9, weight_decay=0.01, nesterov=True)
    weight_updates = [Update(0.1, rule, torch.zeros_like(w), fresh) for w in weights]
    bias_updates = [Update(0.1, rule, torch.zeros_like(b), fresh) for b in biases]
    step = lambda: mlp_sgd_step(x, target, weights, biases, weight_updates, bias_updates, loss, "mean",
                                torch.float32)
    return step, (x, target, *weights, *biases, *(u.buffer for u in weight_updates + bias_updates))


def check_every_mlp_step_launch_is_the_same_as_kernel_grid():
    """The MLP step's GEMMs (bias and ReLU, the loss after a bias, the input gradient, updates
    with momentum buffers and bias gradients, first and later steps) and its bias update."""
    calls = []
    for fresh in (True, False):
        step, _ = mlp_step_case(fresh=fresh)
        calls += launches_of(gemm, step) + launches_of(sgd, step)
    step, _ = mlp_step_case(loss="cross_entropy")  # in the last GEMM's epilogue
    calls += launches_of(gemm, step)
    step, _ = mlp_step_case(loss="cross_entropy", classes=200)  # more classes than a tile: a launch of its own
    calls += launches_of(cross_entropy, step)
    kinds = [launcher.kernel.fn.__name__ for launcher, *_ in calls]
    # The input gradient's GEMM has no bias, row sums or update: the plain entry.
    step_kinds = ["_matmul_kernel"] * 2 + ["_plain_matmul_kernel"] + ["_matmul_kernel"] * 2
    assert kinds == (step_kinds + ["_sgd_kernel"]) * 2 + step_kinds + ["_cross_entropy_kernel"], kinds
    for launcher, grid, args, variant in calls:
        assert_same_launch(launcher, grid, args, variant, f"{launcher.kernel} {variant}")


def launches_during(fn, planned: bool) -> list:
    """The driver launches `fn()` makes, with GEMM plans taken (`planned`) or refused; with
    them taken, asserts that no GEMM launch took the full path."""
    launches, record = [], DRIVER.record
    DRIVER.record = lambda *launch: (launches.append(launch), record(*launch))
    try:
        calls = launches_of(gemm, fn, planned)
    finally:
        DRIVER.record = record
    assert not (planned and calls), f"{len(calls)} launches missed their plan"
    return launches


def comparable(launch, inputs: set) -> tuple:
    """A driver launch with each tensor argument as what a launch may depend on: dtype, shape,
    strides, and its address for the caller's tensors (`inputs`: data_ptr), else its alignment."""
    def part(arg):
        if isinstance(arg, torch.Tensor):
            address = arg.data_ptr()
            return (arg.dtype, arg.shape, arg.stride(), address if address in inputs else address % 16)
        if isinstance(arg, tuple):
            return tuple(part(item) for item in arg)
        return (type(arg), arg)
    grid, stream, function, args = launch
    return tuple(grid), stream, function, part(tuple(args))


def planned(fn) -> stub_driver.Launch:
    """The launch `fn()` (one GEMM launch) makes through its plan; run once before, to bind it."""
    fn()
    launches_during(fn, planned=True)
    return DRIVER.last_launch


def check_planned_launches_are_the_same_as_full_ones():
    """GEMM launches through a plan (`Launcher.launch_plan`) reach the driver as those that
    take `launch`'s whole path: the fused step's five (named once for the step), for inputs
    of several layouts, alignments and dtypes, and a gated product."""
    x, w1, w2, y = tutorial_tensors()
    from fusedgrad.kernels.train_step import two_layer_sgd_step
    h = torch.randn(64, 100)
    # The step names its launches once from its inputs: other layouts, alignment and dtypes of
    # the inputs, and a tensor rate, must each take launches of their own.
    offset_x = torch.randn(64 * 1000 + 1)[1:].view(64, 1000)
    w1_t, x64, y64, w1_64, w2_64 = w1.T.contiguous().T, x.double(), y.double(), w1.double(), w2.double()
    rate = torch.tensor(1e-3, dtype=torch.float64)
    cases = (("fused step", lambda: two_layer_sgd_step(x, y, w1, w2, 1e-3), (x, y, w1, w2)),
             ("fused step, x off 16 bytes", lambda: two_layer_sgd_step(offset_x, y, w1, w2, 1e-3),
              (offset_x, y, w1, w2)),
             ("fused step, w1 column-major", lambda: two_layer_sgd_step(x, y, w1_t, w2, 1e-3), (x, y, w1_t, w2)),
             ("fused step, float64, tensor rate", lambda: two_layer_sgd_step(x64, y64, w1_64, w2_64, rate),
              (x64, y64, w1_64, w2_64, rate)),
             ("gated product", lambda: gemm.matmul(x.T, torch.randn(64, 100), b_relu_mask=h), (x, h)),
             ("MLP step", *mlp_step_case()), ("MLP step, float64", *mlp_step_case(torch.float64)),
             ("MLP step, cross-entropy", *mlp_step_case(loss="cross_entropy")))
    for _, fn, _ in cases:  # every case names its launches first: a name two cases shared would show below
        fn()
    for what, fn, tensors in cases:
        inputs = {t.data_ptr() for t in tensors}
        full = [comparable(launch, inputs) for launch in launches_during(fn, planned=False)]
        through_plans = [comparable(launch, inputs) for launch in launches_during(fn, planned=True)]
        assert through_plans == full, f"{what}: planned launches differ from full ones"


def gemm_call(a, b, c, **options):
    (launcher, grid, args, variant), = launches_of(gemm, lambda: gemm.launch(a, b, c, **options))
    return launcher, grid, args, variant


def check_no_stale_specialization():
    """A pre-bound key is never reused for a launch Triton would specialize differently: for
    each change, the pre-bound launch runs the kernel kernel[grid] runs (function handles)."""
    x, w1, _, _ = tutorial_tensors()
    base = assert_same_launch(*gemm_call(x, w1, torch.empty(64, 100)), "base")
    storage = torch.randn(64 * 1000 + 1)
    cases = {
        "strides (a column-major)": (x.T.contiguous().T, w1, torch.empty(64, 100)),
        "strides (a row stride of 1008)": (torch.randn(64, 1008)[:, :1000], w1, torch.empty(64, 100)),
        "alignment (a one element off 16 bytes)": (storage[1:].view(64, 1000), w1, torch.empty(64, 100)),
        "dtype (float16)": (x.half(), w1.half(), torch.empty(64, 100, dtype=torch.float16)),
        "a size of 1": (x[:1], w1, torch.empty(1, 100)),
    }
    functions = {base.function}
    for what, (a, b, c) in cases.items():
        got = assert_same_launch(*gemm_call(a, b, c), what)
        assert same(planned(lambda: gemm.launch(a, b, c)), got), f"{what}: the planned launch differs"
        functions.add(got.function)
    assert len(functions) == len(cases) + 1, f"each change compiles a kernel of its own: {functions}"
    # back to the first layout: its bound launch again, not the last one bound
    again = prebound(*gemm_call(x, w1, torch.empty(64, 100)))
    assert again.function == base.function
    assert planned(lambda: gemm.launch(x, w1, torch.empty(64, 100))).function == base.function


def check_device_and_stream_are_read_every_launch():
    x, w1, _, _ = tutorial_tensors()
    call = gemm_call(x, w1, torch.empty(64, 100))
    on_0 = assert_same_launch(*call, "device 0")
    DRIVER.device = 1
    try:
        on_1 = assert_same_launch(*call, "device 1")
        assert on_1.function != on_0.function, "device 1 must load the kernel for itself"
        c = torch.empty(64, 100)
        assert planned(lambda: gemm.launch(x, w1, c)).function == on_1.function
        DRIVER.stream = 7
        assert prebound(*call).stream == 7
        assert planned(lambda: gemm.launch(x, w1, c)).stream == 7
    finally:
        DRIVER.device, DRIVER.stream = 0, 0
    assert prebound(*call).function == on_0.function


def check_launch_hooks_take_kernel_grid():
    """A launch hook (a profiler's) sees every launch: with one set, launches go through
    kernel[grid], which calls it; without, pre-bound again."""
    x, w1, _, _ = tutorial_tensors()
    launcher, grid, args, variant = gemm_call(x, w1, torch.empty(64, 100))
    prebound(launcher, grid, args, variant)
    seen = []
    hook = lambda metadata: seen.append(metadata)  # noqa: E731
    chain = knobs.runtime.launch_enter_hook
    if hasattr(chain, "add"):
        chain.add(hook)
    else:
        knobs.runtime.launch_enter_hook = hook
    try:
        launcher(grid, args, variant)
        c = torch.empty(64, 100)
        gemm.launch(x, w1, c)  # a bound plan too: observed, it takes kernel[grid]
    finally:
        if hasattr(chain, "remove"):
            chain.remove(hook)
        else:
            knobs.runtime.launch_enter_hook = chain
    assert len(seen) == 2, seen
    prebound(launcher, grid, args, variant)
    planned(lambda: gemm.launch(x, w1, c))
    assert len(seen) == 2


def main() -> int:
    failed = 0
    for name, check in list(globals().items()):
        if name.startswith("check_"):
            try:
                check()
                print(f"ok {name}")
            except Exception:
                failed += 1
                print(f"FAILED {name}\n{traceback.format_exc()}")
    print(f"launcher {DRIVER.launcher_cls.__name__}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
