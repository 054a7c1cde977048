"""Backend selection: `fusedgrad.dispatch.resolve` and the "auto" rule."""

import pytest
import torch

import fusedgrad
from fusedgrad import dispatch, settings
from helpers import LooksCuda, torch_fp32_setting


def test_auto_resolves_by_device_and_dtype():
    with fusedgrad.backend("auto"):
        assert dispatch.resolve(torch.empty(1, device="cpu")) == "aten"
        assert dispatch.resolve(torch.empty(1, device="meta")) == "aten"
    with fusedgrad.backend("triton"):
        with pytest.raises(TypeError, match="int64"):
            dispatch.resolve(torch.empty(1, dtype=torch.int64))


@pytest.mark.parametrize("dtype, torch_setting, ours, gemm, expected", [
    (torch.float32, "ieee", "torch", True, "aten"),     # ATen computes the same product: cuBLAS's SGEMM
    (torch.float32, "ieee", "ieee", True, "aten"),
    (torch.float32, "ieee", "torch", False, "triton"),  # the loss and SGD have no matmul precision
    (torch.float32, "tf32", "torch", True, "triton"),
    (torch.float32, "tf32", "ieee", True, "triton"),    # torch would compute in tf32
    (torch.float32, "ieee", "tf32", True, "triton"),
    (torch.float32, "ieee", "tf32x3", True, "triton"),
    (torch.bfloat16, "ieee", "torch", True, "triton"),
    (torch.float16, "ieee", "torch", True, "triton"),
    (torch.float64, "ieee", "torch", True, "aten"),
])
def test_auto_rule_on_cuda_tensors(dtype, torch_setting, ours, gemm, expected, monkeypatch):
    monkeypatch.delenv("FUSEDGRAD_BACKEND", raising=False)
    tensor = torch.empty(2, 2, dtype=dtype).as_subclass(LooksCuda)
    with torch_fp32_setting(torch_setting), fusedgrad.fp32_precision(ours):
        assert settings.torch_fp32_precision() == torch_setting
        assert dispatch.resolve(tensor, gemm=gemm) == expected
        with fusedgrad.backend("triton"):  # forces Triton, IEEE or not, float64 included
            assert dispatch.resolve(tensor, gemm=gemm) == "triton"
        with fusedgrad.backend("aten"):
            assert dispatch.resolve(tensor, gemm=gemm) == "aten"
