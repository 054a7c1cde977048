"""Data-parallel checks, run in processes of their own on a gloo group over 127.0.0.1.

    python tests/distributed_checks.py 3 aten triton   # what test_distributed.py runs
    python tests/distributed_checks.py 2 nccl          # two GPUs (test_gpu.py); 1 nccl: one GPU

Spawns RANKS processes (rendezvous at 127.0.0.1 on a free port, gloo bound to loopback, every
collective bounded by a timeout) and runs every check for each backend named (aten; triton,
under the interpreter without CUDA) on a group of the first 2 ranks and on all of them; `nccl`
puts rank r on GPU r with an NCCL group, the Triton kernels compiled, and adds the CUDA-graph
checks. Each rank runs on its shard of batches drawn alike on all ranks, against the
one-process result on the whole batch, which it also computes. Rank 0 prints
`ok <check> <N> ranks <backend>` per check; a failed check fails its process and the exit status.
"""

from __future__ import annotations

import datetime
import gc
import os
import pathlib
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

TIMEOUT = datetime.timedelta(seconds=60)
# Norm-relative bounds: float64 on ATen sums in another order than one process; the interpreter
# runs float32 kernels, whose sums across ranks round differently from one process's.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
DEVICE = torch.device("cpu")  # where the checks' tensors live: GPU `rank` with NCCL
GROUP = None  # the process group the checks run on: the first `ranks` ranks


def on(t: torch.Tensor) -> torch.Tensor:
    return t.to(DEVICE)


def shard(t: torch.Tensor, rank: int, ranks: int) -> torch.Tensor:
    """Rank `rank`'s rows of `t`: as `tensor_split` deals them (shards differ by a row at most)."""
    return t.tensor_split(ranks)[rank]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    error = (actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)
    assert error <= TOLERANCE[expected.dtype], f"{what}: relative error {error:.3e}"


def assert_replicas_equal(tensors: list[torch.Tensor], what: str) -> None:
    """Every rank holds the same values (all ranks apply the same update to the same sums)."""
    for t in tensors:
        low, high = t.detach().clone(), t.detach().clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=GROUP)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=GROUP)
        assert torch.equal(low, high), f"{what}: the replicas differ"


def check_mlp_steps(rank: int, ranks: int, dtype: torch.dtype, quick: bool = False) -> None:
    """k data-parallel MLP steps equal k one-process steps on the whole batch: depths 1 to 3,
    with biases, momentum, Nesterov and weight decay, mse and cross-entropy, mean and sum
    (`quick`: the two three-layer cases, for the interpreter's sake)."""
    import fusedgrad
    cases = [([6, 4], "mse", "sum", None), ([10, 16, 12, 5], "mse", "mean", 1),  # 1 byte: a bucket per layer
             ([10, 16, 12, 5], "cross_entropy", "sum", None), ([10, 16, 5], "cross_entropy", "mean", None)]
    for sizes, loss, reduction, bucket_bytes in cases[1:3] if quick else cases:
        fusedgrad.distributed.BUCKET_BYTES = bucket_bytes or 25 * 2**20  # the first bucket: at most that
        generator = torch.Generator().manual_seed(len(sizes) + len(loss))
        # A mean is the whole batch's for equal shards; a sum for any (here 7 rows on 2 or 3 ranks).
        batch = 6 * ranks if reduction == "mean" else 7
        x = on(torch.randn(batch, sizes[0], generator=generator, dtype=dtype))
        target = on(torch.randn(batch, sizes[-1], generator=generator, dtype=dtype) if loss == "mse"
                    else torch.randint(0, sizes[-1], (batch,), generator=generator))
        torch.manual_seed(1)
        model = fusedgrad.nn.MLP(sizes, dtype=dtype).to(DEVICE)
        whole = fusedgrad.nn.MLP(sizes, dtype=dtype).to(DEVICE)
        whole.load_state_dict(model.state_dict())
        settings = dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)
        optimizer, whole_optimizer = torch.optim.SGD(model.parameters(), **settings), \
            torch.optim.SGD(whole.parameters(), **settings)
        what = f"MLP {sizes} {loss} {reduction} {dtype}"
        for step in range(3):
            got = model.train_step(shard(x, rank, ranks), shard(target, rank, ranks), optimizer, loss, reduction,
                                   process_group=GROUP)
            expected = whole.train_step(x, target, whole_optimizer, loss, reduction)
            assert_close(got, expected, f"{what}: loss of step {step}")
        for (name, got), expected in zip(model.named_parameters(), whole.parameters()):
            assert_close(got, expected, f"{what}: {name}")
            assert_close(optimizer.state[got]["momentum_buffer"], whole_optimizer.state[expected]["momentum_buffer"],
                         f"{what}: momentum buffer of {name}")
        assert_replicas_equal(list(model.parameters()), what)
    fusedgrad.distributed.BUCKET_BYTES = 25 * 2**20


