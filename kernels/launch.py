"""Pre-bound launches: `kernel[grid](*args, **meta)` with Triton's per-call work done once per
specialization.

On every `kernel[grid](...)` Triton binds each argument to the signature, computes its
specialization (type, 16-byte alignment of pointers, divisibility by 16 and the value 1 of
integers), builds the kernel cache key from that and the options, and looks the compiled kernel
up: for the GEMM's 40-odd arguments, several times the rest of a small op's host work.

Design trade-off: `Launcher` keeps, per *launch key*, the compiled kernel Triton chose for it, and
launches that kernel through its own launcher (`CompiledKernel.run`, what `kernel[grid]` ends
in) with the arguments as they are. The launch key is cheaper to build than Triton's
specialization and at least as fine: the exact value of every integer argument, dtype and
16-byte alignment of every tensor, the class of floats and None (Triton never specializes a
float), element by element inside tuples, a tensor descriptor by its base, shape, strides and
block, plus the meta-parameters, the current device and the Triton options read from its
settings. Everything Triton specializes on is a function of that key, so a launch never
reuses a kernel compiled for other strides, dtypes, alignment or device; the price is one
`kernel[grid]` launch for each new key (a new shape), which then binds it. The stream is read
for every launch, as Triton does, so launches go to the current stream (several streams, CUDA
graph capture). Triton's interpreter, launch hooks (profilers), pre-run hooks and a Triton whose
compiled kernels lack the expected launcher all take `kernel[grid]` itself.
"""

from __future__ import annotations

import operator
from typing import Callable

import torch
import triton
from triton import knobs

_TENSORS = (torch.Tensor, torch.nn.Parameter)
MAX_BOUND = 1024  # keys a Launcher remembers; past that it starts over (shapes that never repeat)


def argument_key(args) -> tuple:
    """What of `args` Triton's specialization can depend on (see the module text)."""
    key = []
    append = key.append
    for arg in args:  # a loop, not a generator: this runs on every launch
        cls = arg.__class__
        if cls is int:
            append(arg)
        elif cls in _TENSORS:
            append(arg.dtype)
            append(not arg.data_ptr() & 15)
        elif cls is tuple:
            append(argument_key(arg))
        elif cls is float or arg is None:
            append(cls)
        else:  # a tensor descriptor, or anything else: its own key, or no pre-binding
            append(_descriptor_key(arg))
    return tuple(key)


def pointer_key(args) -> tuple:
    """`argument_key` of arguments that are tensors, None, tuples of those or descriptors (a
    layout's pointers), in that order of likelihood: None, the most common, costs least."""
    key = []
    append = key.append
    for arg in args:
        if arg is None:
            append(None)
        elif arg.__class__ in _TENSORS:
            append(arg.dtype)
            append(not arg.data_ptr() & 15)
        elif arg.__class__ is tuple:
            append(pointer_key(arg))
        else:
            append(_descriptor_key(arg))
    return tuple(key)


def _descriptor_key(arg):
    base = getattr(arg, "base", None)
    if not isinstance(base, torch.Tensor):
        raise _Unbindable
    return (type(arg), base.dtype, not base.data_ptr() & 15, tuple(arg.shape), tuple(arg.strides),
            tuple(arg.block_shape), getattr(arg, "padding", None))


def _integers(arg) -> bool:
    """An int, or a tuple of ints (the SGD kernel's sizes)."""
    return type(arg) is int or type(arg) is tuple and all(type(item) is int for item in arg)


class _Unbindable(Exception):
    """An argument `argument_key` does not know: the launch goes through `kernel[grid]`."""


# What Triton reads from its settings on every launch and puts in its own cache key (those this
# Triton has), read in one call: a part of every launch key.
_OPTIONS = tuple(name for name in ("runtime.debug", "compilation.instrumentation_mode",
                                   "compilation.fpsan_homomorphic_casts", "runtime.add_stages_inspection_hook")
                 if hasattr(getattr(knobs, name.split(".")[0]), name.split(".")[1]))
_read_options = operator.attrgetter(*_OPTIONS)


def _no_hooks(kernel) -> bool:
    """Whether nothing observes or alters launches (launch hooks: profilers; pre-run hooks; a
    custom compiler pipeline): then `kernel[grid]` passes nothing but the launch either."""
    runtime = knobs.runtime
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return False
    return not kernel.pre_run_hooks and getattr(runtime, "add_stages_inspection_hook", None) is None


def _runner(compiled):
    """(launcher, function handle, packed metadata) of a compiled kernel, or None where this
    Triton's CompiledKernel does not have them in the form `kernel[grid]` uses."""
    run = getattr(compiled, "run", None)
    function = getattr(compiled, "function", None)
    packed = getattr(compiled, "packed_metadata", None)
    if run is None or function is None or packed is None:
        return None
    return run, function, packed


