"""The fused training step of the tutorial's network, and its capture in a CUDA graph.

    loss = sum((relu(x @ w1) @ w2 - y)**2);  w1 -= lr * dloss/dw1;  w2 -= lr * dloss/dw2

`train_step` runs it without the autograd tape: on CUDA as five Triton GEMM launches with
everything else in their epilogues (`fusedgrad.kernels.train_step`), elsewhere as
`train_step_reference`, the same math in in-place ATen ops, which is also the test oracle. The
op is `fusedgrad::train_step_`, declared as writing w1 and w2.
`CUDAGraphStep` captures the Triton step once and replays it as one graph launch.
"""

from __future__ import annotations

import torch

from . import dispatch, distributed, library, settings
from .checks import check_lr, check_operands, check_writable, memory_span, share_memory
from .kernels.config import PLAIN_SGD, Update
from .kernels.precision import accumulator_dtype


def _check(x, y, w1, w2, lr) -> None:
    check_operands("train_step", x, w1, ("x", "w1"))
    check_operands("train_step", w1, w2, ("w1", "w2"))
    check_operands("train_step", y, w2.T, ("y", "w2.T"))  # y (N, D_out): 2-D, alike, D_out matches
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"train_step: batch sizes differ: x is {tuple(x.shape)}, y is {tuple(y.shape)}")
    if min(x.shape + w1.shape + w2.shape) == 0:
        raise ValueError(f"train_step: empty dimension in x {tuple(x.shape)}, w1 {tuple(w1.shape)}, "
                         f"w2 {tuple(w2.shape)}")
    check_lr(lr, "train_step", x.device, x.dtype)
    check_writable("train_step", "w1", w1)
    check_writable("train_step", "w2", w2)


def _check_weights_apart(w1, w2) -> None:
    if share_memory(w1, w2):
        raise ValueError(f"train_step: w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)} share memory; the step "
                         f"updates both in place, so each must have memory of its own")


def _read_apart(x, w1, w2, lr):
    """(x, lr) as the step may read them. The step writes w1 and w2 while it still reads x
    (x.T @ grad_h updates w1) and lr, so where they share memory with a weight they are copied
    first; y is read only before any write. Weights that share memory are refused: the step
    would write some elements twice."""
    _check_weights_apart(w1, w2)
    (x_start, x_end), (w1_start, w1_end), (w2_start, w2_end) = memory_span(x), memory_span(w1), memory_span(w2)
    if (x_start < w1_end and w1_start < x_end) or (x_start < w2_end and w2_start < x_end):  # ranges meet: copy
        x = x.clone()
    if isinstance(lr, torch.Tensor) and (share_memory(lr, w1) or share_memory(lr, w2)):
        lr = lr.clone()
    return x, lr


@torch.no_grad()
def train_step_reference(x, y, w1, w2, lr) -> torch.Tensor:
    """The step in ATen: fused where ATen allows (addmm_ applies the update with the GEMM)."""
    h = torch.mm(x, w1).relu_()
    grad_y = torch.mm(h, w2).sub_(y)                    # y_pred - y, in place
    difference = grad_y.view(-1).to(accumulator_dtype(grad_y.dtype))  # 16-bit: the sum in float32
    loss = torch.dot(difference, difference)            # sum of squares, one kernel
    grad_y.mul_(2)
    grad_h = torch.ops.aten.threshold_backward(torch.mm(grad_y, w2.T), h, 0)  # uses the old w2
    if isinstance(lr, torch.Tensor) or lr == 0:  # addmm_ skips the product at alpha 0 (BLAS's rule), which
        # would hide NaN and Inf gradients that an update by lr * grad propagates, as torch.optim.SGD's does
        w2.sub_(torch.mm(h.T, grad_y).mul_(lr))
        w1.sub_(torch.mm(x.T, grad_h).mul_(lr))
    else:
        w2.addmm_(h.T, grad_y, alpha=-lr)
        w1.addmm_(x.T, grad_h, alpha=-lr)
    return loss


def _step_kernel(x, y, w1, w2, lr_tensor, lr):
    """The CPU and CUDA kernel of `fusedgrad::train_step_`."""
    lr = lr if lr_tensor is None else lr_tensor
    _check(x, y, w1, w2, lr)
    x, lr = _read_apart(x, w1, w2, lr)
    if dispatch.resolve(x) == "triton":  # the kernels record nothing: no grad mode to set
        loss = dispatch.load_kernels().two_layer_sgd_step(x, y, w1, w2, lr, settings.kernel_fp32_precision(),
                                                          settings.tuner())
        library.bump_versions(w1, w2)
        return loss
    with torch.no_grad():
        if torch._C._is_any_autocast_enabled():  # entering the block costs host time: only when it matters
            with torch.autocast(x.device.type, enabled=False):
                return train_step_reference(x, y, w1, w2, lr)
        return train_step_reference(x, y, w1, w2, lr)


