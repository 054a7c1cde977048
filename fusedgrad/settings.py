"""fusedgrad's settings: one mechanism for all four.

Each setting is the innermost `with fusedgrad.<setting>(value):` block in this context (a
context variable: threads and asyncio tasks each see their own), else its environment
variable, read at each call, else its default:

    backend         FUSEDGRAD_BACKEND          "auto" | "triton" | "aten"         (`dispatch.resolve`)
    fp32_precision  FUSEDGRAD_FP32_PRECISION   "torch" | "ieee" | "tf32" | "tf32x3"
    autotune        FUSEDGRAD_AUTOTUNE         off | on (1, true, yes, on)
    cache_dir       FUSEDGRAD_CACHE_DIR        $XDG_CACHE_HOME/fusedgrad, else ~/.cache/fusedgrad

fp32_precision is how the Triton kernels multiply float32 inputs (the names of
`fusedgrad.kernels.precision`); "torch" follows torch's own setting
(`torch.backends.cuda.matmul.fp32_precision`, or `allow_tf32`), as cuBLAS does. The ATen backend
always follows torch's setting: ATen has no per-call precision, and no "tf32x3".
autotune makes the GEMM launches time candidate tiles per shape bucket and remember the fastest
in cache_dir/autotune.json (`fusedgrad.kernels.tuning`).

Nothing here imports triton or touches CUDA.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import pathlib
import sys
from typing import Callable, Generic, Iterator, TypeVar

import torch

from .kernels.precision import DOT_PRECISIONS

Value = TypeVar("Value")

BACKENDS = ("auto", "triton", "aten")
FP32_PRECISIONS = ("torch", *DOT_PRECISIONS)  # "torch": follow torch's own setting


class Setting(Generic[Value]):
    """A named choice: the innermost `block(value)` in this context, else the environment
    variable `env_var` (read at each call), else `default()`. `parse` turns the variable's text,
    or a value given to `block`, into the setting's value, or raises ValueError with the reason."""

    def __init__(self, api: str, env_var: str, parse: Callable[[str], Value], default: Callable[[], Value]):
        self.api, self.env_var, self.parse, self.default = api, env_var, parse, default
        self.override: contextvars.ContextVar[Value | None] = contextvars.ContextVar(api, default=None)

    def current(self) -> Value:
        value = self.override.get()
        if value is not None:
            return value
        text = _environment(self.env_var).strip()
        if not text:
            return self.default()
        try:
            return self.parse(text)
        except ValueError as error:
            raise ValueError(f"environment variable {self.env_var}: {error}") from None

    @contextlib.contextmanager
    def block(self, value: object) -> Iterator[Value]:
        try:
            value = self.parse(value)
        except ValueError as error:
            raise ValueError(f"{self.api}: {error}") from None
        token = self.override.set(value)
        try:
            yield value
        finally:
            self.override.reset(token)


def _environment(name: str) -> str:
    """os.environ.get(name, ""), at a twentieth of its host time: os.environ encodes the name
    and decodes the value on every lookup, and the settings are read on every op call. Reads
    os.environ's own table, which its every update keeps current (CPython's `_data`)."""
    table = getattr(os.environ, "_data", None)
    if table is None:  # not CPython's os.environ
        return os.environ.get(name, "")
    value = table.get(_ENCODED.get(name) or _ENCODED.setdefault(name, os.environ.encodekey(name)))
    return "" if value is None else os.environ.decodevalue(value)


_ENCODED: dict[str, object] = {}  # name -> os.environ's key for it


def _choice(what: str, choices: tuple[str, ...]) -> Callable[[object], str]:
    def parse(text: object) -> str:
        if not isinstance(text, str):
            raise ValueError(f"{what} must be a name, one of {', '.join(choices)}; got {text!r}")
        name = text.strip().lower()
        if name not in choices:
            raise ValueError(f"unknown {what} {text!r}; choose one of {', '.join(choices)}")
        return name
    return parse


def _switch(text: object) -> bool:
    if isinstance(text, bool):
        return text
    if not isinstance(text, str):
        raise ValueError(f"expected a bool, got {text!r}")
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    if text.strip().lower() not in words:
        raise ValueError(f"{text!r} is not one of {', '.join(words)}")
    return words[text.strip().lower()]


