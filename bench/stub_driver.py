"""A Triton driver for a Hopper GPU that is not there: Triton's real launch path, no GPU.

    import stub_driver
    driver = stub_driver.install()     # before the first launch; TRITON_INTERPRET must be unset
    ...                                # launch kernels on CPU tensors as if on an sm_90 GPU
    driver.launches                    # how many launches reached the driver's launch call

Kernels compile for sm_90 with the ptxas Triton ships, and `kernel[grid](...)` runs all of
Triton's Python launch path: argument binding and specialization, the kernel cache, loading the
compiled binary, the launcher object's own Python code. Only what needs a GPU is replaced:
loading a binary (returns placeholder handles), the device queries (answered as a
132-multiprocessor sm_90 device), and the driver's launch call itself (counts, and does
nothing). Where the installed Triton's launcher is the C extension that Triton builds against
libcuda (3.7 and later: `CudaLauncher` hands the flattened arguments to `utils.launch`), that
launcher class runs and only `utils.launch` is the stub; on older Triton, whose launcher is C
code compiled per kernel, the launcher class is replaced as a whole. The C launcher's own
argument parsing and `cuLaunchKernel` are therefore not counted: a few µs a launch on a real
machine (docs/benchmarks.md).

`torch` sees no GPU: tensors stay on the CPU and their data pointers are what Triton
specializes on, as it does for CUDA tensors.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import triton
from triton.backends.compiler import GPUTarget

MULTIPROCESSORS = 132  # an H100 SXM's / H200's count
SHARED_BYTES = 232448  # sm_90's opt-in shared memory per block (227 KiB)


class Launch(NamedTuple):
    """What a launch handed the driver: grid, stream, function handle, kernel arguments
    (constexprs included, in the kernel's parameter order)."""
    grid: tuple
    stream: int
    function: int
    args: tuple


class StubUtils:
    """`driver.utils` without libcuda."""

    def __init__(self, driver: "StubDriver"):
        self._driver = driver
        self.loaded = 0

    def load_binary(self, name, kernel, shared, device):
        """(module, function, registers, spills, max threads a block): a new function handle
        per load, so a launch shows which loaded kernel it runs."""
        self.loaded += 1
        return self.loaded, self.loaded, 0, 0, 1024

    def unload_module(self, module):
        pass

    def get_device_properties(self, device):
        return {"max_shared_mem": SHARED_BYTES, "multiprocessor_count": MULTIPROCESSORS, "max_num_regs": 65536,
                "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}

    def build_signature_metadata(self, signature):
        return tuple(signature)

    def fill_tma_descriptor_tiled(self, *args):
        return SimpleNamespace(tma_descriptor=args)

    fill_tma_descriptor_im2col = fill_tma_descriptor_tiled

    def launch(self, *args):
        """The driver's launch call, as `CudaLauncher` makes it: (grid x, y, z, stream, function,
        cooperative, pdl, packed metadata, launch metadata, enter hook, exit hook, global and
        profile scratch, argument annotations, signature, kernel arguments). It calls the
        launch hooks as the C launcher does."""
        _call_hooks(args[9], args[10], args[8])
        self._driver.record(args[:3], args[3], args[4], args[-1])


class WholeLauncher:
    """A launcher for Triton versions whose own launcher needs a compiler run against libcuda:
    takes the launch as Triton's `CompiledKernel.run` passes it and hands it to `utils.launch`."""

    def __init__(self, src, metadata):
        pass

    def __call__(self, *args):
        # (grid x, y, z, stream, function, packed metadata, launch metadata, enter hook, exit
        # hook, kernel arguments...)
        _call_hooks(args[7], args[8], args[6])
        triton.runtime.driver.active.record(args[:3], args[3], args[4], args[9:])


def _call_hooks(enter, exit, launch_metadata) -> None:
    """What Triton's C launchers do around the launch: the hooks, when set, with the metadata."""
    if enter is not None:
        enter(launch_metadata)
    if exit is not None:
        exit(launch_metadata)


class StubDriver:
    """What `triton.runtime.driver.active` must answer for compiling and launching on sm_90."""

    def __init__(self):
        self.utils = StubUtils(self)
        self.launcher_cls = _launcher_class()
        self.launches = 0
        self._last = None
        self.device = 0  # what the current device and stream are: a test may change them
        self.stream = 0

    def record(self, grid, stream, function, args) -> None:
        """A launch reached the driver: count it, keep what it launched (as given: the stub's
        own host time counts in what a benchmark measures, so `last_launch` builds the record)."""
        self.launches += 1
        self._last = (grid, stream, function, args)

    @property
    def last_launch(self) -> Launch | None:
        if self._last is None:
            return None
        grid, stream, function, args = self._last
        return Launch(tuple(grid), stream, function, tuple(args))

    @staticmethod
    def is_active():
        return True

    def get_current_device(self):
        return self.device

    def set_current_device(self, device):
        self.device = device

    def get_current_stream(self, device):
        return self.stream

    def get_device_capability(self, device):
        return (9, 0)

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")

    def map_python_to_cpp_type(self, ty):
        from triton.backends.nvidia.driver import ty_to_cpp
        return ty_to_cpp(ty)

    def assemble_tensormap_to_arg(self, tensormaps_info, args):
        return args


def _launcher_class():
    """Triton's `CudaLauncher` where it launches through `utils.launch` (its argument
    annotations are plain records here, for the C types libcuda's build would give), else
    `WholeLauncher`."""
    from triton.backends.nvidia import driver as nvidia
    if not all(hasattr(nvidia, name) for name in ("annotate_arguments", "make_kernel_signature", "ARG_KERNEL")):
        return WholeLauncher
    nvidia.PyKernelArg = lambda nested_tuple, type: (type, nested_tuple)
    nvidia.ARG_CONSTEXPR, nvidia.ARG_KERNEL, nvidia.ARG_TUPLE = 0, 1, 2
    return nvidia.CudaLauncher


def install() -> StubDriver:
    """Make a `StubDriver` Triton's active driver and return it."""
    import os
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("stub_driver: unset TRITON_INTERPRET (the interpreter never reaches a driver)")
    driver = StubDriver()
    triton.runtime.driver.set_active(driver)
    return driver
