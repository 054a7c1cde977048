"""A GEMM launch configuration, validated once, the kernel variant a configuration is tuned for,
and how parameters take their SGD step (rules, updates, their grouping into launches).

The fields are named as the kernel's meta-parameters (and Triton's launch options `num_warps`,
`num_stages`), so a configuration unpacks straight into a launch: adding a meta-parameter is one
field here and one parameter of the kernel. This module imports nothing from triton.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import torch


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """Tiles and launch options of one GEMM launch.

    BLOCK_M, BLOCK_N, BLOCK_K: the output tile and the K step, powers of two of at least 16
        (tl.dot's smallest 16-bit tile on a GPU).
    GROUP_M: row-blocks that share each column-block of B in L2 (grouped tile order).
    SPLIT_K: programs per output tile, each over a slice of K (1: no split).
    TMA: load a, b and the gate through tensor descriptors where they allow it (Hopper).
    PERSISTENT: one program per multiprocessor walks the tiles; needs SPLIT_K 1.
    num_warps: a power of two from 1 to 32. num_stages: software pipeline depth, at least 1.
    """

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    GROUP_M: int = 8
    SPLIT_K: int = 1
    TMA: bool = False
    PERSISTENT: bool = False
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            wanted = bool if field.type in ("bool", bool) else int
            if type(value) is not wanted:  # bool is an int subclass: compare types exactly
                raise ValueError(f"GemmConfig: {field.name} must be {wanted.__name__}, got {value!r}")
        for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
            value = getattr(self, name)
            if value < 16 or not _is_power_of_two(value):
                raise ValueError(f"GemmConfig: {name} must be a power of two >= 16, got {value}")
        for name in ("GROUP_M", "SPLIT_K", "num_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"GemmConfig: {name} must be >= 1, got {getattr(self, name)}")
        if not (_is_power_of_two(self.num_warps) and self.num_warps <= 32):
            raise ValueError(f"GemmConfig: num_warps must be a power of two from 1 to 32, got {self.num_warps}")
        if self.PERSISTENT and self.SPLIT_K != 1:
            raise ValueError(f"GemmConfig: a PERSISTENT launch takes SPLIT_K 1, got SPLIT_K {self.SPLIT_K}")
        object.__setattr__(self, "_hash", hash(dataclasses.astuple(self)))

    def __hash__(self) -> int:
        # Computed once: a config is part of every launch's key (`kernels.launch`).
        return self._hash

    @classmethod
    def of(cls, config: GemmConfig | Mapping[str, object]) -> GemmConfig:
        """`config` itself, or the configuration a mapping of field names describes."""
        if isinstance(config, GemmConfig):
            return config
        if not isinstance(config, Mapping):
            raise TypeError(f"GemmConfig: expected a GemmConfig or a dict, got {type(config).__name__}")
        unknown = sorted(set(config) - set(FIELDS))
        if unknown:
            raise ValueError(f"GemmConfig: unknown field(s) {', '.join(map(repr, unknown))}; "
                             f"the fields are {', '.join(FIELDS)}")
        missing = [name for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if name not in config]
        if missing:
            raise ValueError(f"GemmConfig: missing field(s) {', '.join(missing)}")
        return cls(**config)

    def replace(self, **changes) -> GemmConfig:
        return dataclasses.replace(self, **changes)

    @functools.cached_property
    def meta(self) -> dict:
        """The fields as keyword arguments of a launch (computed once: launches are host-bound)."""
        return {name: getattr(self, name) for name in FIELDS}


FIELDS = tuple(field.name for field in dataclasses.fields(GemmConfig))


class Variant(NamedTuple):
    """What the kernel is compiled to do, as far as the best tiles depend on it: the epilogue,
    the masked operand, whether the operands go through TMA descriptors, whether a bias is
    added and whether A's row sums are taken (which rules out split-K)."""

    epilogue: str
    mask_operand: int
    tma: bool = False
    bias: bool = False
    row_sums: bool = False

    def __str__(self) -> str:
        return (f"{self.epilogue} mask={self.mask_operand}" + (" tma" if self.tma else "")
                + (" bias" if self.bias else "") + (" row_sums" if self.row_sums else ""))


class UpdateRule(NamedTuple):
    """How SGD turns a gradient into a step, as `torch.optim.SGD` names it (the rate apart, which
    may be a tensor). With g the gradient (negated if `maximize`) plus weight_decay * p, and b the
    momentum buffer (g itself on its first step):

        b = momentum * b + (1 - dampening) * g        p -= lr * (g + momentum * b if nesterov else b)

    and p -= lr * g without momentum. The plain rule (all defaults) is the tutorial's SGD."""

    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False


PLAIN_SGD = UpdateRule()


class Update(NamedTuple):
    """How one parameter takes its step: rate (a float or a 0-d tensor), rule, momentum buffer
    (None without momentum), and whether the buffer is new (written, not read)."""

    lr: Any
    rule: UpdateRule
    buffer: Any
    fresh: bool


def update_groups(params: list, grads: list, updates: list) -> list[tuple[Update, list, list, list | None]]:
    """(update, params, grads, buffers or None) per rate, rule and freshness of the present
    parameters (None entries are skipped): what one `sgd.sgd_step_unchecked` call takes."""
    groups: dict = {}
    for param, grad, update in zip(params, grads, updates):
        if param is not None:
            key = (id(update.lr) if isinstance(update.lr, torch.Tensor) else update.lr, update.rule, update.fresh)
            groups.setdefault(key, (update, []))[1].append((param, grad, update.buffer))
    found = []
    for update, members in groups.values():
        group_params, group_grads, group_buffers = (list(column) for column in zip(*members))
        found.append((update, group_params, group_grads, None if update.buffer is None else group_buffers))
    return found
