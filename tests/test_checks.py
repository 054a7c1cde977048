"""The argument checks every entry point shares (`fusedgrad.checks`): the matrix products'
operands, and one learning-rate rule for the optimizer and the fused step; bad input is refused
the same way by every backend, before anything runs or is touched."""

import pytest
import torch

import fusedgrad
from fusedgrad.checks import check_lr

BAD_LRS = [
    (-1.0, ValueError, "lr must be finite and >= 0, got -1.0"),
    (float("nan"), ValueError, "lr must be finite and >= 0, got nan"),
    (float("inf"), ValueError, "lr must be finite and >= 0, got inf"),
    (True, TypeError, "lr must be a number or a 0-d tensor, got bool"),
    ("0.1", TypeError, "lr must be a number or a 0-d tensor, got str"),
    (torch.tensor([0.1]), ValueError, r"a tensor lr must be a 0-d floating-point tensor.*shape \(1,\)"),
    (torch.tensor(1), ValueError, "a tensor lr must be a 0-d floating-point tensor.*torch.int64"),
    (torch.tensor(0.1, device="meta"), ValueError, "a tensor lr must be a 0-d floating-point tensor on cpu.*meta"),
]


@pytest.mark.parametrize("lr, error, message", BAD_LRS, ids=[m for _, _, m in BAD_LRS])
def test_one_lr_rule_for_the_optimizer_and_the_step(lr, error, message):
    x, y = torch.randn(4, 6), torch.randn(4, 2)
    w1, w2 = torch.randn(6, 3), torch.randn(3, 2)
    before = w1.clone(), w2.clone()
    with pytest.raises(error, match="train_step: " + message):
        fusedgrad.train_step(x, y, w1, w2, lr)
    assert torch.equal(w1, before[0]) and torch.equal(w2, before[1])
    with pytest.raises(error, match="CUDAGraphStep: " + message):  # refused before it asks for CUDA
        fusedgrad.CUDAGraphStep(x, y, w1, w2, lr)
    param = torch.zeros(3, requires_grad=True)
    if "on cpu" in message:  # SGD learns the parameters' device only when it steps
        param.grad = torch.ones(3)
        optimizer = fusedgrad.optim.SGD([param], lr=torch.tensor(0.1))
        optimizer.param_groups[0]["lr"] = lr
        with pytest.raises(error, match="SGD.step: " + message):
            optimizer.step()
        assert not param.any()
    else:
        with pytest.raises(error, match="SGD: " + message):
            fusedgrad.optim.SGD([param], lr=lr)


@pytest.mark.parametrize("lr", [0, 0.0, 1e-3, 2, torch.tensor(1e-3), torch.tensor(0.5, dtype=torch.float64)])
def test_good_lrs_pass(lr):
    check_lr(lr, "here", torch.device("cpu"))


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
    monkeypatch.setattr(fusedgrad.matmul.GemmFunction, "apply", None)
    with fusedgrad.backend(backend), pytest.raises(error, match=message):
        op(*make())