def _step_fake(x, y, w1, w2, lr_tensor, lr):
    _check(x, y, w1, w2, lr if lr_tensor is None else lr_tensor)
    return x.new_empty((), dtype=accumulator_dtype(x.dtype))


library.define("train_step_(Tensor x, Tensor y, Tensor(a!) w1, Tensor(b!) w2, Tensor? lr_tensor, float lr) -> Tensor",
               _step_kernel, _step_fake, mutating=True)


def train_step(x: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
               lr: float | torch.Tensor, process_group=None) -> torch.Tensor:
    """One SGD step of `relu(x @ w1) @ w2` on `sum((y_pred - y)**2)`: updates w1 and w2 in place
    and returns the step's loss (computed before the update; a 0-d float32 tensor, float64 for
    float64 inputs: a 16-bit sum of squares would overflow) without a host sync. The step
    computes in its inputs' dtype, inside torch.autocast too: it updates the weights in place,
    in their dtype. Refused before anything is written: weights that are expanded or overlap
    themselves or each other, inference tensors outside inference mode, and `lr` outside the
    rule of `checks.check_lr`. x or lr sharing memory with a weight is read from a copy. The op
    is `fusedgrad::train_step_`.

    With a `process_group` (torch.distributed), x and y are this rank's shard of the batch: the
    step computes the gradients (the layers as `nn.Linear` would hold them, w1.T and w2.T),
    sums them across the group and updates every replica alike, returning the whole batch's
    loss (`fusedgrad.distributed`); w1 and w2 must then be contiguous or transposed."""
    if process_group is not None:
        return _data_parallel_step(x, y, w1, w2, lr, process_group)
    lr_tensor, lr_number = library.lr_arguments(lr)
    if library.eager(x, y, w1, w2):
        return _step_kernel(x, y, w1, w2, lr_tensor, lr_number)
    return torch.ops.fusedgrad.train_step_(x, y, w1, w2, lr_tensor, lr_number)


@torch._disable_dynamo  # torch.compile runs the step as it is, collectives included
def _data_parallel_step(x, y, w1, w2, lr, process_group) -> torch.Tensor:
    process_group = distributed.check_process_group(process_group, "train_step")
    _check(x, y, w1, w2, lr)
    x, lr = _read_apart(x, w1, w2, lr)
    weights, update = [w1.detach().T, w2.detach().T], Update(lr, PLAIN_SGD, None, False)
    distributed.check_dense("train_step", [w1, w2], [update, update], ["w1", "w2"])
    triton = dispatch.resolve(x) == "triton"
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        loss = distributed.data_parallel_step(x, y, weights, [None, None], [update, update], [None, None], "mse",
                                              "sum", accumulator_dtype(x.dtype), process_group, triton,
                                              settings.kernel_fp32_precision(), settings.tuner())
    library.bump_versions(w1, w2)
    return loss


class CUDAGraphStep:
    """`train_step(x, y, w1, w2, lr, process_group)` captured once in a CUDA graph (with a
    process group, an NCCL one: its collectives are captured too).

    Inputs are static buffers: copy new data into `.x` and `.y` (and a new rate into `.lr`)
    before `replay()`. `replay()` runs one whole step as a single graph launch and returns the
    static 0-d loss tensor, overwritten by each replay; read it (`.item()`) only when needed.
    Kernels compile in a warm-up step on copies of the weights before the capture, so the
    weights see exactly the replayed steps.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                 lr: float | torch.Tensor, process_group=None):
        process_group = distributed.check_capturable(process_group, "CUDAGraphStep")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"CUDAGraphStep: x must be a torch.Tensor, got {type(x).__name__}")
        check_lr(lr, "CUDAGraphStep", x.device)  # before a float becomes a tensor the rule cannot read
        if not x.is_cuda:
            raise ValueError(f"CUDAGraphStep needs CUDA tensors, got x on {x.device}")
        self.x, self.y = x.detach().clone(), y.detach().clone()
        self.lr = (lr.detach().clone() if isinstance(lr, torch.Tensor)
                   else torch.tensor(float(lr), dtype=accumulator_dtype(x.dtype), device=x.device))
        self.w1, self.w2 = w1, w2
        _check(self.x, self.y, w1, w2, self.lr)
        _check_weights_apart(w1, w2)  # before the capture, whose warm-up runs on copies
        with torch.no_grad():
            warm_w1, warm_w2 = w1.detach().clone(), w2.detach().clone()
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                train_step(self.x, self.y, warm_w1, warm_w2, self.lr, process_group)
            torch.cuda.current_stream(x.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = train_step(self.x, self.y, w1.detach(), w2.detach(), self.lr, process_group)

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.loss
