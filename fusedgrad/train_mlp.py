"""An MLP of any depth trained with fusedgrad or with plain PyTorch: the trainer's `--layers`,
`--bias`, `--momentum` and `--loss`.

    y_pred = MLP(sizes, bias)(x),   loss = sum((y_pred - y)**2) or summed cross-entropy,
    torch.optim.SGD's step with `momentum`

Modes, on the same data and initial parameters from the same seed:
    reference   nn.Sequential(nn.Linear, nn.ReLU, ...) with torch.optim.SGD, eager
    autograd    `fusedgrad.nn.MLP` (fusedgrad.linear) under autograd with fusedgrad.optim.SGD
    step        `MLP.train_step`: the whole step without the autograd tape
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import settings
from .kernels.precision import DTYPES
from .loss import mse_loss
from .nn import MLP
from .optim import SGD
from .train import (Ranks, TrainConfig, TrainResult, describe_backend, describe_device, resolve_device, resolve_mode,
                    run_steps)


def make_mlp_problem(config: TrainConfig, device: torch.device, dtype: torch.dtype):
    """(model, x, target) from `config.seed`, drawn on the CPU so every device sees the same
    numbers; the model initialised as nn.Linear initialises."""
    sizes = config.sizes
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(config.batch, sizes[0], generator=generator)
    if config.loss == "cross_entropy":
        target = torch.randint(0, sizes[-1], (config.batch,), generator=generator)
    else:
        target = torch.randn(config.batch, sizes[-1], generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = MLP(sizes, bias=config.bias)
    target = target.to(device) if config.loss == "cross_entropy" else target.to(device, dtype)
    return model.to(device, dtype), x.to(device, dtype), target


def eager_twin(model: MLP) -> nn.Sequential:
    """nn.Sequential(nn.Linear, nn.ReLU, ..., nn.Linear) holding copies of `model`'s parameters."""
    layers = []
    for index, layer in enumerate(model):
        twin = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None,
                         device=layer.weight.device, dtype=layer.weight.dtype)
        twin.load_state_dict(layer.state_dict())
        layers += [twin] + ([nn.ReLU()] if index < len(model) - 1 else [])
    return nn.Sequential(*layers)


def make_mlp_step(mode: str, model: MLP, x, target, config: TrainConfig,
                  ranks: Ranks = Ranks()) -> tuple[Callable[[], torch.Tensor], list]:
    """(a callable running one step on this rank's shard and returning the whole batch's loss
    tensor, the parameters it trains)."""
    if mode == "reference":
        reference = eager_twin(model)
        optimizer = torch.optim.SGD(reference.parameters(), lr=config.lr, momentum=config.momentum)
        criterion = F.mse_loss if config.loss == "mse" else F.cross_entropy
        return _autograd_step(lambda: criterion(reference(x), target, reduction="sum"), optimizer, ranks), \
            list(reference.parameters())
    optimizer = SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    if mode == "autograd":
        if config.loss == "mse":
            return _autograd_step(lambda: mse_loss(model(x), target, reduction="sum"), optimizer, ranks), \
                list(model.parameters())
        # no fused cross-entropy op: torch's own on fusedgrad's layers
        return _autograd_step(lambda: F.cross_entropy(model(x), target, reduction="sum"), optimizer, ranks), \
            list(model.parameters())
    return (lambda: model.train_step(x, target, optimizer, loss=config.loss, reduction="sum",
                                     process_group=ranks.group)), list(model.parameters())


def _autograd_step(loss_of: Callable[[], torch.Tensor], optimizer, ranks: Ranks) -> Callable[[], torch.Tensor]:
    def step():
        loss = loss_of()
        loss.backward()
        ranks.sum_([p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None])
        optimizer.step()
        optimizer.zero_grad()
        return ranks.summed(loss)
    return step


def train_mlp(config: TrainConfig, log: Callable[[str], None] = print, ranks: Ranks = Ranks(),
              device: torch.device | None = None) -> TrainResult:
    """Train the MLP `config` describes (this rank's shard of it); a warm-up step on a copy of
    the model runs first."""
    device = resolve_device(config.device) if device is None else device
    model, x, target = make_mlp_problem(config, device, DTYPES[config.dtype])
    x, target = ranks.shard(x), ranks.shard(target)
    mode, _ = resolve_mode(config, device)
    with settings.backend(config.backend):
        backend = describe_backend(mode, x)
        warm_up, _ = make_mlp_step(mode, _copy(model), x, target, config, ranks)
        warm_up()
        step, parameters = make_mlp_step(mode, model, x, target, config, ranks)
        losses, seconds = run_steps(step, config.steps, device, log)
    return TrainResult(losses=losses, steps=config.steps, seconds=seconds, device=describe_device(device),
                       backend=backend, mode=mode, w1=None, w2=None,
                       parameters=[p.detach() for p in parameters])


def _copy(model: MLP) -> MLP:
    twin = MLP(model.sizes, bias=model[0].bias is not None, device=model[0].weight.device,
               dtype=model[0].weight.dtype)
    twin.load_state_dict(model.state_dict())
    return twin
