"""`python -m fusedgrad`: train the tutorial's two-layer network (or an MLP) and report the speed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

import torch

from . import settings
from .checks import check_lr
from .kernels.precision import DTYPES
from .settings import BACKENDS, use_triton_interpreter
from .train import (MODES, TORCHRUN_VARIABLES, TrainConfig, describe_environment, resolve_device, resolve_mode, train,
                    under_torchrun)


# What torch.Generator.manual_seed accepts (a negative seed is taken modulo 2**64).
SEEDS = range(-2**63, 2**64)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), not a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:  # also rejects NaN
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if value not in SEEDS:
        raise argparse.ArgumentTypeError(f"must be from -2**63 to 2**64 - 1 (what torch.manual_seed takes), "
                                         f"got {text}")
    return value


def _layers(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes separated by commas (1000,100,10), got {text!r}") from None
    if len(sizes) < 2 or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected at least two sizes, each > 0, got {text!r}")
    return sizes


def _momentum(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return value


def _device(text: str) -> str:
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (try auto, cpu, cuda, cuda:1)") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device type must be cpu or cuda, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = Parser(
        prog="python -m fusedgrad",
        description="Train the tutorial's two-layer network y = relu(x @ w1) @ w2 with SGD "
                    "on sum((y_pred - y)^2), using fusedgrad's fused ops.")
    parser.add_argument("--steps", type=_positive(int), default=defaults.steps)
    parser.add_argument("--batch", type=_positive(int), default=defaults.batch, help="N")
    parser.add_argument("--d-in", type=_positive(int), default=defaults.d_in, help="D_in")
    parser.add_argument("--hidden", type=_positive(int), default=defaults.hidden, help="H")
    parser.add_argument("--d-out", type=_positive(int), default=defaults.d_out, help="D_out")
    parser.add_argument("--lr", type=_positive(float), default=defaults.lr)
    parser.add_argument("--seed", type=_seed, default=defaults.seed)
    parser.add_argument("--device", type=_device, default=defaults.device,
                        help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES, key=lambda name: name != defaults.dtype),  # default first
                        default=defaults.dtype,
                        help="float16 overflows at the tutorial's scale (losses ~1e7)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="auto: Triton on CUDA, ATen on CPU; triton on CPU runs Triton's interpreter "
                             f"(default: $FUSEDGRAD_BACKEND, else {defaults.backend})")
    parser.add_argument("--reference", action="store_true",
                        help="run the plain-PyTorch tutorial loop instead (same seed, same data)")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="autograd: fusedgrad ops under autograd; step: the fused step without "
                             "the tape; auto: step")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=defaults.cuda_graph,
                        help="replay the fused step from a CUDA graph (default: on with CUDA in step mode)")
    parser.add_argument("--layers", type=_layers, default=None, metavar="SIZES",
                        help="train an MLP of these sizes, input first (1000,100,10 is the tutorial's net "
                             "in nn.Linear's layout) instead of the tutorial's network; so do --bias, "
                             "--momentum and --loss (sizes from --d-in --hidden --d-out)")
    parser.add_argument("--bias", action="store_true", help="MLP layers with biases")
    parser.add_argument("--momentum", type=_momentum, default=defaults.momentum, help="SGD momentum")
    parser.add_argument("--loss", choices=("mse", "cross_entropy"), default=defaults.loss,
                        help="summed squared error, or summed cross-entropy over random class indices")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel under torchrun (torchrun --nproc-per-node N -m fusedgrad "
                             "--distributed): each rank trains on its shard of the batch, gloo on CPU, NCCL "
                             "on CUDA (a GPU per rank); rank 0 prints the whole batch's losses")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the run (config, losses, timing, environment) as JSON")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json:
        _check_destination(parser, args.json)  # before anything runs: the record comes at the end
    try:  # the environment's settings, each named by its variable when it is wrong
        if args.backend is None:
            args.backend = settings.current_backend()
        settings.current_fp32_precision(), settings.autotune_enabled(), settings.current_cache_dir()
    except ValueError as error:
        parser.error(str(error))
    config = TrainConfig(**{field: getattr(args, field) for field in TrainConfig.__dataclass_fields__})
    sizes = config.sizes
    largest = max(max(config.batch * size for size in sizes), max(a * b for a, b in zip(sizes, sizes[1:])))
    if largest >= 2**60:  # its size in bytes would not fit in an int64
        parser.error(f"sizes too large: {_sizes_named(config)} make a tensor of {largest} elements")
    try:
        check_lr(config.lr, "--lr", dtype=DTYPES[config.dtype])  # the range the step will apply it in
    except ValueError as error:
        parser.error(str(error))
    if config.distributed and not under_torchrun():
        parser.error(f"--distributed: run under torchrun (torchrun --nproc-per-node N -m fusedgrad --distributed); "
                     f"{', '.join(TORCHRUN_VARIABLES)} are not all set")
    device = resolve_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {config.device}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(f"--device {config.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    try:
        resolve_mode(config, device)
    except ValueError as error:
        parser.error(f"--cuda-graph: {error}")
    if config.backend == "triton" and not config.reference:
        if device.type == "cpu":
            use_triton_interpreter()  # Triton kernels on CPU tensors run interpreted
    return config, args


def _sizes_named(config: TrainConfig) -> str:
    if config.layers is not None:
        return f"--batch {config.batch} --layers {','.join(map(str, config.layers))}"
    return f"--batch {config.batch} --d-in {config.d_in} --hidden {config.hidden} --d-out {config.d_out}"


def _check_destination(parser: argparse.ArgumentParser, path: str) -> None:
    """Exit with one line unless a file can be written at `path` (tried: opened for appending,
    and removed again where it did not exist)."""
    existed = os.path.lexists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        parser.error(f"--json {path}: cannot write there ({error.strerror})")
    if not existed:
        os.remove(path)


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    try:
        result = train(config)
    except (RuntimeError, MemoryError) as error:
        if not _out_of_memory(error):
            raise
        print(f"{build_parser().prog}: error: out of memory for {_sizes_named(config)} ({config.dtype} on "
              f"{resolve_device(config.device)})", file=sys.stderr)
        return 2
    if result.rank != 0:
        return 0  # rank 0 reports for the run
    ranks = f" | {result.ranks} ranks, data-parallel" if result.ranks > 1 else ""
    summary = (f"Summary: device {result.device} | backend {result.backend} | mode {result.mode}{ranks} | "
               f"dtype {config.dtype} | {result.steps} steps in {result.seconds:.3f} s | "
               f"{result.steps_per_second:.1f} steps/s (wall time after 1 warm-up step)")
    print(summary)
    if args.json:
        record = {"config": dataclasses.asdict(config), "backend": result.backend, "mode": result.mode,
                  "losses": {str(step): loss for step, loss in result.losses.items()},
                  "seconds": result.seconds, "steps_per_second": result.steps_per_second, "summary": summary,
                  "environment": describe_environment(resolve_device(config.device))}
        try:
            with open(args.json, "w") as file:
                json.dump(record, file, indent=2)
        except OSError as error:
            print(f"{build_parser().prog}: error: --json {args.json}: {error.strerror}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
