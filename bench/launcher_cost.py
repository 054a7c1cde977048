"""Host cost of fusedgrad's GEMM launcher itself, Triton's launch excluded, on any machine.

    python bench/launcher_cost.py --json bench/results/launcher-cost.json
    git worktree add /tmp/old 07b3ad3 && python bench/launcher_cost.py --kernels-dir /tmp/old/kernels

Un-graphed modes (the autograd ops, the fused step without a CUDA graph) are host-bound at the
tutorial's size, so every microsecond the launcher spends choosing tiles and packing arguments
counts five times a step. This replaces the compiled kernel with a stub that takes the same
arguments and does nothing, pretends to be a 132-multiprocessor GPU, and times
`fusedgrad.kernels.gemm.launch` for the tutorial's five GEMM shapes (median of repeats).
For the installed fusedgrad (no --kernels-dir) it also times whole tutorial steps with every
Triton kernel stubbed: the autograd ops' step (mm_relu, mm, mse_loss, backward, SGD step,
zero_grad) and the fused step: all the host work of a step except Triton's own launches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit

os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU needed: the kernel never runs

import torch  # noqa: E402


def load_gemm(kernels_dir: str | None):
    if kernels_dir is None:
        from fusedgrad.kernels import gemm
        return gemm
    import importlib.util
    spec = importlib.util.spec_from_file_location("kernels_under_test", os.path.join(kernels_dir, "__init__.py"),
                                                  submodule_search_locations=[kernels_dir])
    package = importlib.util.module_from_spec(spec)
    sys.modules["kernels_under_test"] = package
    spec.loader.exec_module(package)
    return sys.modules["kernels_under_test.gemm"]


def step_rows(number: int) -> list[dict]:
    """Host µs per tutorial step, autograd ops and fused step, with every kernel stubbed."""
    import fusedgrad
    from fusedgrad.kernels import mse_loss, sgd
    from fusedgrad.train import _autograd_step

    class StubKernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: None

    mse_loss._squared_error_kernel = sgd._sgd_kernel = StubKernel()
    x, y = torch.randn(64, 1000), torch.randn(64, 10)
    w1, w2 = torch.randn(1000, 100, requires_grad=True), torch.randn(100, 10, requires_grad=True)
    optimizer = fusedgrad.optim.SGD([w1, w2], lr=1e-6)
    steps = {"autograd step (mm_relu, mm, mse_loss, backward, SGD)": lambda: _autograd_step(x, y, w1, w2, optimizer),
             "fused step (fusedgrad.train_step)": lambda: fusedgrad.train_step(x, y, w1.detach(), w2.detach(), 1e-6)}
    rows = []
    with fusedgrad.backend("triton"):
        for name, step in steps.items():
            step()
            runs = timeit.repeat(step, number=number, repeat=5)
            rows.append({"step": name, "us_per_step": 1e6 * statistics.median(runs) / number})
            print(f"{name:56s} {rows[-1]['us_per_step']:6.1f} µs", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--kernels-dir", help="time the `kernels/` of another checkout (e.g. a git "
                                              "worktree of an older commit) instead of the installed one")
    args = parser.parse_args()
    from fusedgrad.train import write_result
    gemm = load_gemm(args.kernels_dir)

    class StubKernel:  # `_matmul_kernel[grid](*args, **meta)` without Triton's launch
        def __getitem__(self, grid):
            return lambda *args, **meta: None

    gemm._matmul_kernel = StubKernel()
    gemm.INTERPRETED = False
    if hasattr(gemm, "tuning"):
        gemm.tuning.multiprocessors = lambda index: 132
        gemm.tuning.device_index = lambda device: 0
    else:  # before kernels/tuning.py (commit 07b3ad3 and earlier): the heuristic lived in gemm.py
        heuristic = gemm._config
        gemm._multiprocessors = lambda index: 132
        gemm._config = lambda M, N, K, dtype, device: heuristic(M, N, K, dtype, torch.device("cuda", 0))
    x, w1, w2 = torch.randn(64, 1000), torch.randn(1000, 100), torch.randn(100, 10)
    h, grad_y = torch.randn(64, 100), torch.randn(64, 10)
    shapes = {"relu(x @ w1)": (x, w1, dict(epilogue="relu")), "h @ w2": (h, w2, {}),
              "grad_y @ w2.T": (grad_y, w2.T, {}), "h.T @ grad_y": (h.T, grad_y, {}),
              "(masked(grad_h).T @ x).T": (h.T, x, dict(mask_operand=gemm.MASK_A, gate=h.T))}
    rows = []
    for name, (a, b, kwargs) in shapes.items():
        c = torch.empty(a.shape[0], b.shape[1])
        runs = timeit.repeat(lambda: gemm.launch(a, b, c, **kwargs), number=args.number, repeat=5)
        rows.append({"gemm": name, "us_per_launch": 1e6 * statistics.median(runs) / args.number})
        print(f"{name:24s} {rows[-1]['us_per_launch']:6.1f} µs", flush=True)
    if args.kernels_dir is None:
        rows += step_rows(args.number // 4)
    write_result(args.json, {"rows": rows, "kernels_dir": args.kernels_dir}, torch.device("cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
