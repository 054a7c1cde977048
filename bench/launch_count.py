"""GPU work per training step in each mode, counted with torch.profiler (CUDA activity).

    python bench/launch_count.py         # writes bench/out/launch_count.json

For every mode of `python -m fusedgrad` at the tutorial's size: the kernels, memcpys and
memsets one step puts on the GPU (after a warm-up step), and the host-side launch calls
(cudaLaunchKernel, cuLaunchKernel, cudaGraphLaunch, ...) that started them.
"""

from __future__ import annotations

import collections
import sys

import torch

import common
import fusedgrad
from fusedgrad.train import TrainConfig, make_problem, make_step

# (mode, CUDA graph, backend): under "auto" the fp32 autograd GEMMs run on ATen (IEEE precision)
MODES = [("reference", False, "auto"), ("autograd", False, "auto"), ("autograd", False, "triton"),
         ("step", False, "auto"), ("step", True, "auto")]


def profile_step(step) -> dict:
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.events()
    device = [e.name for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = [e.name for e in events if e.device_type == torch.autograd.DeviceType.CPU
                and "Launch" in e.name and e.name.startswith(("cuda", "cu"))]
    return {"gpu_work": len(device), "gpu_work_names": dict(collections.Counter(device)),
            "host_launch_calls": len(launches), "host_launch_names": dict(collections.Counter(launches))}


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__, "launch_count.json").parse_args(argv)
    device = common.require_cuda("launch_count.py profiles CUDA work")
    common.set_precision("ieee")
    rows = {}
    for mode, cuda_graph, backend in MODES:
        x, y, w1, w2 = make_problem(TrainConfig(), device, torch.float32)
        with fusedgrad.backend(backend), fusedgrad.fp32_precision("ieee"):
            step = make_step(mode, cuda_graph, x, y, w1, w2, 1e-6)
            name = mode + (" + cuda graph" if cuda_graph else "") + (f" ({backend})" if backend != "auto" else "")
            rows[name] = profile_step(step)
        print(f"{name:22s} GPU work {rows[name]['gpu_work']:3d}   host launch calls {rows[name]['host_launch_calls']:3d}")
    common.write_result(args.json, {"per_step": rows}, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
