"""The trainer (`fusedgrad.train`) and its CLI (`python -m fusedgrad`)."""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from fusedgrad.__main__ import main
import fusedgrad
from fusedgrad.train import TrainConfig, describe_backend, train
from helpers import LooksCuda, torch_fp32_setting


@pytest.fixture(scope="module")
def reference_run():
    return train(TrainConfig(device="cpu", reference=True), log=lambda line: None)


@pytest.mark.parametrize("mode", ["step", "autograd"])
def test_tutorial_run_converges_and_matches_reference(mode, reference_run):
    """Defaults: loss ~1e7 at step 1, below 1e-2 by step 500, as the tutorial's loop does."""
    fused = train(TrainConfig(device="cpu", mode=mode), log=lambda line: None)
    assert fused.mode == mode and reference_run.mode == "reference"
    assert sorted(fused.losses) == [1, 100, 200, 300, 400, 500]
    assert 1e6 < fused.losses[1] < 1e8
    assert fused.losses[500] < 1e-2
    assert fused.losses[1] == pytest.approx(reference_run.losses[1], rel=1e-6)  # same data, same weights
    for step, loss in reference_run.losses.items():
        assert fused.losses[step] == pytest.approx(loss, rel=5e-2)
    torch.testing.assert_close(fused.w1, reference_run.w1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.w2, reference_run.w2, rtol=1e-4, atol=1e-4)


def test_cli_prints_tutorial_lines_and_summary(capsys):
    assert main(["--device", "cpu", "--steps", "200", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" : ")[0] for line in lines[:3]] == ["Step: 1", "Step: 100", "Step: 200"]
    assert all(float(line.split(" : ")[1]) > 0 for line in lines[:3])
    assert lines[3].startswith("Summary: device cpu | backend aten | mode step | dtype float32 | 200 steps in ")
    assert lines[3].split("|")[5].strip().endswith("steps/s (wall time after 1 warm-up step)")
    assert len(lines) == 4


