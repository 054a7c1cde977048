"""The fused training step of an `MLP`: forward, loss, backward and the optimizer's update
without the autograd tape.

    loss = mse(mlp(x), target)  (mean or sum);  every parameter p <- SGD step of dloss/dp

with the optimizer's own settings for each parameter (`torch.optim.SGD` or
`fusedgrad.optim.SGD`: rate, momentum, dampening, weight decay, Nesterov, maximize) and its
momentum buffers, kept in its state as its own step keeps them, so steps of either kind can be
mixed and the state_dict is torch's. On CUDA the step is `kernels.mlp_step` (3L - 1 GEMM
launches for L layers, plus one for the biases); elsewhere `mlp_step_reference`, the same
math in ATen, which is also the test oracle's twin.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import dispatch, distributed, library, settings
from .checks import FLOAT_DTYPES, share_memory
from .kernels.config import Update
from .kernels.precision import accumulator_dtype
from .optim import SGD, group_rule
from .sgd import check_rule, check_update, sgd_reference

LOSSES = ("mse", "cross_entropy")
REDUCTIONS = ("mean", "sum")


@torch.no_grad()
def mlp_step_reference(x, target, weights, biases, weight_updates, bias_updates, loss_kind: str, reduction: str,
                       loss_dtype: torch.dtype) -> torch.Tensor:
    """ATen twin of `kernels.mlp_sgd_step`: the same arguments and math. Gradients are taken
    in the parameters' dtype (as autograd takes them), then each parameter takes its update."""
    weight_grads = [torch.empty_like(weight) for weight in weights]
    bias_grads = [None if bias is None else torch.empty_like(bias) for bias in biases]
    loss = mlp_gradients_reference(x, target, weights, biases, weight_grads, bias_grads, loss_kind, reduction,
                                   loss_dtype)
    for param, param_grad, update in zip(weights + biases, weight_grads + bias_grads, weight_updates + bias_updates):
        if param is not None:
            sgd_reference([param], [param_grad], update.lr, update.rule,
                          None if update.buffer is None else [update.buffer], update.fresh)
    return loss


@torch.no_grad()
def mlp_gradients_reference(x, target, weights, biases, weight_grads, bias_grads, loss_kind: str, reduction: str,
                            loss_dtype: torch.dtype, ranks: int = 1, on_layer=None) -> torch.Tensor:
    """ATen twin of `kernels.mlp_gradients`: the same arguments and math."""
    hidden = [x]
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        out = torch.nn.functional.linear(hidden[-1], weight, bias)
        hidden.append(out.relu_() if index < len(weights) - 1 else out)
    prediction = hidden.pop()
    if loss_kind == "mse":
        difference = prediction - target
        squares = difference.to(accumulator_dtype(difference.dtype)).square()  # 16-bit: the sum in float32
        loss = squares.sum() if reduction == "sum" else squares.sum() / (squares.numel() * ranks)
        grad = difference.mul_(2.0 / (difference.numel() * ranks) if reduction == "mean" else 2.0).to(x.dtype)
    else:  # F.cross_entropy's math, in float32 for 16-bit logits; a class outside [0, C): NaN, as the kernel
        logits = prediction.to(accumulator_dtype(prediction.dtype))
        classes = logits.shape[1]
        valid = ((target >= 0) & (target < classes)).unsqueeze(1)
        index = target.clamp(0, classes - 1).unsqueeze(1)
        log_total = logits.logsumexp(1, keepdim=True)
        row_losses = (log_total - logits.gather(1, index)).masked_fill(~valid, float("nan"))
        loss = row_losses.sum() if reduction == "sum" else row_losses.sum() / (len(target) * ranks)
        grad = (logits - log_total).exp_().scatter_add_(1, index, torch.full_like(log_total, -1.0))
        grad = grad.masked_fill_(~valid, float("nan")).mul_(1.0 / (len(target) * ranks) if reduction == "mean" else 1.0)
        grad = grad.to(x.dtype)
    for index in reversed(range(len(weights))):
        torch.mm(grad.T, hidden[index], out=weight_grads[index])
        if biases[index] is not None:
            torch.sum(grad, 0, out=bias_grads[index])
        if on_layer is not None:
            on_layer(index)
        if index > 0:
            grad = torch.ops.aten.threshold_backward(grad @ weights[index], hidden[index], 0)
    return loss.to(loss_dtype)


