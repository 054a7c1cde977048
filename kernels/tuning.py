"""Launch configurations of the GEMM kernel: a shape heuristic by default, an autotuner on request.

A configuration is a `GemmConfig` (`kernels/config.py`): the kernel's tile meta-parameters and
Triton's launch options, validated when it is made.

Heuristic (the default; no timing, no warm-up cost): the largest tile that still gives every
multiprocessor a program, so a skinny product such as the tutorial's 64 x 100 output spreads
over many multiprocessors instead of running on one; pointer loads, never split-K, one program
per tile. Split-K, TMA loads and persistent programs are offered to the autotuner, which keeps
them only where they measure faster.

Autotuning (opt in: the caller passes a `Tuner`; `fusedgrad.autotune(True)` does): the first
launch of a kernel variant in a shape bucket times every candidate configuration with
`time_ms` (GPU time of CUDA-graph replays, no host launch cost) on scratch outputs (inputs are
only read; the caller's outputs and parameters are not touched) and keeps the fastest. The
trade-off: a few seconds of compiling and timing per new bucket, in exchange for tiles and
split-K chosen by measurement on this GPU rather than by rule.
- Keys: GPU name, triton version, dtype and dot precision, the `Variant` (epilogue, masked
  operand, TMA), the operands' layouts (row- or column-major), and M, N, K rounded up to powers
  of two, so a new batch size within the same bucket reuses the result instead of retuning.
- Never inside a CUDA-graph capture: there a launch takes a tuned config if one is cached, else
  the heuristic's (timing would record the benchmark runs into the graph).
- Cached across processes in the Tuner's JSON file. Triton caches the compiled kernels itself,
  so a second process neither compiles nor times again.
Under Triton's interpreter there is nothing to time: the heuristic's (large) interpreter tiles
always apply.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import tempfile
from typing import Callable

import torch
import triton

from .config import GemmConfig, Variant
from .precision import precision_name

# Part of every cache key: bump it when the kernel's meta-parameters or their meaning change, so
# configs cached by an older fusedgrad are retuned instead of launched.
SCHEMA = "gemm-v2"  # v2: PERSISTENT candidates; gated-B products launched transposed

# Tile shapes (BLOCK_M, BLOCK_N) of the heuristic, largest first; every block >= 16 (tl.dot's minimum).
HEURISTIC_TILES = ((128, 128), (64, 128), (128, 64), (64, 64), (32, 64), (64, 32), (32, 32), (16, 32),
                   (32, 16), (16, 16))

# Candidates for GEMM-bound shapes, (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), per
# product precision (`precision.PRECISIONS`): 16-bit and tf32 dots run on tensor cores (wgmma on
# Hopper), where large tiles and deep pipelines pay; IEEE fp32 dots run on the FMA units, where
# register pressure caps the tile. Each fits Hopper's 227 KiB of shared memory in every variant,
# masked operands included (`bench/compile_check.py --candidates` prints what each needs).
_TENSOR_CORE_16_BIT = ((128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 3), (128, 128, 64, 4, 4),
                       (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 128, 8, 2), (64, 64, 64, 4, 4))
_TENSOR_CORE_TF32 = ((128, 256, 32, 8, 3), (256, 128, 32, 8, 3), (128, 128, 32, 8, 3), (128, 128, 32, 4, 4),
                     (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4))
LARGE_TILES = {
    "bf16": _TENSOR_CORE_16_BIT, "fp16": _TENSOR_CORE_16_BIT,
    "tf32": _TENSOR_CORE_TF32, "tf32x3": _TENSOR_CORE_TF32,
    "ieee": ((128, 128, 16, 8, 3), (128, 128, 32, 8, 2), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3),
             (64, 64, 32, 4, 3), (64, 64, 64, 4, 2)),
}
SPLIT_K_CHOICES = (2, 4, 8, 16)
TMA_TWINS = 3  # large tiles also timed with TMA loads where the GPU has TMA
# Persistent programs with TMA loads (flattened across tiles: the next tile's loads overlap this
# tile's epilogue, at the cost of extra shared memory), per tensor-core precision (FMA dots get
# no TMA candidates: `tma_suits`); each fits 227 KiB in every variant
# (`bench/compile_check.py --candidates`), which tf32's 128 x 256 at 3 stages does not.
_PERSISTENT_16_BIT = ((128, 256, 64, 8, 3), (128, 128, 64, 8, 3))
_PERSISTENT_TF32 = ((128, 256, 32, 8, 2), (128, 128, 32, 8, 3))
PERSISTENT_TILES = {"bf16": _PERSISTENT_16_BIT, "fp16": _PERSISTENT_16_BIT,
                    "tf32": _PERSISTENT_TF32, "tf32x3": _PERSISTENT_TF32}
INTERPRETER_RESIDENT_PROGRAMS = 3  # a persistent launch's grid under the interpreter: tiles per program > 1
INTERPRETER_CONFIG = GemmConfig(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=4, num_warps=4, num_stages=1)


@functools.lru_cache(maxsize=None)
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def resident_programs(device: torch.device) -> int:
    """A persistent launch's grid: one program per multiprocessor (the candidates' tiles fill a
    multiprocessor's shared memory or registers on their own); a few under the interpreter."""
    if device.type != "cuda":
        return INTERPRETER_RESIDENT_PROGRAMS
    return multiprocessors(device_index(device))