class Launcher:
    """`kernel[grid](*args, **meta_of(*variant))` for a Triton `kernel` whose runtime arguments
    come first and whose meta-parameters (and launch options) `meta_of` gives by name.

    variant: a hashable tuple naming the meta-parameters (for the GEMM: its config, epilogue,
    masks, ...); `meta_of(*variant)` is called only when a launch key is new.
    layout: (pointers, integers) for a kernel whose runtime arguments are that many tensors (or
    None, descriptors, tuples of tensors), then that many ints (or tuples of ints), then floats
    only. The key then takes the integers as one slice, which halves its cost for the GEMM's
    long argument list; the caller guarantees the types (a launch whose types differ is never
    bound, but a float equal to a bound int would match it). None: every argument is looked at
    (`argument_key`).

    A caller that can name a launch more cheaply than its arguments do may pass `plan`: a
    hashable key that, with the current device and Triton's options, determines the grid, the
    variant and every argument but the pointers' addresses and the floats' values (so it
    includes `pointer_key` of the pointers). Once that launch is bound, `launch_plan(plan,
    pointers, floats)` makes it again with new addresses and floats, skipping the caller's own
    argument work as well as the key (layout launchers only).
    """

    def __init__(self, kernel, meta_of: Callable[..., dict], layout: tuple[int, int] | None = None):
        self.kernel = kernel
        self.meta_of = meta_of
        self.layout = layout
        # A compiled kernel's JITFunction, as Triton 3.6 to 3.9 have it (else always kernel[grid]).
        self.prebound = (kernel.__class__.__name__ != "InterpretedFunction" and hasattr(kernel, "params")
                         and hasattr(kernel, "pre_run_hooks"))
        self._bound: dict[tuple, tuple] = {}
        self._plans: dict[tuple, tuple] = {}  # (plan, device, options) -> (bound, grid, integers)
        self._driver = triton.runtime.driver

    def launch_plan(self, plan: tuple, pointers: tuple, floats: tuple) -> bool:
        """Launch what `plan` was bound to, with these pointers and floats; False (nothing
        launched) if it is not bound or launches are observed: the caller then takes `__call__`."""
        driver = self._driver.active
        device = driver.get_current_device()
        entry = self._plans.get((plan, device, _read_options(knobs)))
        if entry is None or not _no_hooks(self.kernel):
            return False
        (run, function, packed, meta_args), grid, integers = entry
        run(*grid, driver.get_current_stream(device), function, packed, None, None, None,
            *pointers, *integers, *floats, *meta_args)
        return True

    def __call__(self, grid: tuple, args: tuple, variant: tuple, plan: tuple | None = None) -> None:
        if not self.prebound:
            self.kernel[grid](*args, **self.meta_of(*variant))
            return
        driver = self._driver.active
        device = driver.get_current_device()
        options = _read_options(knobs)  # a custom compiler pipeline, once set, keeps launches on kernel[grid]
        try:
            if self.layout is None:
                key = (variant, device, options, argument_key(args))
            else:
                pointers, integers = self.layout
                key = (variant, device, options, pointer_key(args[:pointers]), args[pointers:pointers + integers])
        except _Unbindable:
            self.kernel[grid](*args, **self.meta_of(*variant))
            return
        bound = self._bound.get(key)
        grid = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
        if bound is None or not _no_hooks(self.kernel):
            self._bind(key, grid, args, variant)  # new, or launches are observed: kernel[grid]
            bound = self._bound.get(key)
        else:
            run, function, packed, meta_args = bound
            run(*grid, driver.get_current_stream(device), function, packed, None, None, None, *args, *meta_args)
        if plan is not None and bound is not None and self.layout is not None:
            if len(self._plans) >= MAX_BOUND:
                self._plans.clear()
            self._plans[(plan, device, options)] = (bound, grid, key[-1])

    def _bind(self, key: tuple, grid: tuple, args: tuple, variant: tuple) -> None:
        """Launch through `kernel[grid]`, and remember what it compiled for `key`."""
        meta = self.meta_of(*variant)
        compiled = self.kernel[grid](*args, **meta)
        runner = _runner(compiled)
        if runner is None or not _no_hooks(self.kernel) or not self._as_declared(args):
            return
        meta_params = self.kernel.params[len(args):]
        if not all(param.is_constexpr and param.name in meta for param in meta_params):
            return  # a meta-parameter left to its default, or a runtime argument passed by name
        meta_args = tuple(meta[param.name] for param in meta_params)
        if len(self._bound) >= MAX_BOUND:
            self._bound.clear()
        self._bound[key] = (*runner, meta_args)

    def _as_declared(self, args: tuple) -> bool:
        """Whether `args` have the types `layout` declares (always, without one)."""
        if self.layout is None:
            return True
        pointers, integers = self.layout
        return (all(_integers(arg) for arg in args[pointers:pointers + integers])
                and all(type(arg) is float for arg in args[pointers + integers:]))

    def clear(self) -> None:
        """Forget every bound launch (the next launch of each key goes through `kernel[grid]`)."""
        self._bound.clear()
        self._plans.clear()
