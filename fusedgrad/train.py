"""The tutorial's two-layer network, trained with fusedgrad or with plain PyTorch.

    y_pred = relu(x @ w1) @ w2,   loss = sum((y_pred - y)**2),   w -= lr * w.grad

Modes, all on the same data from the same seed:
    reference       the tutorial's eager loop (autograd, torch ops, `w -= lr * w.grad`)
    autograd        the same loop on fusedgrad's ops: mm_relu, mm, mse_loss, optim.SGD
    step            `fusedgrad.train_step`: the whole step without the autograd tape
    step + graph    that step captured once in a CUDA graph and replayed
The loss is read back to the host only on the steps that print (1, 100, 200, ...).

Data-parallel (`distributed`, one process per rank under torchrun): every rank draws the same
problem, takes its shard of the batch's rows and trains its replica; the fused step sums the
gradients across the ranks (`fusedgrad.distributed`), the eager loops all-reduce `.grad`
before their update, and the losses printed are the whole batch's, as one process prints them.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import importlib.metadata
import platform
import os
import time
from typing import Any, Callable

import torch
import torch.distributed as dist

from . import dispatch, settings
from .kernels.precision import DTYPES
from .loss import mse_loss
from .matmul import mm, mm_relu
from .optim import SGD
from .step import CUDAGraphStep, train_step

MODES = ("auto", "autograd", "step")


@dataclasses.dataclass
class TrainConfig:
    steps: int = 500
    batch: int = 64
    d_in: int = 1000
    hidden: int = 100
    d_out: int = 10
    lr: float = 1e-6
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    backend: str = "auto"
    reference: bool = False
    mode: str = "auto"               # "auto" is "step"
    cuda_graph: bool | None = None   # None: on CUDA in step mode (the tutorial's network)
    # An MLP instead of the tutorial's network (`fusedgrad.train_mlp`) when any of these is set.
    layers: tuple[int, ...] | None = None  # sizes, input first; None: (d_in, hidden, d_out)
    bias: bool = False
    momentum: float = 0.0
    loss: str = "mse"                # or "cross_entropy" (targets: class indices); summed, as the tutorial's
    distributed: bool = False        # data-parallel over the ranks torchrun started (gloo on CPU, NCCL on CUDA)

    @property
    def is_mlp(self) -> bool:
        return self.layers is not None or self.bias or self.momentum != 0 or self.loss != "mse"

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.layers if self.layers is not None else (self.d_in, self.hidden, self.d_out)


@dataclasses.dataclass
class TrainResult:
    losses: dict[int, float]  # step -> loss, for the steps that print
    steps: int
    seconds: float
    device: str
    backend: str
    mode: str
    w1: torch.Tensor | None  # the tutorial's weights (None for an MLP run)
    w2: torch.Tensor | None
    parameters: list[torch.Tensor] = dataclasses.field(default_factory=list)  # an MLP run's, in order
    rank: int = 0            # this process's rank and the number of ranks (data-parallel runs)
    ranks: int = 1

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("inf")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (which sets `TORCHRUN_VARIABLES`)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


@dataclasses.dataclass(frozen=True)
class Ranks:
    """Where this process stands in a data-parallel run: its rank, the number of ranks and
    their process group. One process is `Ranks()`."""

    rank: int = 0
    count: int = 1
    group: Any = None

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a batch, as `tensor_split` deals them (shards differ by a row at most)."""
        return t if self.group is None else t.tensor_split(self.count)[self.rank]

    def sum_(self, tensors) -> None:
        """Sum each tensor across the ranks, in place (the eager loops' gradients)."""
        if self.group is not None:
            for t in tensors:
                dist.all_reduce(t, group=self.group)

    def summed(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss` summed across the ranks (a new tensor; `loss` itself with one process)."""
        if self.group is None:
            return loss
        total = loss.detach().clone()
        self.sum_([total])
        return total


def join_ranks(config: TrainConfig) -> tuple[Ranks, torch.device]:
    """(this process's Ranks, its device): for a distributed run, the process group torchrun's
    variables describe (NCCL on CUDA, each rank on GPU LOCAL_RANK; gloo on CPU)."""
    if not config.distributed:
        return Ranks(), resolve_device(config.device)
    if not under_torchrun():
        raise RuntimeError(f"a distributed run needs torchrun's variables ({', '.join(TORCHRUN_VARIABLES)}): "
                           f"torchrun --nproc-per-node N -m fusedgrad --distributed")
    device = resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), dist.group.WORLD), device


def leave_ranks(ranks: Ranks, finished: bool = True) -> None:
    """Tear the group down: once every rank is done with it (`finished`), or at once on an
    error (the other ranks may wait in another collective; torchrun stops them). Then collect
    garbage: a gloo group that a reference cycle keeps alive past `destroy_process_group` (once
    torch._dynamo is imported, as the fused steps do) would otherwise be freed at interpreter
    exit, which sometimes aborts the process ("terminate called without an active exception")."""
    if ranks.group is not None:
        if finished:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()


def make_problem(config: TrainConfig, device: torch.device, dtype: torch.dtype):
    """x, y, w1, w2 drawn from `config.seed` on the CPU, so every device sees the same numbers."""
    generator = torch.Generator().manual_seed(config.seed)
    shapes = [(config.batch, config.d_in), (config.batch, config.d_out),
              (config.d_in, config.hidden), (config.hidden, config.d_out)]
    x, y, w1, w2 = (torch.randn(shape, generator=generator).to(device, dtype) for shape in shapes)
    return x, y, w1.requires_grad_(), w2.requires_grad_()


def forward_fused(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    return mm(mm_relu(x, w1), w2)


def forward_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    return x.mm(w1).clamp(min=0).mm(w2)


def _reference_step(x, y, w1, w2, lr: float, ranks: Ranks) -> torch.Tensor:
    loss = (forward_reference(x, w1, w2) - y).pow(2).sum()
    loss.backward()
    ranks.sum_([w1.grad, w2.grad])
    with torch.no_grad():
        w1 -= lr * w1.grad
        w2 -= lr * w2.grad
    w1.grad = w2.grad = None
    return ranks.summed(loss)


def _autograd_step(x, y, w1, w2, optimizer, ranks: Ranks) -> torch.Tensor:
    loss = mse_loss(forward_fused(x, w1, w2), y, reduction="sum")
    loss.backward()
    ranks.sum_([w1.grad, w2.grad])
    optimizer.step()
    optimizer.zero_grad()
    return ranks.summed(loss)


def resolve_mode(config: TrainConfig, device: torch.device) -> tuple[str, bool]:
    """(mode, cuda_graph) after defaults: on CUDA the fastest, step + CUDA graph."""
    if config.reference:
        return "reference", False
    mode = "step" if config.mode == "auto" else config.mode
    if config.is_mlp or config.distributed:
        if config.cuda_graph:
            raise ValueError("an MLP run (--layers, --bias, --momentum, --loss) or a distributed one does not "
                             "replay a CUDA graph")
        return mode, False
    cuda_graph = config.cuda_graph if config.cuda_graph is not None else (device.type == "cuda" and mode == "step")
    if cuda_graph and (device.type != "cuda" or mode != "step"):
        raise ValueError("a CUDA graph needs a CUDA device and mode 'step'")
    return mode, cuda_graph


def describe_backend(mode: str, x: torch.Tensor) -> str:
    """The backend that runs `mode` on `x`, as the summary line names it."""
    if mode == "reference":
        return "reference (eager PyTorch)"
    backend = dispatch.resolve(x)
    if mode == "autograd" and dispatch.resolve(x, gemm=True) != backend:
        backend += " (GEMMs on aten: float32 at IEEE precision)"
    return backend


def make_step(mode: str, cuda_graph: bool, x, y, w1, w2, lr: float, ranks: Ranks = Ranks()) -> Callable[[], torch.Tensor]:
    """A callable running one training step on these tensors (this rank's shard of x and y)
    and returning its loss tensor (the whole batch's)."""
    if mode == "reference":
        return lambda: _reference_step(x, y, w1, w2, lr, ranks)
    if mode == "autograd":
        optimizer = SGD([w1, w2], lr=lr)
        return lambda: _autograd_step(x, y, w1, w2, optimizer, ranks)
    if cuda_graph:
        return CUDAGraphStep(x, y, w1.detach(), w2.detach(), lr).replay
    return lambda: train_step(x, y, w1.detach(), w2.detach(), lr, ranks.group)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def should_print(step: int) -> bool:
    return step == 1 or step % 100 == 0


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Run the tutorial loop (or an MLP's, `train_mlp`); `log` gets the progress lines. One warm-up step on copies of the
    weights (kernel compilation, allocator warm-up; for a CUDA graph also the capture) runs
    before the clock starts."""
    ranks, device = join_ranks(config)
    try:
        if ranks.rank != 0:
            log = _silent
        if config.is_mlp:
            from .train_mlp import train_mlp
            result = train_mlp(config, log, ranks, device)
        else:
            result = _train_tutorial(config, log, ranks, device)
    except BaseException:
        leave_ranks(ranks, finished=False)
        raise
    leave_ranks(ranks)
    return dataclasses.replace(result, rank=ranks.rank, ranks=ranks.count)


def _silent(line: str) -> None:
    """The log of ranks other than 0: rank 0 prints for the run."""


def _train_tutorial(config: TrainConfig, log: Callable[[str], None], ranks: Ranks, device: torch.device) -> TrainResult:
    dtype = DTYPES[config.dtype]
    x, y, w1, w2 = make_problem(config, device, dtype)
    x, y = ranks.shard(x), ranks.shard(y)
    mode, cuda_graph = resolve_mode(config, device)

    with settings.backend(config.backend):
        backend = describe_backend(mode, x)
        warm_w1, warm_w2 = (w.detach().clone().requires_grad_() for w in (w1, w2))
        make_step(mode, False, x, y, warm_w1, warm_w2, config.lr, ranks)()
        step = make_step(mode, cuda_graph, x, y, w1, w2, config.lr, ranks)
        losses, seconds = run_steps(step, config.steps, device, log)

    return TrainResult(losses=losses, steps=config.steps, seconds=seconds, device=describe_device(device),
                       backend=backend, mode=mode + (" + cuda graph" if cuda_graph else ""),
                       w1=w1.detach(), w2=w2.detach())


def run_steps(step: Callable[[], torch.Tensor], steps: int, device: torch.device,
              log: Callable[[str], None]) -> tuple[dict[int, float], float]:
    """(losses of the steps that print, seconds) of `steps` calls of `step`, timed from an idle
    device to an idle device."""
    _synchronize(device)
    losses: dict[int, float] = {}
    start = time.perf_counter()
    for number in range(1, steps + 1):
        loss = step()
        if should_print(number):
            losses[number] = loss.item()
            log(f"Step: {number} : {losses[number]}")
    _synchronize(device)
    return losses, time.perf_counter() - start


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def describe_environment(device: torch.device) -> dict:
    """What a run's JSON record says about where it ran: the date, the Python, torch, triton and
    CUDA versions, the device (and the GPU's name on CUDA). No subprocesses; the benchmarks add
    the commit, driver and platform (`bench/common.py`)."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _installed_version("triton"),
        "cuda": torch.version.cuda,
        "device": describe_device(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _installed_version(package: str) -> str | None:
    """The installed version of `package`, read without importing it (triton loads lazily)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