@functools.lru_cache(maxsize=None)
def has_tma(device_index: int) -> bool:
    """Hopper (sm_90) and later copy tiles with the tensor memory accelerator."""
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


@functools.lru_cache(maxsize=None)
def _device_name(device_index: int) -> str:
    return torch.cuda.get_device_name(device_index)


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def tma_suits(a: torch.Tensor, b: torch.Tensor, input_precision: str | None) -> bool:
    """Whether TMA candidates are worth timing for `a @ b` (read off sm_90 TTGIR and cubins:
    bench/NOTES.md v5). 16-bit wgmma reads either layout from shared memory: yes. tf32 wgmma reads both
    operands K-major, and a TMA block lands in its storage layout, so only A row-major with B
    column-major keeps wgmma in flight; any other layout adds a register round trip and a wait
    every K step. IEEE fp32 dots run on the FMA units, where TMA saves nothing and its tiles
    spill (bench/NOTES.md v5e): no. float64 dots are not tensor-core wgmma either: no."""
    if a.dtype in (torch.float16, torch.bfloat16):
        return True
    if a.dtype == torch.float64:
        return False
    return input_precision != "ieee" and a.stride(1) == 1 and b.stride(0) == 1


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host code on plain integers: `triton.cdiv` is a constexpr function, many
    times as slow, and the launch path calls this a dozen times (bench/NOTES.md v4e)."""
    return -(-a // b)


def bucket(size: int) -> int:
    """The power of two at or above `size` (at least 16): the autotuner's shape bucket."""
    return max(16, 1 << (size - 1).bit_length())


@functools.lru_cache(maxsize=4096)  # it runs on every launch
def heuristic(M: int, N: int, K: int, dtype: torch.dtype, num_sms: int) -> GemmConfig:
    """The largest tile that still gives each of `num_sms` multiprocessors a program, else the
    smallest; BLOCK_K 64 for small tiles and 16-bit inputs, 32 for large fp32 tiles, 16 for
    fp64 (eight-byte elements: a 32-wide fp32 tile's shared memory); up to
    three pipeline stages, no more than there are K steps."""
    for block_m, block_n in HEURISTIC_TILES:
        if cdiv(M, block_m) * cdiv(N, block_n) >= num_sms:
            break
    small = block_m * block_n <= 32 * 64
    block_k = 16 if dtype == torch.float64 else 64 if small or dtype != torch.float32 else 32
    num_warps = 4 if block_m * block_n <= 64 * 64 else 8
    # Pipelining needs K steps to overlap; with one step it only holds registers (a masked
    # operand is prefetched into registers, several times the unpipelined count).
    num_stages = max(1, min(3, cdiv(K, block_k)))
    return GemmConfig(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)


