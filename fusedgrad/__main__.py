"""`python -m fusedgrad`: train the tutorial's two-layer network and report the speed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from .kernels.precision import DTYPES
from .settings import BACKENDS, use_triton_interpreter
from .train import MODES, TrainConfig, describe_environment, resolve_device, resolve_mode, train


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:  # also rejects NaN
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


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
    parser = argparse.ArgumentParser(
        prog="python -m fusedgrad",
        description="Train the tutorial's two-layer network y = relu(x @ w1) @ w2 with SGD "
                    "on sum((y_pred - y)^2), using fusedgrad's fused ops.")
    parser.add_argument("--steps", type=_positive(int), default=defaults.steps)
    parser.add_argument("--batch", type=_positive(int), default=defaults.batch, help="N")
    parser.add_argument("--d-in", type=_positive(int), default=defaults.d_in, help="D_in")
    parser.add_argument("--hidden", type=_positive(int), default=defaults.hidden, help="H")
    parser.add_argument("--d-out", type=_positive(int), default=defaults.d_out, help="D_out")
    parser.add_argument("--lr", type=_positive(float), default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", type=_device, default=defaults.device,
                        help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES, key=lambda name: name != defaults.dtype),  # default first
                        default=defaults.dtype,
                        help="float16 overflows at the tutorial's scale (losses ~1e7)")
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                        help="auto: Triton on CUDA, ATen on CPU; triton on CPU runs Triton's interpreter")
    parser.add_argument("--reference", action="store_true",
                        help="run the plain-PyTorch tutorial loop instead (same seed, same data)")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="autograd: fusedgrad ops under autograd; step: the fused step without "
                             "the tape; auto: step")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=defaults.cuda_graph,
                        help="replay the fused step from a CUDA graph (default: on with CUDA in step mode)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the run (config, losses, timing, environment) as JSON")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = TrainConfig(**{field: getattr(args, field) for field in TrainConfig.__dataclass_fields__})
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


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    result = train(config)
    summary = (f"Summary: device {result.device} | backend {result.backend} | mode {result.mode} | dtype {config.dtype} | "
               f"{result.steps} steps in {result.seconds:.3f} s | {result.steps_per_second:.1f} steps/s "
               f"(wall time after 1 warm-up step)")
    print(summary)
    if args.json:
        record = {"config": dataclasses.asdict(config), "backend": result.backend, "mode": result.mode,
                  "losses": {str(step): loss for step, loss in result.losses.items()},
                  "seconds": result.seconds, "steps_per_second": result.steps_per_second, "summary": summary,
                  "environment": describe_environment(resolve_device(config.device))}
        with open(args.json, "w") as file:
            json.dump(record, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
