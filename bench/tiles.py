"""GPU time of the tutorial's five GEMMs: tile heuristic against fixed 64/128 tiles and cuBLAS.

    python bench/tiles.py                # writes bench/out/tiles.json

Host launch overhead is taken out: each variant's REPS launches are captured in a CUDA graph
and the graph's replay is timed (`common.graph_replay_us`). All products at IEEE precision.
"""

from __future__ import annotations

import json
import sys

import torch

import common
from fusedgrad.kernels import GemmConfig

REPS = 20


def fixed_tiles(M: int, N: int, dtype: torch.dtype) -> GemmConfig:
    """The first version's tiles: 64 or 128 wide whatever the multiprocessor count."""
    block_m, block_n = (64 if M <= 64 else 128), (64 if N <= 64 else 128)
    return GemmConfig(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=32 if dtype == torch.float32 else 64,
                      GROUP_M=8, num_warps=4 if block_m * block_n <= 64 * 64 else 8, num_stages=3)


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__, "tiles.json").parse_args(argv)
    device = common.require_cuda("tiles.py times CUDA kernels")
    from fusedgrad import kernels
    common.set_precision("ieee")  # cuBLAS; fusedgrad gets fp32_precision="ieee" below
    batch, d_in, hidden, d_out = common.TUTORIAL
    x, w1, w2 = (torch.randn(*s, device=device) for s in ((batch, d_in), (d_in, hidden), (hidden, d_out)))
    h = torch.relu(x @ w1)
    grad_y = torch.randn(batch, d_out, device=device)
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
        kwargs = dict(kwargs, fp32_precision="ieee")
        fixed = fixed_tiles(M, N, a.dtype)
        rows.append({
            "gemm": name, "M": M, "N": N, "K": K,
            "heuristic_us": common.graph_replay_us(lambda: kernels.matmul(a, b, **kwargs), REPS),
            "fixed_tiles_us": common.graph_replay_us(lambda: kernels.matmul(a, b, config=fixed, **kwargs), REPS),
            "cublas_us": common.graph_replay_us(cublas, REPS),
        })
        print(json.dumps(rows[-1]), flush=True)
    common.write_result(args.json, {"rows": rows, "reps_per_graph": REPS}, device)
    common.log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