def _tiles(table: tuple, **extra) -> list[GemmConfig]:
    return [GemmConfig(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps,
                       num_stages=num_stages, **extra)
            for block_m, block_n, block_k, num_warps, num_stages in table]


def candidates(M: int, N: int, K: int, dtype: torch.dtype, input_precision: str | None,
               num_sms: int, tma: bool = False, split_k: bool = True) -> list[GemmConfig]:
    """Every configuration the autotuner times for this shape: the heuristic's first; the large
    tiles of the product's precision that fit the bucketed shape, and with `tma` (Hopper and
    later; tensor-core dots only) the first TMA_TWINS of them again with TMA loads, and the
    PERSISTENT_TILES of the precision as persistent programs with TMA loads where there are
    more tiles than multiprocessors; and, when the output has fewer tiles than there are
    multiprocessors, the heuristic's tile split over K in 2 to 16 slices of at least two K
    steps each (a long-K skinny product then fills the GPU), unless `split_k` is False."""
    first = heuristic(M, N, K, dtype, num_sms)
    name = precision_name(dtype, input_precision)
    large = [config for config in _tiles(LARGE_TILES.get(name, ()))  # none for fp64: the heuristic's
             if config.BLOCK_M <= bucket(M) and config.BLOCK_N <= bucket(N) and config.BLOCK_K <= bucket(K)]
    found = [first, *large]
    if tma and name != "ieee":  # FMA dots: see `tma_suits`
        found += [config.replace(TMA=True) for config in large[:TMA_TWINS]]
        found += [config for config in _tiles(PERSISTENT_TILES.get(name, ()), TMA=True, PERSISTENT=True)
                  if cdiv(M, config.BLOCK_M) * cdiv(N, config.BLOCK_N) > num_sms and config.BLOCK_K <= bucket(K)]
    tiles = cdiv(M, first.BLOCK_M) * cdiv(N, first.BLOCK_N)
    k_steps = cdiv(K, first.BLOCK_K)
    for slices in SPLIT_K_CHOICES if split_k else ():
        if tiles < num_sms and k_steps >= 2 * slices and tiles * slices <= 4 * num_sms:
            found.append(first.replace(SPLIT_K=slices))
    return list(dict.fromkeys(found))  # distinct, in order


def _layout(t: torch.Tensor) -> str:
    return "row" if t.stride(1) == 1 else "col" if t.stride(0) == 1 else "strided"


def key(a: torch.Tensor, b: torch.Tensor, variant: Variant, input_precision: str | None) -> str:
    """The autotuner's cache key of `a @ b` in kernel variant `variant` (see the module text)."""
    (M, K), N = a.shape, b.shape[1]
    name = _device_name(device_index(a.device)) if a.is_cuda else str(a.device)
    return "|".join((SCHEMA, name, f"triton {triton.__version__}", str(a.dtype).removeprefix("torch."),
                     str(input_precision), str(variant), f"a {_layout(a)}", f"b {_layout(b)}",
                     f"M {bucket(M)}", f"N {bucket(N)}", f"K {bucket(K)}"))


def time_ms(run: Callable[[], None]) -> float:
    """GPU time of one call of `run`, from calls replayed in a CUDA graph: host launch cost,
    which would swamp the small kernels' differences, is left out."""
    return triton.testing.do_bench_cudagraph(run, rep=20, return_mode="median")


