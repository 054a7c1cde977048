"""Per-call cost of fusedgrad's ops against eager PyTorch, on CUDA: where the time goes.

    python bench/overhead.py             # writes bench/out/overhead.json

Times (`common.median_us`: median of CUDA-event-timed calls after warm-up), in one process:
- one forward `relu(a @ b)` at the tutorial's first-layer shape (ieee) and at 4096^3 in bf16:
  eager `torch.relu(torch.mm(a, b))`, `fusedgrad.mm_relu`, and the bare launcher
  `fusedgrad.kernels.matmul` (no autograd, no dispatch) to separate launch from kernel cost;
- the tutorial's forward + backward (no update), eager against fusedgrad.
Each product runs at the case's precision on all three (torch's setting, fusedgrad's
`fp32_precision`, the launcher's argument).
"""

from __future__ import annotations

import json
import sys

import torch

import common
import fusedgrad


def forward_cases(m: int, k: int, n: int, precision: str, device: torch.device) -> dict:
    from fusedgrad import kernels
    dtype = common.set_precision(precision)
    fp32_precision = common.kernel_fp32_precision(precision)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    with fusedgrad.backend("triton"), fusedgrad.fp32_precision(fp32_precision):
        times = {
            "eager_torch_relu_mm": common.median_us(lambda: torch.relu(torch.mm(a, b))),
            "fusedgrad_mm_relu": common.median_us(lambda: fusedgrad.mm_relu(a, b)),
            "kernel_launcher": common.median_us(lambda: kernels.matmul(a, b, relu=True, fp32_precision=fp32_precision)),
        }
    flops = 2 * m * n * k
    return {"shape": [m, k, n], "dtype": str(dtype), "median_us": times,
            "tflops": {name: flops / (us * 1e-6) / 1e12 for name, us in times.items()}}


def step_case(device: torch.device) -> dict:
    common.set_precision("ieee")
    batch, d_in, hidden, d_out = common.TUTORIAL
    x = torch.randn(batch, d_in, device=device)
    y = torch.randn(batch, d_out, device=device)
    w1 = torch.randn(d_in, hidden, device=device, requires_grad=True)
    w2 = torch.randn(hidden, d_out, device=device, requires_grad=True)

    def run(forward):
        def step():
            loss = (forward(x, w1, w2) - y).pow(2).sum()
            loss.backward()
            w1.grad = w2.grad = None
        return step

    eager = run(lambda x, w1, w2: x.mm(w1).clamp(min=0).mm(w2))
    fused = run(lambda x, w1, w2: fusedgrad.mm(fusedgrad.mm_relu(x, w1), w2))
    with fusedgrad.backend("triton"), fusedgrad.fp32_precision("ieee"):
        return {"eager_forward_backward": common.median_us(eager),
                "fusedgrad_forward_backward": common.median_us(fused)}


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__, "overhead.json").parse_args(argv)
    device = common.require_cuda("overhead.py times CUDA kernels")
    batch, d_in, hidden, _ = common.TUTORIAL
    result = {
        "forward": [forward_cases(batch, d_in, hidden, "ieee", device),
                    forward_cases(4096, 4096, 4096, "bf16", device)],
        "tutorial_step_median_us": step_case(device),
    }
    print(json.dumps(common.write_result(args.json, result, device), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
