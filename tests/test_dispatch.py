"""Backend selection, input validation and import hygiene."""

import os
import subprocess
import sys

import pytest
import torch

import fusedgrad
from fusedgrad import dispatch
from helpers import LooksCuda, torch_fp32_setting


def test_default_is_auto_and_context_nests(monkeypatch):
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
    with fusedgrad.backend("triton"):  # the context manager wins over the environment
        assert fusedgrad.current_backend() == "triton"
    monkeypatch.setenv("FUSEDGRAD_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="FUSEDGRAD_BACKEND.*'cudnn'"):
        fusedgrad.mm(torch.randn(2, 2), torch.randn(2, 2))


def test_fp32_precision_setting(monkeypatch):
    monkeypatch.delenv("FUSEDGRAD_FP32_PRECISION", raising=False)
    assert fusedgrad.current_fp32_precision() == "torch" and dispatch.kernel_fp32_precision() is None
    with fusedgrad.fp32_precision("tf32x3"):
        assert dispatch.kernel_fp32_precision() == "tf32x3"
        with fusedgrad.fp32_precision("torch"):
            assert dispatch.kernel_fp32_precision() is None
        assert fusedgrad.current_fp32_precision() == "tf32x3"
    monkeypatch.setenv("FUSEDGRAD_FP32_PRECISION", "TF32x3")
    assert fusedgrad.current_fp32_precision() == "tf32x3"
    monkeypatch.setenv("FUSEDGRAD_FP32_PRECISION", "bf16")
    with pytest.raises(ValueError, match="FUSEDGRAD_FP32_PRECISION.*'bf16'"):
        fusedgrad.current_fp32_precision()
    with pytest.raises(ValueError, match="unknown fp32 precision 'ieee'"):
        with fusedgrad.fp32_precision("ieee"):
            pass


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with fusedgrad.backend("fast"):
            pass


def test_auto_resolves_by_device_and_dtype():
    with fusedgrad.backend("auto"):
        assert dispatch.resolve(torch.empty(1, device="cpu")) == "aten"
        assert dispatch.resolve(torch.empty(1, device="meta")) == "aten"
    with fusedgrad.backend("triton"):
        with pytest.raises(TypeError, match="float64"):
            dispatch.resolve(torch.empty(1, dtype=torch.float64))


@pytest.mark.parametrize("dtype, torch_setting, ours, gemm, expected", [
    (torch.float32, "ieee", "torch", True, "aten"),     # cuBLAS's SGEMM: the one "auto" exception
    (torch.float32, "ieee", "torch", False, "triton"),  # the loss and SGD have no matmul precision
    (torch.float32, "tf32", "torch", True, "triton"),
    (torch.float32, "ieee", "tf32x3", True, "triton"),
    (torch.bfloat16, "ieee", "torch", True, "triton"),
    (torch.float16, "ieee", "torch", True, "triton"),
    (torch.float64, "ieee", "torch", True, "aten"),
])
def test_auto_rule_on_cuda_tensors(dtype, torch_setting, ours, gemm, expected, monkeypatch):
    monkeypatch.delenv("FUSEDGRAD_BACKEND", raising=False)
    tensor = torch.empty(2, 2, dtype=dtype).as_subclass(LooksCuda)
    with torch_fp32_setting(torch_setting), fusedgrad.fp32_precision(ours):
        assert dispatch.torch_fp32_precision() == torch_setting
        assert dispatch.resolve(tensor, gemm=gemm) == expected
        if dtype != torch.float64:  # "triton" forces Triton, IEEE or not (float64: a TypeError)
            with fusedgrad.backend("triton"):
                assert dispatch.resolve(tensor, gemm=gemm) == "triton"
        with fusedgrad.backend("aten"):
            assert dispatch.resolve(tensor, gemm=gemm) == "aten"


def test_auto_keeps_triton_under_autocast(monkeypatch):
    """Under CUDA autocast torch.mm would run in 16 bits: "auto" keeps the IEEE product on
    Triton (inputs' dtype), as for tf32, so the output dtype does not hinge on the setting."""
    monkeypatch.delenv("FUSEDGRAD_BACKEND", raising=False)
    tensor = torch.empty(2, 2).as_subclass(LooksCuda)
    with torch_fp32_setting("ieee"), fusedgrad.fp32_precision("torch"):
        assert dispatch.resolve(tensor, gemm=True) == "aten"
        monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
        assert dispatch.resolve(tensor, gemm=True) == "triton"


def _run_python(code, tmp_path, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSEDGRAD_BACKEND")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_import_touches_neither_cuda_nor_triton(tmp_path):
    result = _run_python(
        "import sys, torch, fusedgrad\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "assert 'fusedgrad.kernels' not in sys.modules\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
        "print('ok')", tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


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


BAD_INPUTS = {
    "1-D a": (lambda: (torch.randn(4), torch.randn(4, 3)), ValueError, r"a must be 2-D, got shape \(4,\)"),
    "3-D b": (lambda: (torch.randn(2, 4), torch.randn(4, 3, 1)), ValueError, r"b must be 2-D, got shape \(4, 3, 1\)"),
    "inner": (lambda: (torch.randn(2, 5), torch.randn(4, 3)), ValueError, r"\(2, 5\).*\(4, 3\)"),
    "dtypes": (lambda: (torch.randn(2, 4), torch.randn(4, 3, dtype=torch.float16)), TypeError, "float32.*float16"),
    "int": (lambda: (torch.ones(2, 4, dtype=torch.int32), torch.ones(4, 3, dtype=torch.int32)), TypeError, "torch.int32"),
    "bool": (lambda: (torch.ones(2, 4, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool)), TypeError, "torch.bool"),
    "complex": (lambda: (torch.randn(2, 4, dtype=torch.complex64), torch.randn(4, 3, dtype=torch.complex64)),
                TypeError, "complex64"),
    "devices": (lambda: (torch.randn(2, 4), torch.randn(4, 3, device="meta")), ValueError, "cpu.*meta"),
    "not a tensor": (lambda: ([[1.0]], torch.randn(1, 1)), TypeError, "must be a torch.Tensor, got list"),
}


@pytest.mark.parametrize("backend", fusedgrad.BACKENDS)
@pytest.mark.parametrize("op", [fusedgrad.mm_relu, fusedgrad.mm], ids=["mm_relu", "mm"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=str)
def test_bad_input_is_rejected_before_any_work(case, op, backend, monkeypatch):
    make, error, message = BAD_INPUTS[case]
    monkeypatch.setattr(torch, "mm", None)  # anything past validation would crash differently
    monkeypatch.setattr(fusedgrad.matmul.TritonMatmulFunction, "apply", None)
    with fusedgrad.backend(backend), pytest.raises(error, match=message):
        op(*make())
