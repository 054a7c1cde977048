"""Per-call cost of fusedgrad's ops against eager PyTorch, on CUDA: where the time goes.

    python bench/overhead.py --json bench/results/overhead.json

Times (median of `triton.testing.do_bench`, CUDA events, after warm-up), in one process:
- one forward `relu(a @ b)` at the tutorial's first-layer shape and at 4096^3 in bf16:
  eager `torch.relu(torch.mm(a, b))`, `fusedgrad.mm_relu`, and the bare launcher
  `fusedgrad.kernels.matmul` (no autograd, no dispatch) to separate launch from kernel cost;
- the tutorial's forward + backward (no update), eager against fusedgrad.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import fusedgrad
from fusedgrad.train import write_result


def median_us(fn) -> float:
    import triton.testing
    return 1e3 * triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")


def forward_cases(m: int, k: int, n: int, dtype: torch.dtype) -> dict:
    from fusedgrad import kernels
    a = torch.randn(m, k, device="cuda", dtype=dtype)
    b = torch.randn(k, n, device="cuda", dtype=dtype)
    with fusedgrad.backend("triton"):
        times = {
            "eager_torch_relu_mm": median_us(lambda: torch.relu(torch.mm(a, b))),
            "fusedgrad_mm_relu": median_us(lambda: fusedgrad.mm_relu(a, b)),
            "kernel_launcher": median_us(lambda: kernels.matmul(a, b, relu=True)),
        }
    flops = 2 * m * n * k
    return {"shape": [m, k, n], "dtype": str(dtype), "median_us": times,
            "tflops": {name: flops / (us * 1e-6) / 1e12 for name, us in times.items()}}


def step_case() -> dict:
    x = torch.randn(64, 1000, device="cuda")
    y = torch.randn(64, 10, device="cuda")
    w1 = torch.randn(1000, 100, device="cuda", requires_grad=True)
    w2 = torch.randn(100, 10, device="cuda", requires_grad=True)

    def run(forward):
        def step():
            loss = (forward(x, w1, w2) - y).pow(2).sum()
            loss.backward()
            w1.grad = w2.grad = None
        return step

    eager = run(lambda x, w1, w2: x.mm(w1).clamp(min=0).mm(w2))
    fused = run(lambda x, w1, w2: fusedgrad.mm(fusedgrad.mm_relu(x, w1), w2))
    with fusedgrad.backend("triton"):
        return {"eager_forward_backward": median_us(eager), "fusedgrad_forward_backward": median_us(fused)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the numbers and the environment here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("overhead.py times CUDA kernels; no CUDA device here", file=sys.stderr)
        return 1
    result = {
        "forward": [forward_cases(64, 1000, 100, torch.float32),
                    forward_cases(4096, 4096, 4096, torch.bfloat16)],
        "tutorial_step_median_us": step_case(),
    }
    print(json.dumps(write_result(args.json, result, torch.device("cuda")), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
