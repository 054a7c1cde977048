"""Tier 1: the ATen backend and `matmul_reference` (the test oracle) against float64 autograd."""

import pytest
import torch

import fusedgrad
from helpers import assert_close, make_operand, relu_matmul_float64


@pytest.fixture(autouse=True)
def aten_backend():
    with fusedgrad.backend("aten"):
        yield


@pytest.mark.parametrize("relu", [True, False], ids=["mm_relu", "mm"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("layouts", [("contiguous", "contiguous"), ("transposed", "sliced")], ids=str)
def test_matches_float64(layouts, dtype, relu):
    a = make_operand(33, 70, getattr(torch, dtype), "cpu", layouts[0]).requires_grad_()
    b = make_operand(70, 21, getattr(torch, dtype), "cpu", layouts[1]).requires_grad_()
    out = (fusedgrad.mm_relu if relu else fusedgrad.mm)(a, b)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref_out, ref_a, ref_b = relu_matmul_float64(a, b, grad_out, relu)
    assert out.dtype == a.dtype
    assert_close(out, ref_out, dtype)
    assert_close(a.grad, ref_a, dtype)
    assert_close(b.grad, ref_b, dtype)


@pytest.mark.parametrize("op", [fusedgrad.mm_relu, fusedgrad.mm], ids=["mm_relu", "mm"])
def test_gradcheck_float64(op):
    a = torch.randn(12, 9, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (a, b))
    assert torch.autograd.gradgradcheck(op, (a, b))


def test_reference_masks_follow_threshold_backward():
    """relu'(out) is 0 where out <= 0 (so at 0 too) and 1 elsewhere, NaN included."""
    grad = torch.randn(4, 6, dtype=torch.float64)
    out = torch.tensor([0.0, -1.0, 2.0, float("nan"), float("inf"), -0.0], dtype=torch.float64).expand(4, 6)
    eye = torch.eye(6, dtype=torch.float64)
    masked = fusedgrad.matmul_reference(grad, eye, a_relu_mask=out)
    expected = torch.ops.aten.threshold_backward(grad, out, 0)
    assert torch.equal(masked, expected)
    masked_b = fusedgrad.matmul_reference(eye[:4, :4], grad, b_relu_mask=out)
    assert torch.equal(masked_b, expected)


def test_nan_propagates():
    a = torch.randn(5, 8)
    a[2, 3] = float("nan")
    b = torch.randn(8, 4)
    out = fusedgrad.mm_relu(a, b)
    assert torch.equal(out.isnan(), torch.relu(a @ b).isnan()) and out[2].isnan().all()
