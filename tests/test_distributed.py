"""Data-parallel steps (`fusedgrad.distributed`) and the trainer under torchrun, on gloo groups
over 127.0.0.1 in processes of their own (`distributed_checks.py`), bounded in time."""

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest
import torch

import fusedgrad
from fusedgrad import distributed
from fusedgrad.__main__ import main, parse_args
from fusedgrad.train import train

TESTS = pathlib.Path(__file__).resolve().parent


def _environment(backend: str) -> dict:
    """This process's environment for a child: the interpreter only for the Triton checks, gloo
    on loopback."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    if backend == "triton":
        env["TRITON_INTERPRET"] = "1"
    env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_data_parallel_steps_equal_one_process_on_the_whole_batch():
    """On groups of 2 and 3 gloo ranks, on ATen and on the interpreter: k data-parallel fused
    steps (MLPs of depth 1 to 3 with momentum, mse and cross-entropy, mean and sum; the tutorial
    step; TwoLayerNet) equal k one-process steps on the whole batch and the replicas stay equal;
    bad groups and weights are refused; and on ATen, DDP of fusedgrad.nn.MLP trains as DDP of
    nn.Sequential, no_sync accumulation included."""
    backends = ["aten"] if torch.cuda.is_available() else ["aten", "triton"]  # triton: CPU tensors, interpreted
    result = subprocess.run([sys.executable, str(TESTS / "distributed_checks.py"), "3", *backends],
                            capture_output=True, text=True, timeout=300, env=_environment(backends[-1]))
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    checks = {"aten": ["check_mlp_steps", "check_tutorial_steps", "check_refusals", "check_ddp_trains_as_nn_sequential"],
              "triton": ["check_mlp_steps", "check_tutorial_steps", "check_refusals"]}
    expected = [f"{check} {ranks} ranks {backend}" for backend in backends for ranks in (2, 3)
                for check in checks[backend]]
    assert [line[3:] for line in result.stdout.splitlines() if line.startswith("ok ")] == expected, result.stdout


def test_the_gradient_buffer_mirrors_the_parameters_and_buckets_close_at_layers():
    """Each gradient is a view of the flat buffer with its parameter's shape and strides (a
    transposed weight's too), the last layer first; a bucket closes at the first layer boundary
    past its size (the first bucket's own), and the first layer closes the last bucket."""
    weights = [torch.randn(8, 6), torch.randn(5, 8).T.contiguous().T, torch.randn(3, 5)]  # the middle transposed
    biases = [torch.randn(8), None, torch.randn(3)]
    buckets = distributed.GradientBuckets(weights, biases, None, bucket_bytes=4 * 45, first_bucket_bytes=4 * 10)
    for grad, param in zip(buckets.weight_grads + buckets.bias_grads, weights + biases):
        if param is None:
            assert grad is None
            continue
        assert grad.shape == param.shape and grad.stride() == param.stride()
        assert grad.untyped_storage().data_ptr() == buckets.flat.untyped_storage().data_ptr()
    assert buckets.flat.numel() == 8 * 6 + 8 + 5 * 8 + 3 * 5 + 3
    # layer 2: 18 elements >= 10, the first bucket; layer 1's 40 < 45, then layer 0 closes the rest
    assert buckets.closing == {2: (0, 18), 0: (18, 114)}
    buckets = distributed.GradientBuckets(weights, biases, None, bucket_bytes=4 * 45, first_bucket_bytes=4 * 20)
    assert buckets.closing == {1: (0, 58), 0: (58, 114)}  # 18 < 20: the first bucket takes layer 1 too
    assert buckets.weight_grads[2].data_ptr() == buckets.flat.data_ptr()


def test_a_process_group_needs_torch_distributed_initialized():
    x, y, w1, w2 = torch.randn(4, 6), torch.randn(4, 3), torch.randn(6, 5), torch.randn(5, 3)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        fusedgrad.train_step(x, y, w1, w2, 1e-3, process_group=object())
    model = fusedgrad.nn.MLP([6, 3])
    with pytest.raises(RuntimeError, match="MLP.train_step: process_group given"):
        model.train_step(x, y, torch.optim.SGD(model.parameters(), lr=0.1), process_group=object())


def test_the_trainer_refuses_distributed_outside_torchrun(monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exit:
        main(["--distributed", "--steps", "1"])
    assert exit.value.code == 2
    assert "--distributed: run under torchrun" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(output: str) -> list[float]:
    return [float(value) for value in re.findall(r"^Step: \d+ : (\S+)$", output, re.MULTILINE)]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
@pytest.mark.parametrize("ranks, options", [(2, []), (2, ["--layers", "40,16,8,5", "--bias", "--momentum", "0.9",
                                                          "--loss", "cross_entropy", "--lr", "1e-3"])],
                         ids=["tutorial", "mlp"])
def test_torchrun_of_the_trainer_prints_the_losses_of_one_process(ranks, options):
    """`torchrun --nproc-per-node N -m fusedgrad --distributed` prints, once, the losses one
    process prints for the whole batch (to fp32 rounding: the ranks' sums add in another order)."""
    arguments = ["--steps", "100", "--backend", "aten", *options]
    config, _ = parse_args(arguments)
    expected = list(train(config, log=lambda line: None).losses.values())  # one process, the whole batch
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--nnodes", "1",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    many = subprocess.run([*torchrun, "-m", "fusedgrad", *arguments, "--distributed"], capture_output=True, text=True,
                          timeout=180, env=_environment("aten"))
    assert many.returncode == 0, many.stdout + many.stderr[-4000:]
    got = _losses(many.stdout)
    assert len(expected) == 2 and len(got) == 2, many.stdout  # steps 1 and 100, printed by rank 0 alone
    assert got == pytest.approx(expected, rel=1e-4)
    assert many.stdout.count("Summary:") == 1 and f"{ranks} ranks, data-parallel" in many.stdout