def _default_cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "fusedgrad"


_BACKEND = Setting("fusedgrad.backend", "FUSEDGRAD_BACKEND", _choice("backend", BACKENDS), lambda: "auto")
_FP32_PRECISION = Setting("fusedgrad.fp32_precision", "FUSEDGRAD_FP32_PRECISION",
                          _choice("fp32 precision", FP32_PRECISIONS), lambda: "torch")
_AUTOTUNE = Setting("fusedgrad.autotune", "FUSEDGRAD_AUTOTUNE", _switch, lambda: False)
def _folder(path: object) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"expected a path, got {path!r}")
    return pathlib.Path(path)


_CACHE_DIR = Setting("fusedgrad.cache_dir", "FUSEDGRAD_CACHE_DIR", _folder, _default_cache_dir)


def backend(name: str) -> contextlib.AbstractContextManager[str]:
    """Run the fusedgrad ops inside the block with backend `name` ("auto", "triton", "aten")."""
    return _BACKEND.block(name)


def current_backend() -> str:
    """The backend name in force here: "auto", "triton" or "aten"."""
    return _BACKEND.current()


def fp32_precision(name: str) -> contextlib.AbstractContextManager[str]:
    """Run the Triton kernels' float32 products inside the block at precision `name`: "torch"
    (torch's setting), "ieee", "tf32" or "tf32x3". 16-bit inputs and the ATen backend are
    unaffected."""
    return _FP32_PRECISION.block(name)


def current_fp32_precision() -> str:
    """The fp32 precision name in force here: "torch", "ieee", "tf32" or "tf32x3"."""
    return _FP32_PRECISION.current()


def autotune(enabled: bool = True) -> contextlib.AbstractContextManager[bool]:
    """Autotune the GEMM launches inside the block (or not, with `enabled=False`)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"fusedgrad.autotune: enabled must be a bool, got {enabled!r}")
    return _AUTOTUNE.block(enabled)


def autotune_enabled() -> bool:
    return _AUTOTUNE.current()


def cache_dir(path: str | os.PathLike) -> contextlib.AbstractContextManager[pathlib.Path]:
    """Keep the autotuner's results in folder `path` inside the block."""
    return _CACHE_DIR.block(path)


def current_cache_dir() -> pathlib.Path:
    return _CACHE_DIR.current()


def torch_fp32_precision() -> str:
    """torch's float32 matmul setting as cuBLAS follows it: "ieee" or "tf32". Read through
    the getter that `torch.backends.cuda.matmul.fp32_precision` calls, at a fifth of the
    attribute's host time (every op asks)."""
    if _TORCH_FP32_PRECISION is not None:
        precision = _TORCH_FP32_PRECISION("cuda", "matmul")
        if precision == "none":  # "none" inherits the global setting
            precision = _TORCH_FP32_PRECISION("generic", "all")
        return "tf32" if precision == "tf32" else "ieee"
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch without the fp32_precision API
        return "tf32" if matmul.allow_tf32 else "ieee"
    if precision == "none":  # "none" inherits the global setting
        precision = torch.backends.fp32_precision
    return "tf32" if precision == "tf32" else "ieee"


_TORCH_FP32_PRECISION = getattr(torch._C, "_get_fp32_precision_getter", None)  # torch >= 2.9


def kernel_fp32_precision() -> str:
    """How the Triton kernels multiply float32 inputs here: "ieee", "tf32" or "tf32x3"."""
    name = current_fp32_precision()
    return torch_fp32_precision() if name == "torch" else name


def tuner():
    """The autotuner's store for the cache folder in force, or None when autotuning is off.
    Imports the kernels (and triton): for the Triton path only."""
    if not autotune_enabled():
        return None
    return _tuner(current_cache_dir() / "autotune.json")


@functools.lru_cache(maxsize=None)
def _tuner(path: pathlib.Path):
    from .kernels import tuning
    return tuning.Tuner(path)


def use_triton_interpreter() -> bool:
    """Run Triton kernels on CPU tensors under Triton's interpreter: sets TRITON_INTERPRET=1
    when triton is not imported yet (Triton reads it once, at import). Returns whether the
    interpreter is in effect; False when triton was imported without it."""
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
        return True
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