class Tuner:
    """Tuned configurations by key, in memory and in the JSON file `path` shared by processes."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self._table: dict[str, dict] | None = None
        self._configs: dict[str, GemmConfig | None] = {}  # lookups, validated once: launches are host-bound

    def _read(self) -> dict[str, dict]:
        try:
            table = json.loads(self.path.read_text())
        except (OSError, ValueError):  # no file yet, or one cut short: tune again
            return {}
        return table if isinstance(table, dict) else {}

    def entries(self) -> dict[str, dict]:
        """Every tuned key with its config, its time and all candidates' times."""
        if self._table is None:
            self._table = self._read()
        return dict(self._table)

    def lookup(self, key: str) -> GemmConfig | None:
        if key in self._configs:
            return self._configs[key]
        if self._table is None:
            self._table = self._read()
        entry = self._table.get(key)
        try:
            config = GemmConfig.of(entry["config"])
        except (TypeError, KeyError, ValueError):  # missing, or written by something else: tune again
            return None
        self._configs[key] = config
        return config

    def tune(self, key: str, configs: list[GemmConfig], time_ms: Callable[[GemmConfig], float]) -> GemmConfig:
        """Time every config (a config that fails to compile or launch counts as infinitely
        slow), remember the fastest under `key`, write the file, return the fastest."""
        times, errors = [], []
        for config in configs:
            try:
                times.append(float(time_ms(config)))
                errors.append(None)
            except Exception as error:  # e.g. out of shared memory for this tile on this GPU
                times.append(float("inf"))
                errors.append(error)
        best = min(range(len(configs)), key=times.__getitem__)
        if times[best] == float("inf"):
            last = next((e for e in reversed(errors) if e is not None), None)
            raise RuntimeError(f"autotune: no candidate configuration ran for {key} "
                               f"(last error: {last!r})") from last
        entry = {"config": dict(configs[best].meta), "ms": times[best],
                 "timed": [[dict(config.meta), t] if e is None else [dict(config.meta), t, repr(e)[:300]]
                           for config, t, e in zip(configs, times, errors)]}
        if self._table is None:
            self._table = self._read()
        self._table[key] = entry
        self._configs[key] = configs[best]
        self._save(key, entry)
        return configs[best]

    def _save(self, key: str, entry: dict) -> None:
        """Merge into the file as it is now (another process may have added keys), atomically."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            table = self._read()
            table[key] = entry
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, suffix=".tmp", delete=False) as f:
                json.dump(table, f, indent=1, sort_keys=True)
            os.replace(f.name, self.path)
        except OSError:  # a read-only home: keep the result in memory only
            pass


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def default(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device, *, interpreted: bool) -> GemmConfig:
    """The untuned configuration: the interpreter's large tiles, else the heuristic's."""
    if interpreted:
        return INTERPRETER_CONFIG
    return heuristic(M, N, K, dtype, multiprocessors(device_index(device)))


def choose(a: torch.Tensor, b: torch.Tensor, variant: Variant, input_precision: str | None, *,
           interpreted: bool, tuner: Tuner | None = None,
           prepare: Callable[[GemmConfig], Callable[[], None]] | None = None,
           tma_ready: Callable[[], bool] | None = None) -> GemmConfig:
    """The configuration for `a @ b` in kernel `variant`: the interpreter's, the heuristic's,
    or, with a `tuner`, a tuned one (timed now if the bucket is new, unless a CUDA graph is
    being captured: `prepare(config)` allocates scratch outputs and returns a callable that
    launches `config` on them, which `time_ms` times). `tma_ready()` says
    whether TMA descriptors can describe the operands: such launches are tuned under their own
    key, with TMA candidates on Hopper where `tma_suits` says they can pay."""
    (M, K), N = a.shape, b.shape[1]
    if tuner is not None and not interpreted:
        tma = tma_ready is not None and tma_ready()
        tuned_key = key(a, b, variant._replace(tma=tma), input_precision)
        config = tuner.lookup(tuned_key)
        if config is not None:
            return config
        if prepare is not None and not _capturing(a.device):
            if a.is_cuda:
                torch.cuda.synchronize(a.device)  # time on an idle GPU, after the inputs are written
            index = device_index(a.device)
            with_tma = tma and has_tma(index) and tma_suits(a, b, input_precision)
            configs = candidates(M, N, K, a.dtype, input_precision, multiprocessors(index), with_tma,
                                 split_k=not variant.row_sums)
            return tuner.tune(tuned_key, configs, lambda config: time_ms(prepare(config)))
    return default(M, N, K, a.dtype, a.device, interpreted=interpreted)