def _optimizer_groups(optimizer) -> dict:
    """id(parameter) -> (group index, index in it, group) of the optimizer's parameters."""
    if not isinstance(optimizer, (SGD, torch.optim.SGD)):
        raise TypeError(f"MLP.train_step: optimizer must be a torch.optim.SGD or fusedgrad.optim.SGD, got "
                        f"{type(optimizer).__name__}")
    found = {}
    for group_index, group in enumerate(optimizer.param_groups):
        for index, param in enumerate(group["params"]):
            found[id(param)] = (group_index, index, group)
    return found


def _updates(optimizer, params: list[torch.Tensor]) -> tuple[list[Update], list]:
    """Each parameter's `Update` from its optimizer group and state (a new buffer where momentum
    has none yet), checked before anything is written; and the buffers to keep in the state."""
    groups = _optimizer_groups(optimizer)
    rates, rules, buffers, names = [], [], [], []
    for position, param in enumerate(params):
        if id(param) not in groups:
            raise ValueError(f"MLP.train_step: parameter {position} of the model ({tuple(param.shape)}) is not "
                             f"in the optimizer's param_groups")
        group_index, index, group = groups[id(param)]
        if group.get("differentiable"):
            raise ValueError("MLP.train_step: an optimizer with differentiable=True (the step runs outside autograd)")
        rule = check_rule(group_rule(group), "MLP.train_step")
        rates.append(group["lr"])
        rules.append(rule)
        state = optimizer.state.get(param) if rule.momentum != 0 else None
        buffers.append(state.get("momentum_buffer") if state else None)
        names.append((group_index, index))
    # The gradients are computed inside the step: each parameter stands for its own.
    rates = check_update(params, params, rates, rules, buffers, names)
    updates = []
    for param, rate, rule, buffer in zip(params, rates, rules, buffers):
        fresh = rule.momentum != 0 and buffer is None
        if fresh:
            buffer = torch.empty_like(param, memory_format=torch.contiguous_format)
        elif buffer is not None and param.dim() == 1 and not buffer.is_contiguous():
            raise ValueError(f"MLP.train_step: the momentum buffer of a bias {tuple(param.shape)} must be contiguous")
        updates.append(Update(rate, rule, buffer, fresh))
    return updates


def _check_data(x, target, weights, loss: str) -> None:
    first = weights[0]
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype != first.dtype or x.device != first.device:
        raise ValueError(f"MLP.train_step: x must be a 2-D tensor (batch, {first.shape[1]}) of the model's dtype "
                         f"{first.dtype} on {first.device}, got {_describe(x)}")
    if x.shape[1] != first.shape[1]:
        raise ValueError(f"MLP.train_step: x is {tuple(x.shape)}, the first layer takes {first.shape[1]} features")
    out_features = weights[-1].shape[0]
    if loss == "mse" and (not isinstance(target, torch.Tensor) or target.shape != (x.shape[0], out_features)
                          or target.dtype not in FLOAT_DTYPES or target.device != x.device):
        raise ValueError(f"MLP.train_step: target must be a floating tensor of shape {(x.shape[0], out_features)} "
                         f"on {x.device}, got {_describe(target)}")
    if loss == "cross_entropy" and (not isinstance(target, torch.Tensor) or target.shape != (x.shape[0],)
                                    or target.dtype != torch.int64 or target.device != x.device):
        raise ValueError(f"MLP.train_step: with loss 'cross_entropy' target must be int64 class indices of shape "
                         f"{(x.shape[0],)} on {x.device}, got {_describe(target)}")
    if x.shape[0] == 0 or any(0 in weight.shape for weight in weights):
        raise ValueError(f"MLP.train_step: empty dimension in x {tuple(x.shape)} or the layers "
                         f"{[tuple(weight.shape) for weight in weights]}")


def _describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"{tuple(t.shape)} {t.dtype} on {t.device}"


