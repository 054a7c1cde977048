"""Pre-bound launches (`fusedgrad.kernels.launch`): the launch key, the interpreter's fallback,
and, in a process of its own on Triton's real launch path, the same launches as `kernel[grid]`."""

import os
import pathlib
import subprocess
import sys
import types

import pytest
import torch

from fusedgrad.kernels import gemm, launch

TESTS = pathlib.Path(__file__).resolve().parent


def test_prebound_launches_equal_kernel_grid_on_the_real_launch_path():
    """`prebound_checks.py`: every launch of the tutorial's steps and the MLP step reaches the
    driver with what kernel[grid] passes; strides, alignment, dtype, a size of 1 and the device each get the
    kernel Triton compiles for them; the stream is read per launch; launch hooks see launches."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(TESTS / "prebound_checks.py")], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert len(checks) == 6, result.stdout


def test_the_launch_key_holds_what_triton_specializes_on():
    t = torch.randn(8, 8)
    offset = torch.randn(65)[1:].view(8, 8)  # 4 bytes past a 16-byte boundary
    key = launch.argument_key
    assert key((t, 1, 16, 0.5, None)) == (t.dtype, True, 1, 16, float, type(None))
    assert key((offset,)) == (torch.float32, False)
    assert key((t,)) != key((t.half(),)) != key((offset,))
    assert key((3,)) != key((1,)) and key((0.5,)) == key((2.0,))  # floats are never specialized
    assert key(((t, offset), (1, 2))) == ((torch.float32, True, torch.float32, False), (1, 2))
    assert key((torch.nn.Parameter(t),)) == key((t,))


def test_the_pointer_key_holds_what_triton_specializes_on_pointers():
    t = torch.randn(8, 8)
    offset = torch.randn(65)[1:].view(8, 8)
    key = launch.pointer_key
    assert key((t, None, offset)) == (torch.float32, True, None, torch.float32, False)
    assert key((t.half(),)) != key((t,)) != key((offset,)) != key((None,))
    assert key(((t, offset), None)) == ((torch.float32, True, torch.float32, False), None)
    with pytest.raises(launch._Unbindable):  # not a pointer: such a launch is never pre-bound
        key((3,))


def test_an_unknown_plan_launches_nothing():
    launcher = launch.Launcher(gemm._plain_matmul_kernel, gemm._plain_meta, layout=(11, 14))
    if not launcher.prebound:  # the interpreter: plans are never made
        assert gemm.INTERPRETED
        return
    assert launcher.launch_plan(("never bound",), (), ()) is False


def test_an_argument_the_key_does_not_know_launches_through_kernel_grid():
    calls = []

    class Kernel:
        params = ()
        pre_run_hooks = []

        def __getitem__(self, grid):
            return lambda *args, **meta: calls.append((grid, args, meta))

    launcher = launch.Launcher(Kernel(), lambda block: dict(BLOCK=block))
    assert launcher.prebound  # a compiled kernel's Launcher, with a driver that answers for device 0
    launcher._driver = types.SimpleNamespace(active=types.SimpleNamespace(get_current_device=lambda: 0))
    launcher((2,), (object(), 3), (64,))
    assert calls and calls[0][0] == (2,) and calls[0][2] == dict(BLOCK=64) and not launcher._bound


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs only without CUDA")
def test_the_interpreter_launches_through_kernel_grid():
    assert gemm.INTERPRETED and not gemm._LAUNCHER.prebound and not gemm._PLAIN_LAUNCHER.prebound
    a, b = torch.randn(20, 30), torch.randn(30, 10)
    assert torch.equal(gemm.matmul(a, b), gemm.matmul(a, b)) and not gemm._PLAIN_LAUNCHER._bound
