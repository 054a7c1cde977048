"""fusedgrad.settings: the four settings (blocks over environment defaults), the interpreter
helper, and import hygiene."""

import os
import subprocess
import sys

import pytest
import torch

import fusedgrad
from fusedgrad import settings
from helpers import torch_fp32_setting


def test_default_is_auto_and_blocks_nest(monkeypatch):
    monkeypatch.delenv("FUSEDGRAD_BACKEND", raising=False)
    assert fusedgrad.current_backend() == "auto"
    with fusedgrad.backend("triton"):
        assert fusedgrad.current_backend() == "triton"
        with fusedgrad.backend("aten"):
            assert fusedgrad.current_backend() == "aten"
        assert fusedgrad.current_backend() == "triton"
    assert fusedgrad.current_backend() == "auto"


def test_environment_variable_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("FUSEDGRAD_BACKEND", "aten")
    assert fusedgrad.current_backend() == "aten"
    with fusedgrad.backend("triton"):  # the block wins over the environment
        assert fusedgrad.current_backend() == "triton"
    monkeypatch.setenv("FUSEDGRAD_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="FUSEDGRAD_BACKEND: unknown backend 'cudnn'"):
        fusedgrad.mm(torch.randn(2, 2), torch.randn(2, 2))


@pytest.mark.parametrize("block, value, message", [
    (fusedgrad.backend, "fast", "fusedgrad.backend: unknown backend 'fast'"),
    (fusedgrad.backend, 123, "fusedgrad.backend: backend must be a name, one of auto, triton, aten; got 123"),
    (fusedgrad.backend, None, "fusedgrad.backend: backend must be a name.*got None"),
    (fusedgrad.backend, b"aten", "fusedgrad.backend: backend must be a name.*got b'aten'"),
    (fusedgrad.fp32_precision, "bf16", "unknown fp32 precision 'bf16'; choose one of torch, ieee, tf32, tf32x3"),
    (fusedgrad.fp32_precision, 1.5, "fusedgrad.fp32_precision: fp32 precision must be a name.*got 1.5"),
    (fusedgrad.cache_dir, None, "fusedgrad.cache_dir: expected a path, got None"),
])
def test_bad_values_are_refused_by_the_block(block, value, message):
    with pytest.raises(ValueError, match=message):
        with block(value):
            pass


@pytest.mark.parametrize("torch_setting", ["ieee", "tf32"])
def test_fp32_precision_names_what_the_kernels_do(monkeypatch, torch_setting):
    """"torch" follows torch's setting; the other names are the kernels' own and win over it."""
    monkeypatch.delenv("FUSEDGRAD_FP32_PRECISION", raising=False)
    with torch_fp32_setting(torch_setting):
        assert settings.torch_fp32_precision() == torch_setting
        assert fusedgrad.current_fp32_precision() == "torch"
        assert settings.kernel_fp32_precision() == torch_setting
        for name in ("ieee", "tf32", "tf32x3"):
            with fusedgrad.fp32_precision(name):
                assert settings.kernel_fp32_precision() == name
        monkeypatch.setenv("FUSEDGRAD_FP32_PRECISION", "TF32x3")
        assert settings.kernel_fp32_precision() == "tf32x3"
        monkeypatch.setenv("FUSEDGRAD_FP32_PRECISION", "bf16")
        with pytest.raises(ValueError, match="FUSEDGRAD_FP32_PRECISION: unknown fp32 precision 'bf16'"):
            fusedgrad.current_fp32_precision()


def test_autotune_and_cache_dir(monkeypatch, tmp_path):
    """`settings.tuner()` is the autotuner's store for the folder in force, None when off."""
    monkeypatch.delenv("FUSEDGRAD_AUTOTUNE", raising=False)
    monkeypatch.setenv("FUSEDGRAD_CACHE_DIR", str(tmp_path / "env"))
    assert not fusedgrad.autotune_enabled() and settings.tuner() is None
    monkeypatch.setenv("FUSEDGRAD_AUTOTUNE", "on")
    assert settings.tuner().path == tmp_path / "env" / "autotune.json"
    with fusedgrad.autotune(False):
        assert settings.tuner() is None
    with fusedgrad.cache_dir(tmp_path / "block"):
        assert fusedgrad.current_cache_dir() == tmp_path / "block"
        assert settings.tuner() is settings.tuner()  # one store per folder
    monkeypatch.setenv("FUSEDGRAD_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="FUSEDGRAD_AUTOTUNE: 'maybe' is not one of"):
        fusedgrad.autotune_enabled()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fusedgrad.autotune("yes")
    monkeypatch.delenv("FUSEDGRAD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fusedgrad.current_cache_dir() == tmp_path / "xdg" / "fusedgrad"


def _run_python(code, tmp_path, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSEDGRAD_BACKEND")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_import_touches_neither_cuda_nor_triton(tmp_path):
    """The dtype table and precision names come from `fusedgrad.kernels` without its launchers."""
    result = _run_python(
        "import sys, torch, fusedgrad\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "assert 'fusedgrad.kernels.gemm' not in sys.modules\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
        "print('ok')", tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_use_triton_interpreter(tmp_path):
    """Before triton is imported it turns the interpreter on; after, it only reports."""
    result = _run_python(
        "from fusedgrad.settings import use_triton_interpreter\n"
        "assert use_triton_interpreter()\n"
        "from fusedgrad import kernels\n"
        "assert kernels.INTERPRETED\n"
        "print('ok')", tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    result = _run_python(
        "import triton\n"
        "from fusedgrad.settings import use_triton_interpreter\n"
        "print(use_triton_interpreter())", tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_triton_on_cpu_without_interpreter_is_a_clear_error(tmp_path):
    result = _run_python(
        "import torch, fusedgrad\n"
        "with fusedgrad.backend('triton'):\n"
        "    try:\n"
        "        fusedgrad.mm_relu(torch.randn(4, 4), torch.randn(4, 4))\n"
        "    except RuntimeError as error:\n"
        "        print(error)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "TRITON_INTERPRET=1" in result.stdout and "cpu" in result.stdout