def check_refusals(rank: int, ranks: int, dtype: torch.dtype) -> None:
    """A process group that is not one, and weights the flat buffer cannot mirror, are refused
    before anything is written or any collective starts."""
    import fusedgrad
    x, y = torch.randn(4, 6, dtype=dtype), torch.randn(4, 3, dtype=dtype)
    w1, w2 = torch.randn(6, 5, dtype=dtype), torch.randn(5, 3, dtype=dtype)
    before = w1.clone(), w2.clone()
    try:
        fusedgrad.train_step(x, y, w1, w2, 1e-3, process_group="WORLD")
        raise AssertionError("a string process_group was accepted")
    except TypeError as error:
        assert "process_group must be a torch.distributed.ProcessGroup" in str(error), error
    strided = torch.randn(6, 10, dtype=dtype)[:, ::2]  # neither contiguous nor transposed contiguous
    try:
        fusedgrad.train_step(x, y, strided, w2, 1e-3, process_group=GROUP)
        raise AssertionError("a strided w1 was accepted")
    except ValueError as error:
        assert "w1 (6, 5) must be contiguous (or its transpose)" in str(error), error
    assert torch.equal(w1, before[0]) and torch.equal(w2, before[1])


def check_tutorial_steps(rank: int, ranks: int, dtype: torch.dtype) -> None:
    """`fusedgrad.train_step` and `TwoLayerNet.train_step` with a process group equal the
    one-process step on the whole batch (a summed loss: its gradients are summed)."""
    import fusedgrad
    generator = torch.Generator().manual_seed(3)
    x, y = (on(torch.randn(shape, generator=generator, dtype=dtype)) for shape in ((9, 12), (9, 4)))
    w1, w2 = (on(torch.randn(shape, generator=generator, dtype=dtype)) for shape in ((12, 8), (8, 4)))
    whole_w1, whole_w2 = w1.clone(), w2.clone()
    for step in range(3):
        got = fusedgrad.train_step(shard(x, rank, ranks), shard(y, rank, ranks), w1, w2, 1e-3,
                                   process_group=GROUP)
        expected = fusedgrad.train_step(x, y, whole_w1, whole_w2, 1e-3)
        assert_close(got, expected, f"train_step {dtype}: loss of step {step}")
    assert_close(w1, whole_w1, "train_step: w1")
    assert_close(w2, whole_w2, "train_step: w2")
    assert_replicas_equal([w1, w2], "train_step")
    net, whole = (fusedgrad.nn.TwoLayerNet(12, 8, 4, dtype=dtype, generator=torch.Generator().manual_seed(4),
                                           device=DEVICE) for _ in range(2))
    rate = on(torch.tensor(1e-3, dtype=dtype))  # a tensor rate, read where the update runs
    got = net.train_step(shard(x, rank, ranks), shard(y, rank, ranks), rate, process_group=GROUP)
    assert_close(got, whole.train_step(x, y, rate), "TwoLayerNet.train_step: loss")
    assert_close(net.w1, whole.w1, "TwoLayerNet.train_step: w1")


def check_ddp_trains_as_nn_sequential(rank: int, ranks: int, dtype: torch.dtype) -> None:
    """Under DistributedDataParallel, `fusedgrad.nn.MLP` on the autograd ops with
    `fusedgrad.optim.SGD` trains as nn.Sequential with torch.optim.SGD: synced steps, and
    gradients accumulated over no_sync micro-batches before a synced one."""
    import fusedgrad
    from torch.nn.parallel import DistributedDataParallel
    from helpers import torch_mlp_twin
    torch.manual_seed(5)
    model = fusedgrad.nn.MLP([10, 16, 5], dtype=dtype)
    twin = torch_mlp_twin(model).to(dtype)
    ours, theirs = DistributedDataParallel(model, process_group=GROUP), DistributedDataParallel(twin, process_group=GROUP)
    settings = dict(lr=0.05, momentum=0.9)
    optimizers = fusedgrad.optim.SGD(model.parameters(), **settings), torch.optim.SGD(twin.parameters(), **settings)
    generator = torch.Generator().manual_seed(6)
    batches = [(torch.randn(4 * ranks, 10, generator=generator, dtype=dtype),
                torch.randn(4 * ranks, 5, generator=generator, dtype=dtype)) for _ in range(4)]

    def run(ddp, optimizer, synced_every: int) -> None:
        for number, (x, y) in enumerate(batches, 1):
            rows = shard(x, rank, ranks), shard(y, rank, ranks)
            if number % synced_every:
                with ddp.no_sync():
                    torch.nn.functional.mse_loss(ddp(rows[0]), rows[1]).backward()
                continue
            torch.nn.functional.mse_loss(ddp(rows[0]), rows[1]).backward()
            optimizer.step()
            optimizer.zero_grad()

    for synced_every in (1, 2):  # every step synced; then one no_sync micro-batch before each synced one
        run(ours, optimizers[0], synced_every)
        run(theirs, optimizers[1], synced_every)
        for got, expected in zip(model.parameters(), twin.parameters()):
            assert_close(got, expected, f"DDP, synced every {synced_every}")
    assert_replicas_equal(list(model.parameters()), "DDP")