class _Step(NamedTuple):
    """One step's checked arguments, as the kernels and the reference take them."""

    x: torch.Tensor
    target: torch.Tensor
    weights: list
    biases: list
    weight_updates: list
    bias_updates: list
    loss: str
    reduction: str
    loss_dtype: torch.dtype
    params: list  # the model's parameters, weight then bias per layer

    def updates(self) -> list:
        """The parameters' updates, in `params` order."""
        return [u for pair in zip(self.weight_updates, self.bias_updates) for u in pair if u is not None]


def _prepare(where: str, model, x, target, optimizer, loss: str, reduction: str) -> _Step:
    """Check everything and gather the step's arguments, before anything is written."""
    if loss not in LOSSES:
        raise ValueError(f"{where}: loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be 'mean' or 'sum' (a step needs a scalar loss), got {reduction!r}")
    weights = [layer.weight for layer in model]
    biases = [layer.bias for layer in model]
    _check_data(x, target, weights, loss)
    params = [p for layer in zip(weights, biases) for p in layer if p is not None]
    if any(p.dtype != x.dtype or p.device != x.device for p in params):
        raise ValueError(f"{where}: every parameter must be {x.dtype} on {x.device}, got "
                         f"{[_describe(p) for p in params]}")
    updates = iter(_updates(optimizer, params))
    weight_updates, bias_updates = [], []
    for bias in biases:
        weight_updates.append(next(updates))
        bias_updates.append(None if bias is None else next(updates))
    # x is read while the first layer's weight (and its buffer) is written: read from a copy if they meet.
    written = params + [u.buffer for u in weight_updates + bias_updates if u is not None and u.buffer is not None]
    if any(share_memory(x, t) for t in written):
        x = x.clone()
    loss_dtype = accumulator_dtype(x.dtype)  # a 16-bit sum would overflow
    if loss == "mse":
        loss_dtype = torch.promote_types(loss_dtype, target.dtype)
    return _Step(x, target, [w.detach() for w in weights], [None if b is None else b.detach() for b in biases],
                 weight_updates, bias_updates, loss, reduction, loss_dtype, params)


def _run(step: _Step) -> torch.Tensor:
    """The step on the backend in force: the Triton launches, or the ATen reference."""
    if dispatch.resolve(step.x) == "triton":
        return dispatch.load_kernels().mlp_sgd_step(*step[:9], settings.kernel_fp32_precision(), settings.tuner())
    with torch.autocast(step.x.device.type, enabled=False):
        return mlp_step_reference(*step[:9])


def _finish(step: _Step, optimizer) -> None:
    """After the update: versions bumped, new momentum buffers kept in the optimizer's state."""
    updates = step.updates()
    library.bump_versions(*step.params, *(u.buffer for u in updates if u.buffer is not None))
    for param, update in zip(step.params, updates):
        if update.buffer is not None:
            optimizer.state[param]["momentum_buffer"] = update.buffer


def _check_data_parallel(where: str, step: _Step) -> None:
    names = [f"{kind} of layer {index}" for index, bias in enumerate(step.biases)
             for kind in ("weight", "bias")[:1 if bias is None else 2]]
    distributed.check_dense(where, step.params, step.updates(), names)


def _run_data_parallel(step: _Step, process_group) -> torch.Tensor:
    """The step over `process_group` (`distributed.data_parallel_step`), on the backend in force."""
    triton = dispatch.resolve(step.x) == "triton"
    with torch.autocast(step.x.device.type, enabled=False):
        return distributed.data_parallel_step(*step[:9], process_group, triton, settings.kernel_fp32_precision(),
                                              settings.tuner())


@torch._disable_dynamo  # torch.compile runs the step as it is (`torch.compiler.disable`, imported on first call)
def mlp_train_step(model, x: torch.Tensor, target: torch.Tensor, optimizer, loss: str = "mse",
                   reduction: str = "mean", process_group=None) -> torch.Tensor:
    """`model.train_step`: one step of `optimizer` on `loss(model(x), target)`; see `MLP.train_step`."""
    process_group = distributed.check_process_group(process_group, "MLP.train_step")
    step = _prepare("MLP.train_step", model, x, target, optimizer, loss, reduction)
    if process_group is None:
        result = _run(step)
    else:
        _check_data_parallel("MLP.train_step", step)
        result = _run_data_parallel(step, process_group)
    _finish(step, optimizer)
    return result


