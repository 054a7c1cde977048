"""What every benchmark script shares: the run's environment, the result file, timing,
relative error, tolerances, the tutorial's shapes, logging and the product precision.

Scripts run as `python bench/<script>.py`, which puts this folder on sys.path: `import common`.
Results go to `bench/out/` (git-ignored) unless `--json` says otherwise; a result worth keeping
is copied into `bench/results/<date>-<machine>-<what>/` by hand, under the file names
`bench/summarize.py` reads.

Nothing here imports triton at import time: a script that needs Triton's interpreter turns it
on (`fusedgrad.settings.use_triton_interpreter()`) after importing this module.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, NamedTuple

import torch

from fusedgrad.kernels.precision import PRECISIONS
from fusedgrad.train import describe_environment

OUT = pathlib.Path(__file__).resolve().parent / "out"


class Shape(NamedTuple):
    batch: int   # N
    d_in: int    # D_in
    hidden: int  # H
    d_out: int   # D_out


TUTORIAL = Shape(batch=64, d_in=1000, hidden=100, d_out=10)

# Tolerances, one table per meaning, keyed by product precision (`PRECISIONS`' names).
# ||w - w_eager|| / ||w_eager|| of the final weights after the same training steps as eager
# PyTorch at the same precision (`bench/run.py`): rounding differences grow with the steps.
WEIGHTS_VS_EAGER = {"ieee": 1e-3, "tf32": 2e-2, "bf16": 5e-2}
# ||C - C_64|| / ||C_64|| of one GEMM's output against float64 (`bench/kernels.py`): one
# rounding of the inputs to the product's format, accumulation in fp32.
GEMM_VS_FLOAT64 = {"bf16": 2e-2, "fp16": 3e-3, "tf32": 3e-3, "ieee": 1e-5}


def log(message: str) -> None:
    """Progress for a person watching: stderr, so stdout stays the script's table."""
    print(message, file=sys.stderr, flush=True)


def set_precision(name: str) -> torch.dtype:
    """Set torch's float32 matmul setting (cuBLAS) for product precision `name` and return its
    input dtype. cuBLAS has no 3xTF32: "tf32x3" leaves torch at "ieee"."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    dtype, fp32_precision = PRECISIONS[name]
    torch.backends.cuda.matmul.fp32_precision = "tf32" if fp32_precision == "tf32" else "ieee"
    return dtype


def kernel_fp32_precision(name: str) -> str:
    """The `fp32_precision` argument of the kernels for product precision `name`: its own for
    float32 names; "ieee" for 16-bit ones, whose inputs multiply in their format regardless."""
    return PRECISIONS[name][1] or "ieee"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_cuda(what: str) -> torch.device:
    """The CUDA device, or exit status 1 with `what` and the reason on stderr."""
    if not torch.cuda.is_available():
        log(f"{what}; no CUDA device here")
        raise SystemExit(1)
    return torch.device("cuda")


def parser(doc: str, json_name: str | None) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first line as description, and `--json PATH`
    defaulting to `bench/out/<json_name>` (None where the script's other flags name the file:
    then `args.json` is None unless given)."""
    result = argparse.ArgumentParser(description=doc.splitlines()[0])
    default = "see the description" if json_name is None else f"bench/out/{json_name}"
    result.add_argument("--json", type=pathlib.Path, default=None if json_name is None else OUT / json_name,
                        help=f"result file (default: {default})")
    return result


def environment(device: torch.device) -> dict:
    """Versions and hardware of a run, for result files: the library's record (date, python,
    torch, triton, cuda, device, gpu) plus the command, platform, git commit (GIT_COMMIT, else
    `git rev-parse HEAD`) and, on CUDA, the GPU's size and the driver (nvidia-smi)."""
    info = describe_environment(device)
    info.update(command=" ".join([os.path.basename(sys.executable), *sys.argv]), platform=platform.platform(),
                git_commit=os.environ.get("GIT_COMMIT") or _command_output(["git", "rev-parse", "HEAD"]))
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_multiprocessors=properties.multi_processor_count,
                    gpu_memory_bytes=properties.total_memory,
                    cuda_driver=_command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
    return info


def _command_output(command: list[str]) -> str | None:
    """The first line `command` prints, or None when it cannot run or fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30,
                                cwd=pathlib.Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def write_result(path: str | os.PathLike, result: dict, device: torch.device) -> dict:
    """Add the environment of `device` to `result`, write it to `path` as JSON (folders made as
    needed) and return it."""
    result["environment"] = environment(device)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def median_us(fn: Callable[[], object], warmup_ms: int = 50, rep_ms: int = 300) -> float:
    """Median µs of one call of `fn` over CUDA-event-timed calls (`triton.testing.do_bench`,
    after `warmup_ms` of warm-up): host launch cost included."""
    import triton.testing
    return 1e3 * triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def graph_replay_us(fn: Callable[[], object], calls: int, warmup_ms: int = 50, rep_ms: int = 300) -> float:
    """GPU µs of one call of `fn`: `calls` calls captured in one CUDA graph, the replay's median
    time divided by `calls`, so host launch cost is left out. `fn` runs once on a side stream
    before the capture (compilation and autotuning happen there, never in the graph)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return median_us(graph.replay, warmup_ms, rep_ms) / calls


def wall_us(fn: Callable[[], object], repeats: int = 2) -> float:
    """Median wall-clock µs of `repeats` calls after one warm-up call (no CUDA needed)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def dense_peak_tflops(precision: str, device: torch.device, n: int) -> float:
    """TFLOP/s of one dense n x n x n `torch.mm` (cuBLAS) at `precision`, random data."""
    dtype = set_precision(precision)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / (median_us(lambda: torch.mm(a, b), warmup_ms=100, rep_ms=500) * 1e-6) / 1e12


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """||actual - reference|| / ||reference|| in float64 over the finite entries of `reference`
    (on its device); infinite when the two have their NaNs or infinities in different places."""
    actual, reference = actual.detach().double().to(reference.device), reference.detach().double()
    finite = reference.isfinite()
    same_nonfinite = (torch.equal(actual.isnan(), reference.isnan()) and torch.equal(actual.isinf(), reference.isinf())
                      and torch.equal(actual[reference.isinf()], reference[reference.isinf()]))
    if not same_nonfinite:
        return float("inf")
    return ((actual[finite] - reference[finite]).norm() / reference[finite].norm().clamp_min(1e-30)).item()
