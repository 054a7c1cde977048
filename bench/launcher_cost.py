"""Host cost of fusedgrad's GEMM launcher itself, Triton's launch excluded, on any machine.

    python bench/launcher_cost.py        # writes bench/out/launcher_cost.json
    git worktree add /tmp/old 07b3ad3 && python bench/launcher_cost.py --kernels-dir /tmp/old/kernels

Un-graphed modes (the autograd ops, the fused step without a CUDA graph) are host-bound at the
tutorial's size, so every microsecond the launcher spends choosing tiles and packing arguments
counts five times a step. This replaces the compiled kernel with a stub that takes the same
arguments and does nothing, pretends to be a 132-multiprocessor GPU, and times
`fusedgrad.kernels.gemm.launch` for the tutorial's five GEMM shapes (median of repeats).
For the installed fusedgrad (no --kernels-dir) it also times whole tutorial steps with every
Triton kernel stubbed: the autograd ops' step (mm_relu, mm, mse_loss, backward, SGD step,
zero_grad) and the fused step: all the host work of a step except Triton's own launches.

--kernels-dir loads another checkout's `kernels/` folder as a package of its own; it must
import nothing from fusedgrad (true of 07b3ad3 and earlier, whose heuristic lived in gemm.py,
and of kernels/ since it became torch and triton only).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import timeit

import common
from fusedgrad.settings import use_triton_interpreter

use_triton_interpreter()  # before triton is imported: no GPU needed, the kernel never runs

import torch  # noqa: E402

FAKE_MULTIPROCESSORS = 132  # an H100/H200's count, so the heuristic picks the GPU's tiles


class StubKernel:
    """A Triton kernel's `kernel[grid](*args, **meta)` without Triton's launch."""

    def __getitem__(self, grid):
        return lambda *args, **meta: None


def load_gemm(kernels_dir: str | None):
    if kernels_dir is None:
        from fusedgrad.kernels import gemm
        return gemm
    spec = importlib.util.spec_from_file_location("kernels_under_test", os.path.join(kernels_dir, "__init__.py"),
                                                  submodule_search_locations=[kernels_dir])
    package = importlib.util.module_from_spec(spec)
    sys.modules["kernels_under_test"] = package
    spec.loader.exec_module(package)
    return importlib.import_module("kernels_under_test.gemm")


def fake_gpu(gemm) -> None:
    """Stub `gemm`'s kernel and make its tile choice see a compiled launch on a GPU of
    FAKE_MULTIPROCESSORS multiprocessors."""
    gemm._matmul_kernel = StubKernel()
    gemm.INTERPRETED = False
    if hasattr(gemm, "tuning"):
        gemm.tuning.multiprocessors = lambda index: FAKE_MULTIPROCESSORS
        gemm.tuning.device_index = lambda device: 0
    else:  # before kernels/tuning.py (07b3ad3 and earlier): the heuristic lived in gemm.py
        heuristic = gemm._config
        gemm._multiprocessors = lambda index: FAKE_MULTIPROCESSORS
        gemm._config = lambda M, N, K, dtype, device: heuristic(M, N, K, dtype, torch.device("cuda", 0))


def launch_rows(gemm, number: int) -> list[dict]:
    """Host µs per `gemm.launch` for the tutorial's five GEMMs."""
    batch, d_in, hidden, d_out = common.TUTORIAL
    x, w1, w2 = torch.randn(batch, d_in), torch.randn(d_in, hidden), torch.randn(hidden, d_out)
    h, grad_y = torch.randn(batch, hidden), torch.randn(batch, d_out)
    shapes = {"relu(x @ w1)": (x, w1, dict(epilogue="relu")), "h @ w2": (h, w2, {}),
              "grad_y @ w2.T": (grad_y, w2.T, {}), "h.T @ grad_y": (h.T, grad_y, {}),
              "(masked(grad_h).T @ x).T": (h.T, x, dict(mask_operand=gemm.MASK_A, gate=h.T))}
    rows = []
    for name, (a, b, kwargs) in shapes.items():
        c = torch.empty(a.shape[0], b.shape[1])
        runs = timeit.repeat(lambda: gemm.launch(a, b, c, **kwargs), number=number, repeat=5)
        rows.append({"gemm": name, "us_per_launch": 1e6 * statistics.median(runs) / number})
        print(f"{name:24s} {rows[-1]['us_per_launch']:6.1f} µs", flush=True)
    return rows


def step_rows(number: int) -> list[dict]:
    """Host µs per tutorial step, autograd ops and fused step, with every kernel stubbed."""
    import fusedgrad
    from fusedgrad import kernels
    from fusedgrad.kernels import mse_loss, sgd
    from fusedgrad.train import TrainConfig, make_problem, make_step

    mse_loss._squared_error_kernel = sgd._sgd_kernel = StubKernel()
    # dispatch lets CPU tensors take the Triton path only under the interpreter, which is on;
    # `fake_gpu` told the GEMM launcher otherwise (for the GPU's tiles), so the package says so
    # itself instead of forwarding gemm.INTERPRETED.
    kernels.INTERPRETED = True
    x, y, w1, w2 = make_problem(TrainConfig(), torch.device("cpu"), torch.float32)
    steps = {"autograd step (mm_relu, mm, mse_loss, backward, SGD)": make_step("autograd", False, x, y, w1, w2, 1e-6),
             "fused step (fusedgrad.train_step)": make_step("step", False, x, y, w1, w2, 1e-6)}
    rows = []
    with fusedgrad.backend("triton"):
        for name, step in steps.items():
            step()
            runs = timeit.repeat(step, number=number, repeat=5)
            rows.append({"step": name, "us_per_step": 1e6 * statistics.median(runs) / number})
            print(f"{name:56s} {rows[-1]['us_per_step']:6.1f} µs", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, "launcher_cost.json")
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--kernels-dir", help="time the `kernels/` of another checkout (e.g. a git "
                                              "worktree of an older commit) instead of the installed one")
    args = parser.parse_args(argv)
    gemm = load_gemm(args.kernels_dir)
    fake_gpu(gemm)
    rows = launch_rows(gemm, args.number)
    if args.kernels_dir is None:
        rows += step_rows(max(1, args.number // 4))
    common.write_result(args.json, {"rows": rows, "kernels_dir": args.kernels_dir}, torch.device("cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