def check_graph_steps(rank: int, ranks: int, dtype: torch.dtype) -> None:
    """NCCL: the data-parallel step captured in a CUDA graph, collectives included, replays the
    same steps as un-graphed (MLP.cuda_graph_step, CUDAGraphStep): the same kernels in the same
    order, so equal to fp32 rounding of the collective's own order."""
    import fusedgrad
    generator = torch.Generator().manual_seed(7)
    x, target = on(torch.randn(8, 32, generator=generator)), on(torch.randn(8, 16, generator=generator))
    torch.manual_seed(8)
    graphed, plain = fusedgrad.nn.MLP([32, 64, 16]).to(DEVICE), fusedgrad.nn.MLP([32, 64, 16]).to(DEVICE)
    plain.load_state_dict(graphed.state_dict())
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) for model in (graphed, plain)]
    step = graphed.cuda_graph_step(x, target, optimizers[0], process_group=GROUP)
    for _ in range(3):
        got = step.replay().clone()
        assert_close(got, plain.train_step(x, target, optimizers[1], process_group=GROUP), "graph loss")
    for got, expected in zip(graphed.parameters(), plain.parameters()):
        assert_close(got, expected, "graph step parameters")
    w1, w2 = on(torch.randn(32, 24, generator=generator)), on(torch.randn(24, 16, generator=generator))
    plain_w1, plain_w2 = w1.clone(), w2.clone()
    lr = on(torch.tensor(1e-3))
    tutorial = fusedgrad.CUDAGraphStep(x, target, w1, w2, lr, process_group=GROUP)
    for _ in range(3):
        got = tutorial.replay().clone()
        assert_close(got, fusedgrad.train_step(x, target, plain_w1, plain_w2, lr, process_group=GROUP),
                     "CUDAGraphStep loss")
    assert_close(w1, plain_w1, "CUDAGraphStep w1")
    assert_close(w2, plain_w2, "CUDAGraphStep w2")


def worker(rank: int, ranks: int, port: int, backends: list[str]) -> None:
    """Every check on every backend, on a group of 2 ranks and one of all (1 with one NCCL rank)."""
    global DEVICE, GROUP
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pairs on loopback, as the rendezvous
    nccl = backends == ["nccl"]
    if nccl:
        DEVICE = torch.device("cuda", rank)
        torch.cuda.set_device(DEVICE)
    dist.init_process_group("nccl" if nccl else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=ranks, timeout=TIMEOUT)
    import fusedgrad
    torch.set_num_threads(1)
    sizes = sorted({min(2, ranks), ranks})
    groups = {size: dist.group.WORLD if size == ranks else dist.new_group(list(range(size))) for size in sizes}
    try:
        for backend in backends:
            dtype = torch.float64 if backend == "aten" else torch.float32
            checks = [check_mlp_steps, check_tutorial_steps]
            checks += [check_graph_steps] if nccl else [check_refusals]
            if backend == "aten":
                checks.append(check_ddp_trains_as_nn_sequential)
            for size, GROUP in groups.items():
                if rank < size:
                    with fusedgrad.backend("triton" if nccl else backend):
                        for check in checks:
                            if check is check_mlp_steps:
                                check(rank, size, dtype, quick=backend == "triton")
                            else:
                                check(rank, size, dtype)
                            dist.barrier(group=GROUP)
                            if rank == 0:
                                print(f"ok {check.__name__} {size} ranks {backend}", flush=True)
                dist.barrier()
    finally:
        dist.destroy_process_group()
        gc.collect()  # the group freed now, not at exit (`fusedgrad.train.leave_ranks` says why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    ranks, backends = int(sys.argv[1]), sys.argv[2:]
    if "triton" in backends:
        from fusedgrad.settings import use_triton_interpreter
        if not torch.cuda.is_available():
            use_triton_interpreter()  # inherited by the spawned processes
    mp.spawn(worker, args=(ranks, free_port(), backends), nprocs=ranks)
