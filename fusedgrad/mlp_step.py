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

import torch

from . import dispatch, library, settings
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
    hidden = [x]
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        out = torch.nn.functional.linear(hidden[-1], weight, bias)
        hidden.append(out.relu_() if index < len(weights) - 1 else out)
    prediction = hidden.pop()
    if loss_kind == "mse":
        difference = prediction - target
        squares = difference.to(accumulator_dtype(difference.dtype)).square()  # 16-bit: the sum in float32
        loss = squares.sum() if reduction == "sum" else squares.mean()
        grad = difference.mul_(2.0 / difference.numel() if reduction == "mean" else 2.0).to(x.dtype)
    else:  # F.cross_entropy's math, in float32 for 16-bit logits; a class outside [0, C): NaN, as the kernel
        logits = prediction.to(accumulator_dtype(prediction.dtype))
        classes = logits.shape[1]
        valid = ((target >= 0) & (target < classes)).unsqueeze(1)
        index = target.clamp(0, classes - 1).unsqueeze(1)
        log_total = logits.logsumexp(1, keepdim=True)
        row_losses = (log_total - logits.gather(1, index)).masked_fill(~valid, float("nan"))
        loss = row_losses.sum() if reduction == "sum" else row_losses.mean()
        grad = (logits - log_total).exp_().scatter_add_(1, index, torch.full_like(log_total, -1.0))
        grad = grad.masked_fill_(~valid, float("nan")).mul_(1.0 / len(target) if reduction == "mean" else 1.0)
        grad = grad.to(x.dtype)
    grads: list = []
    for index in reversed(range(len(weights))):
        grads.append((grad.T @ hidden[index], None if biases[index] is None else grad.sum(0)))
        if index > 0:
            grad = torch.ops.aten.threshold_backward(grad @ weights[index], hidden[index], 0)
    for (grad_weight, grad_bias), weight, bias, weight_update, bias_update in zip(
            reversed(grads), weights, biases, weight_updates, bias_updates):
        for param, param_grad, update in ((weight, grad_weight, weight_update), (bias, grad_bias, bias_update)):
            if param is not None:
                sgd_reference([param], [param_grad], update.lr, update.rule,
                              None if update.buffer is None else [update.buffer], update.fresh)
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


@torch._disable_dynamo  # torch.compile runs the step as it is (`torch.compiler.disable`, imported on first call)
def mlp_train_step(model, x: torch.Tensor, target: torch.Tensor, optimizer, loss: str = "mse",
                   reduction: str = "mean") -> torch.Tensor:
    """`model.train_step`: one step of `optimizer` on `loss(model(x), target)`; see `MLP.train_step`."""
    if loss not in LOSSES:
        raise ValueError(f"MLP.train_step: loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"MLP.train_step: reduction must be 'mean' or 'sum' (a step needs a scalar loss), "
                         f"got {reduction!r}")
    weights = [layer.weight for layer in model]
    biases = [layer.bias for layer in model]
    _check_data(x, target, weights, loss)
    params = [p for layer in zip(weights, biases) for p in layer if p is not None]
    if any(p.dtype != x.dtype or p.device != x.device for p in params):
        raise ValueError(f"MLP.train_step: every parameter must be {x.dtype} on {x.device}, got "
                         f"{[_describe(p) for p in params]}")
    updates = iter(_updates(optimizer, params))
    weight_updates, bias_updates = [], []
    for bias in biases:
        weight_updates.append(next(updates))
        bias_updates.append(None if bias is None else next(updates))
    # x is read while the first layer's weight is written: read it from a copy if they meet.
    if any(share_memory(x, p) for p in params):
        x = x.clone()
    loss_dtype = accumulator_dtype(x.dtype)  # a 16-bit sum would overflow
    if loss == "mse":
        loss_dtype = torch.promote_types(loss_dtype, target.dtype)
    detached_weights = [w.detach() for w in weights]
    detached_biases = [None if b is None else b.detach() for b in biases]
    if dispatch.resolve(x) == "triton":
        result = dispatch.load_kernels().mlp_sgd_step(x, target, detached_weights, detached_biases, weight_updates,
                                                      bias_updates, loss, reduction, loss_dtype,
                                                      settings.kernel_fp32_precision(), settings.tuner())
    else:
        with torch.autocast(x.device.type, enabled=False):
            result = mlp_step_reference(x, target, detached_weights, detached_biases, weight_updates, bias_updates,
                                        loss, reduction, loss_dtype)
    written = params + [u.buffer for u in weight_updates + bias_updates if u is not None and u.buffer is not None]
    library.bump_versions(*written)
    for param, update in zip(params, [u for pair in zip(weight_updates, bias_updates) for u in pair if u is not None]):
        if update.buffer is not None:
            optimizer.state[param]["momentum_buffer"] = update.buffer
    return result