def _settings(optimizer, params) -> list:
    """What a captured step baked in, per parameter: its group's rate (a float; a tensor rate is
    read on replay) and rule, and the group itself."""
    groups = _optimizer_groups(optimizer)
    found = []
    for param in params:
        group = groups.get(id(param), (None, None, {}))[2]
        rate = group.get("lr")
        found.append((id(group), None if isinstance(rate, torch.Tensor) else rate,
                      id(rate) if isinstance(rate, torch.Tensor) else None,
                      tuple(group.get(key) for key in ("momentum", "dampening", "weight_decay", "nesterov", "maximize"))))
    return found


class MLPGraphStep:
    """`MLP.train_step(x, target, optimizer, loss, reduction, process_group)` captured in a
    CUDA graph (with a process group, an NCCL one: its collectives are captured too).

    Inputs are static buffers: copy new data into `.x` and `.target` before `replay()`, which
    runs one step and returns the static 0-d loss, overwritten by each replay. A tensor `lr` in
    a group is read on every replay; numbers and the other settings are captured, so a replay
    after a group's settings change raises instead of running stale ones. Momentum buffers
    that do not exist yet are allocated now and enter the optimizer's state on the first
    replay, which replays a capture of the buffers' first step (written, not read); later
    replays replay the capture of a later step. Kernels compile in warm-up steps on copies.
    """

    def __init__(self, model, x: torch.Tensor, target: torch.Tensor, optimizer, loss: str = "mse",
                 reduction: str = "mean", process_group=None):
        if not isinstance(x, torch.Tensor) or not x.is_cuda:
            raise ValueError(f"MLP.cuda_graph_step needs CUDA tensors, got x {_describe(x)}")
        self.process_group = distributed.check_capturable(process_group, "MLP.cuda_graph_step")
        self.x, self.target = x.detach().clone(), target.detach().clone()
        step = _prepare("MLP.cuda_graph_step", model, self.x, self.target, optimizer, loss, reduction)
        if process_group is not None:
            _check_data_parallel("MLP.cuda_graph_step", step)
        if dispatch.resolve(self.x) != "triton":
            raise ValueError(f"MLP.cuda_graph_step: the backend in force runs {self.x.dtype} on ATen, which is not "
                             f"captured here; use backend 'triton'")
        self.optimizer, self.params = optimizer, step.params
        self.settings = _settings(optimizer, step.params)
        self._pending = any(u.fresh for u in step.updates())  # buffers to enter the state at the first replay
        self.graphs = [self._capture(step)]
        if self._pending:  # the same step with the buffers now written: every later replay
            later = step._replace(weight_updates=[u._replace(fresh=False) for u in step.weight_updates],
                                  bias_updates=[None if u is None else u._replace(fresh=False)
                                                for u in step.bias_updates])
            self.graphs.append(self._capture(later))
        self._step = step

    def _capture(self, step: _Step):
        """(graph, static loss) of `step`, after a warm-up run on copies of what it writes."""
        copies = {id(t): t.clone() for t in step.params + [u.buffer for u in step.updates() if u.buffer is not None]}
        copy = lambda t: None if t is None else copies[id(t)]
        warm = step._replace(
            weights=[copy(w) for w in step.weights], biases=[copy(b) for b in step.biases],
            weight_updates=[u._replace(buffer=copy(u.buffer)) for u in step.weight_updates],
            bias_updates=[None if u is None else u._replace(buffer=copy(u.buffer)) for u in step.bias_updates])
        device = self.x.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        run = _run if self.process_group is None else (
            lambda step: _run_data_parallel(step, self.process_group))
        with torch.cuda.stream(side), torch.no_grad():
            run(warm)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            loss = run(step)
        return graph, loss

    def replay(self) -> torch.Tensor:
        if _settings(self.optimizer, self.params) != self.settings:
            raise RuntimeError("MLP.cuda_graph_step: the optimizer's groups changed since the capture (a rate, a "
                               "setting or which group holds a parameter); capture a new step")
        graph, loss = self.graphs[-1] if not self._pending else self.graphs[0]
        graph.replay()
        if self._pending:
            _finish(self._step, self.optimizer)
            self._pending = False
        else:
            library.bump_versions(*self.params)
        return loss
