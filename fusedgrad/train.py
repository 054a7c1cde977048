"""The tutorial's two-layer network, trained with fusedgrad or with plain PyTorch.

    y_pred = relu(x @ w1) @ w2,   loss = sum((y_pred - y)**2),   w -= lr * w.grad

Modes, all on the same data from the same seed:
    reference       the tutorial's eager loop (autograd, torch ops, `w -= lr * w.grad`)
    autograd        the same loop on fusedgrad's ops: mm_relu, mm, mse_loss, optim.SGD
    step            `fusedgrad.train_step`: the whole step without the autograd tape
    step + graph    that step captured once in a CUDA graph and replayed
The loss is read back to the host only on the steps that print (1, 100, 200, ...).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import platform
import time
from typing import Callable

import torch

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

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("inf")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def _reference_step(x, y, w1, w2, lr: float) -> torch.Tensor:
    loss = (forward_reference(x, w1, w2) - y).pow(2).sum()
    loss.backward()
    with torch.no_grad():
        w1 -= lr * w1.grad
        w2 -= lr * w2.grad
    w1.grad = w2.grad = None
    return loss


def _autograd_step(x, y, w1, w2, optimizer) -> torch.Tensor:
    loss = mse_loss(forward_fused(x, w1, w2), y, reduction="sum")
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss


def resolve_mode(config: TrainConfig, device: torch.device) -> tuple[str, bool]:
    """(mode, cuda_graph) after defaults: on CUDA the fastest, step + CUDA graph."""
    if config.reference:
        return "reference", False
    mode = "step" if config.mode == "auto" else config.mode
    if config.is_mlp:
        if config.cuda_graph:
            raise ValueError("an MLP run (--layers, --bias, --momentum, --loss) does not replay a CUDA graph")
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


def make_step(mode: str, cuda_graph: bool, x, y, w1, w2, lr: float) -> Callable[[], torch.Tensor]:
    """A callable running one training step on these tensors and returning its loss tensor."""
    if mode == "reference":
        return lambda: _reference_step(x, y, w1, w2, lr)
    if mode == "autograd":
        optimizer = SGD([w1, w2], lr=lr)
        return lambda: _autograd_step(x, y, w1, w2, optimizer)
    if cuda_graph:
        return CUDAGraphStep(x, y, w1.detach(), w2.detach(), lr).replay
    return lambda: train_step(x, y, w1.detach(), w2.detach(), lr)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def should_print(step: int) -> bool:
    return step == 1 or step % 100 == 0


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Run the tutorial loop (or an MLP's, `train_mlp`); `log` gets the progress lines. One warm-up step on copies of the
    weights (kernel compilation, allocator warm-up; for a CUDA graph also the capture) runs
    before the clock starts."""
    if config.is_mlp:
        from .train_mlp import train_mlp
        return train_mlp(config, log)
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    x, y, w1, w2 = make_problem(config, device, dtype)
    mode, cuda_graph = resolve_mode(config, device)

    with settings.backend(config.backend):
        backend = describe_backend(mode, x)
        warm_w1, warm_w2 = (w.detach().clone().requires_grad_() for w in (w1, w2))
        make_step(mode, False, x, y, warm_w1, warm_w2, config.lr)()
        step = make_step(mode, cuda_graph, x, y, w1, w2, config.lr)
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