def test_cli_help_lists_the_dtypes_default_first(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--dtype {float32,float16,bfloat16,float64}" in capsys.readouterr().out


def test_cli_reference_mode(capsys):
    assert main(["--device", "cpu", "--steps", "1", "--reference", "--batch", "8", "--d-in", "16"]) == 0
    out = capsys.readouterr().out
    assert "Step: 1 :" in out and "backend reference (eager PyTorch)" in out


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps: must be > 0"),
    (["--lr", "-1"], "--lr: must be > 0"),
    (["--batch", "ten"], "--batch: expected a int"),
    (["--dtype", "int8"], "invalid choice: 'int8'"),
    (["--backend", "cublas"], "invalid choice: 'cublas'"),
    (["--device", "tpu"], "--device: "),
    (["--device", "cpu", "--cuda-graph"], "a CUDA graph needs a CUDA device"),
    (["--mode", "fast"], "invalid choice: 'fast'"),
    (["--lr", "inf"], "--lr: must be finite"),
    (["--seed", str(2**70)], "--seed: must be from -2**63 to 2**64 - 1"),
    (["--seed", "1.5"], "--seed: expected an int"),
    (["--json", "/no/such/folder/run.json"], "--json /no/such/folder/run.json: cannot write there"),
    (["--json", "."], "--json .: cannot write there (Is a directory)"),
    (["--json", f"{__file__}/run.json"], "cannot write there (Not a directory)"),  # under a file
    (["--d-in", str(10**20)], "sizes too large: --batch 64 --d-in 100000000000000000000"),
    (["--d-out", str(10**19)], "sizes too large: "),
    (["--batch", str(10**400)], "sizes too large: "),
    (["--lr", "1e300"], "--lr: lr must be finite in float32"),
    (["--layers", "10"], "--layers: expected at least two sizes"),
    (["--layers", "10,x"], "--layers: expected sizes separated by commas"),
    (["--layers", "10,0,3"], "each > 0"),
    (["--layers", f"10,{10**20}"], "sizes too large: --batch 64 --layers 10,"),
    (["--momentum", "-0.5"], "--momentum: must be finite and >= 0"),
    (["--momentum", "nan"], "--momentum: must be finite"),
    (["--loss", "l1"], "invalid choice: 'l1'"),
    (["--bias", "--cuda-graph"], "does not replay a CUDA graph"),
])
def test_cli_rejects_bad_flags(flags, message, capsys):
    """One line on stderr, exit code 2, before any training step."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cpu", *flags])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""


@pytest.mark.parametrize("variable, value", [("FUSEDGRAD_FP32_PRECISION", "bogus"), ("FUSEDGRAD_BACKEND", "cublas"),
                                             ("FUSEDGRAD_AUTOTUNE", "maybe")])
def test_cli_names_a_bad_environment_setting(variable, value, monkeypatch, capsys):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cpu", "--steps", "1"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"environment variable {variable}: " in captured.err and repr(value) in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""


def test_cli_backend_defaults_to_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("FUSEDGRAD_BACKEND", "triton")  # not what "auto" picks on a CPU
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton kernels' device here
    assert main(["--device", device, "--steps", "1", "--batch", "4", "--d-in", "8", "--hidden", "4", "--d-out", "2"]) == 0
    assert "| backend triton |" in capsys.readouterr().out


def test_cli_out_of_memory_is_one_line_naming_the_sizes(capsys):
    """A size the machine cannot hold (here 2.5 PB of x) ends in one line, not a traceback."""
    assert main(["--device", "cpu", "--d-in", str(10**13), "--steps", "1"]) == 2
    captured = capsys.readouterr()
    assert "out of memory for --batch 64 --d-in 10000000000000 --hidden 100 --d-out 10 (float32 on cpu)" in captured.err
    assert captured.err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cli_cuda_without_cuda(capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tier: CPU-only machines (with CUDA, "
                    "tier 2 runs compiled; triton 3.6's interpreter also fails with numpy >= 2.4)")
def test_cli_triton_backend_on_cpu_runs_interpreted(tmp_path):
    """`--backend triton` on CPU turns Triton's interpreter on by itself, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for mode in ("step", "autograd"):
        result = subprocess.run(
            [sys.executable, "-m", "fusedgrad", "--device", "cpu", "--backend", "triton", "--steps", "3",
             "--batch", "8", "--d-in", "40", "--hidden", "20", "--d-out", "4", "--mode", mode],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "Step: 1 :" in result.stdout and f"backend triton | mode {mode} |" in result.stdout


def test_cli_writes_json(tmp_path, capsys, monkeypatch):
    """The record's environment is made in fusedgrad without subprocesses: versions, device,
    date (the benchmarks add the commit and the driver, `bench/common.py`)."""
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the CLI started a subprocess: {args}")
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    path = tmp_path / "run.json"
    assert main(["--device", "cpu", "--steps", "100", "--json", str(path)]) == 0

    record = json.loads(path.read_text())
    assert record["config"]["steps"] == 100 and record["backend"] == "aten" and record["mode"] == "step"
    assert set(record["losses"]) == {"1", "100"} and record["steps_per_second"] > 0
    environment = record["environment"]
    assert environment["torch"] == torch.__version__ and environment["device"] == "cpu"
    assert environment["python"] == platform.python_version() and environment["cuda"] == torch.version.cuda
    assert environment["triton"] == importlib.metadata.version("triton")
    assert datetime.datetime.fromisoformat(environment["date"]).tzinfo is not None
    assert set(environment) == {"date", "python", "torch", "triton", "cuda", "device"}  # and "gpu" on CUDA
    assert record["summary"] == capsys.readouterr().out.splitlines()[-1]


def test_summary_names_the_gemm_backend_of_the_autograd_mode():
    """Under "auto", float32 at IEEE precision runs the autograd GEMMs on ATen: the summary says so."""
    x = torch.empty(2, 2).as_subclass(LooksCuda)
    with fusedgrad.backend("auto"), fusedgrad.fp32_precision("torch"):
        with torch_fp32_setting("ieee"):
            assert describe_backend("autograd", x) == "triton (GEMMs on aten: float32 at IEEE precision)"
            assert describe_backend("step", x) == "triton"
        with torch_fp32_setting("tf32"):
            assert describe_backend("autograd", x) == "triton"
    assert describe_backend("reference", x) == "reference (eager PyTorch)"


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_mlp_runs_agree_across_modes_and_backends(loss):
    """--layers --bias --momentum --loss: the fused step, the autograd loop on fusedgrad's
    layers (ATen and Triton interpreted) and the eager nn.Sequential loop give the same losses."""
    base = dict(steps=6, batch=8, layers=(12, 16, 8, 4), bias=True, momentum=0.9, loss=loss, lr=1e-2,
                device="cpu")
    reference = train(TrainConfig(**base, reference=True), log=lambda line: None)
    runs = [train(TrainConfig(**base, mode=mode, backend=backend), log=lambda line: None)
            for mode, backend in (("step", "aten"), ("autograd", "aten"), ("step", "triton"))]
    assert reference.mode == "reference" and runs[0].mode == "step"
    for run in runs:
        assert run.losses.keys() == reference.losses.keys()
        for step, value in reference.losses.items():
            assert run.losses[step] == pytest.approx(value, rel=1e-4)
        for ours, theirs in zip(run.parameters, reference.parameters):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_cli_mlp_flags(capsys):
    assert main(["--device", "cpu", "--steps", "2", "--layers", "20,8,3", "--bias", "--momentum", "0.5",
                 "--loss", "cross_entropy"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Step: 1 : ") and "mode step" in out
