"""GPU time of the tutorial's five GEMMs: tile heuristic against fixed 64/128 tiles and cuBLAS.

    python bench/tiles.py --json bench/results/tiles.json

Host launch overhead is taken out: each variant's 20 launches are captured in a CUDA graph and
the graph's replay is timed (median of `triton.testing.do_bench`), then divided by 20.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from fusedgrad.train import write_result

REPS = 20


def graph_us(fn) -> float:
    import triton.testing
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()
    return 1e3 * triton.testing.do_bench(graph.replay, warmup=50, rep=300, return_mode="median") / REPS


def fixed_tiles(M: int, N: int, dtype: torch.dtype) -> dict:
    """The first version's tiles: 64 or 128 wide whatever the multiprocessor count."""
    block_m, block_n = (64 if M <= 64 else 128), (64 if N <= 64 else 128)
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=32 if dtype == torch.float32 else 64,
                GROUP_M=8, num_warps=4 if block_m * block_n <= 64 * 64 else 8, num_stages=3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("tiles.py times CUDA kernels; no CUDA device here", file=sys.stderr)
        return 1
    from fusedgrad import kernels
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    x, w1, w2 = (torch.randn(*s, device="cuda") for s in ((64, 1000), (1000, 100), (100, 10)))
    h = torch.relu(x @ w1)
    grad_y = torch.randn(64, 10, device="cuda")
    grad_h = grad_y @ w2.T
    gemms = {  # name: (a, b, kwargs of the launcher, cuBLAS equivalent)
        "forward1 relu(x@w1)": (x, w1, dict(relu=True), lambda: torch.relu(torch.mm(x, w1))),
        "forward2 h@w2": (h, w2, {}, lambda: torch.mm(h, w2)),
        "grad_h = grad_y@w2.T": (grad_y, w2.T, {}, lambda: torch.mm(grad_y, w2.T)),
        "grad_w2 = h.T@grad_y": (h.T, grad_y, {}, lambda: torch.mm(h.T, grad_y)),
        "grad_w1 = x.T@masked(grad_h)": (x.T, grad_h, dict(b_relu_mask=h),
                                         lambda: torch.mm(x.T, torch.ops.aten.threshold_backward(grad_h, h, 0))),
    }
    rows = []
    for name, (a, b, kwargs, cublas) in gemms.items():
        (M, K), N = a.shape, b.shape[1]
        rows.append({
            "gemm": name, "M": M, "N": N, "K": K,
            "heuristic_us": graph_us(lambda: kernels.matmul(a, b, **kwargs)),
            "fixed_tiles_us": graph_us(lambda: kernels.matmul(a, b, config=fixed_tiles(M, N, a.dtype), **kwargs)),
            "cublas_us": graph_us(cublas),
        })
        print(json.dumps(rows[-1]))
    write_result(args.json, {"rows": rows, "reps_per_graph": REPS}, torch.device("cuda"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
