"""Data-parallel throughput of the fused steps per rank count, under torchrun.

    torchrun --nproc-per-node 2 bench/distributed.py            # CUDA: NCCL, a GPU per rank
    torchrun --nproc-per-node 2 bench/distributed.py --quick    # small sizes, few steps (CPU: gloo)
    torchrun --nproc-per-node 2 bench/run.py --distributed ...  # the same

With W ranks started, every rank count k = 1 .. W is measured in the same run, on a process
group of the first k ranks (the others wait). Weak scaling: each rank keeps its batch, so k
ranks train k times the rows per step. Cases: the tutorial's fused step (`fusedgrad.train_step`)
and an MLP's (`MLP.train_step`, SGD with momentum; width 1024 x 4 layers with biases, batch 256
per rank, bf16 on CUDA), each data-parallel over the group (`fusedgrad.distributed`). Per row:
steps/s (median over rounds of wall time, the device synchronized), rows/s, and scaling
efficiency, steps/s at k ranks over steps/s at 1 (1.0 is perfect). On CPU this checks the path
and gloo, not the speed. Rank 0 writes bench/out/distributed.json (see --json) and a table.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

import common
import fusedgrad


def cases(device: torch.device, quick: bool) -> dict:
    """name -> (make(group) -> a step callable, rows per rank)."""
    generator = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" and not quick else torch.float32
    batch, d_in, hidden, d_out = common.TUTORIAL
    tutorial = [torch.randn(shape, generator=generator).to(device) for shape in
                ((batch, d_in), (batch, d_out), (d_in, hidden), (hidden, d_out))]
    sizes, rows = ((32, 64, 64, 16), 16) if quick else ((1024,) * 5, 256)
    x = torch.randn(rows, sizes[0], generator=generator).to(device, dtype)
    target = torch.randn(rows, sizes[-1], generator=generator).to(device, dtype)

    def tutorial_step(group):
        x, y, w1, w2 = (t.clone() for t in tutorial)
        return lambda: fusedgrad.train_step(x, y, w1, w2, 1e-6, process_group=group)

    def mlp_step(group):
        torch.manual_seed(0)
        model = fusedgrad.nn.MLP(sizes, device=device, dtype=dtype)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        return lambda: model.train_step(x, target, optimizer, process_group=group)

    return {"tutorial fused step": (tutorial_step, batch),
            f"MLP {'x'.join(map(str, sizes))} {str(dtype).removeprefix('torch.')} fused step": (mlp_step, rows)}


def time_steps(step, device: torch.device, rounds: int, steps: int) -> float:
    """Median steps/s over `rounds` of `steps` calls, after warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, "distributed.json")
    parser.add_argument("--quick", action="store_true", help="small sizes, few steps")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        sys.exit("bench/distributed.py runs under torchrun: torchrun --nproc-per-node N bench/distributed.py")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    groups = {k: dist.new_group(list(range(k))) for k in range(1, world + 1)}  # every rank makes every group
    rounds, steps = (3, 5) if args.quick else (10, 50)
    rows = []
    for name, (make, per_rank) in cases(device, args.quick).items():
        for k, group in groups.items():
            if rank < k:
                rate = time_steps(make(group), device, rounds, steps)
                if rank == 0:
                    common.log(f"{name}: {k} rank(s) {rate:.1f} steps/s")
                    rows.append(dict(case=name, ranks=k, rows_per_rank=per_rank, steps_per_second=rate,
                                     rows_per_second=rate * per_rank * k))
            dist.barrier()
    for row in rows:
        one = next(r for r in rows if r["case"] == row["case"] and r["ranks"] == 1)
        row["scaling_efficiency"] = row["steps_per_second"] / one["steps_per_second"]
    if rank == 0:
        common.write_result(args.json, {"rows": rows, "world_size": world,
                                        "backend": dist.get_backend(), "quick": args.quick}, device)
        print("| case | ranks | steps/s | rows/s | scaling efficiency |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['ranks']} | {r['steps_per_second']:.1f} | {r['rows_per_second']:.0f} | "
                  f"{r['scaling_efficiency']:.2f} |")
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()  # the group freed now, not at exit (`fusedgrad.train.leave_ranks` says why)
    return 0


if __name__ == "__main__":
    sys.exit(main())
