"""The benchmark scripts keep working (tiny runs on this machine's device), and what they share,
`bench/common.py`, does what it says."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))  # the scripts import `common` from their own folder

import common  # noqa: E402


def test_quick_run_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--sizes", "8x16x8x4", "--precisions", "ieee", "--rounds", "2",
         "--steps-per-round", "2", "--device", device, "--json", str(out),
         "--variants", "eager", "compile-max-autotune", "fusedgrad-autograd", "fusedgrad-autograd-triton",
         "fusedgrad-step", "fusedgrad-step-graph"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    rows = {row["variant"]: row for row in record["rows"]}
    assert set(rows) == {"eager", "compile-max-autotune", "fusedgrad-autograd", "fusedgrad-autograd-triton",
                         "fusedgrad-step", "fusedgrad-step-graph"}  # torch.compile rows left out: minutes of compiling
    assert rows["compile-max-autotune"]["status"].startswith("skipped (--quick")
    assert {row["precision"] for row in record["rows"]} == {"ieee"}
    assert record["tolerance_rel_weights"] == common.WEIGHTS_VS_EAGER
    # float32 at IEEE precision: "auto" runs the autograd GEMMs on ATen, and the row names it
    expected = "backend triton (GEMMs on aten: float32 at IEEE precision)" if device == "cuda" else "backend aten"
    assert expected in rows["fusedgrad-autograd"]["notes"]
    if device == "cpu":
        assert rows["fusedgrad-autograd-triton"]["status"] == "needs CUDA"
    else:
        assert "backend triton" in rows["fusedgrad-autograd-triton"]["notes"]
    for variant in ("eager", "fusedgrad-autograd", "fusedgrad-step") + (("fusedgrad-autograd-triton",) if device == "cuda" else ()):
        row = rows[variant]
        assert row["status"] == "ok" and row["correct"], row
        assert row["steps_per_s_p20"] <= row["steps_per_s"] <= row["steps_per_s_p80"]
        assert row["speedup_vs_eager"] > 0 and row["tflops"] > 0
    # Activation memory kept for backward at 8x16x8x4 ieee, in bytes: eager saves the
    # pre-activation (clamp), h (mm) and y_pred - y (pow); fusedgrad saves h once (the ReLU mask
    # and mm's input) and the loss gradient. The fused step has no tape.
    assert rows["eager"]["saved_for_backward_bytes"] == 4 * (2 * 8 * 8 + 8 * 4)
    assert rows["fusedgrad-autograd"]["saved_for_backward_bytes"] == 4 * (8 * 8 + 8 * 4)
    assert rows["fusedgrad-autograd"]["saved_vs_eager"] == pytest.approx(0.6)
    assert rows["fusedgrad-step"]["saved_for_backward_bytes"] is None
    environment = record["environment"]
    assert environment["torch"] == torch.__version__ and record["complete"]
    assert {"date", "git_commit", "torch", "triton", "cuda", "device", "command"} <= set(environment)
    assert "| fusedgrad-step |" in result.stdout
    if device == "cpu":
        assert "GPU numbers need CUDA" in result.stdout


def load_bench_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_compile_variant_runs_in_a_child_process_and_its_failure_becomes_a_row(tmp_path):
    bench = load_bench_module()
    case = bench.Case(8, 16, 8, 4, "ieee")
    for variant in ("compile", "fusedgrad-compile"):  # torch's ops, and fusedgrad's, compiled
        results, notes, w1, w2 = bench.measure_in_child(case, variant, torch.device("cpu"), 1e-3, (1, 1, 1), tmp_path)
        assert results["steps_per_s"] > 0 and w1.shape == (16, 8) and w2.shape == (8, 4)
    try:
        bench.measure_in_child(case, "compile-no-such-mode", torch.device("cpu"), 1e-3, (1, 1, 1), tmp_path)
    except RuntimeError as error:
        assert "the process crashed (exit status 1)" in str(error)
    else:
        raise AssertionError("a failing child must raise")


def test_kernel_benchmark_at_tiny_size(tmp_path):
    """`bench/kernels.py` runs every pass and implementation and checks each against float64
    (on CPU under the interpreter; on CUDA compiled, with split-K rows for a long-K shape)."""
    out = tmp_path / "kernels.json"
    size = "64x48x1024" if torch.cuda.is_available() else "48x40x96"
    result = subprocess.run([sys.executable, str(BENCH / "kernels.py"), "--sizes", size,
                             "--precisions", "fp16", "ieee", "--peak-size", "1024", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert {r["precision"] for r in rows} == {"fp16", "ieee"}
    for precision in ("fp16", "ieee"):
        found = {(r["pass"], r["implementation"]) for r in rows if r["precision"] == precision}
        assert {("forward", "fusedgrad"), ("forward", "torch.mm+relu"), ("backward", "fusedgrad"),
                ("backward", "torch.mm+relu"), ("fwd+bwd", "fusedgrad"), ("fwd+bwd", "torch.mm+relu")} <= found
    assert all(r["ok"] and r["us"] > 0 and r["speedup_vs_torch"] > 0 for r in rows)
    errors = next(iter(record["fp32_errors"].values()))
    assert set(errors) == {"fusedgrad-ieee", "fusedgrad-tf32", "fusedgrad-tf32x3", "cublas-ieee", "cublas-tf32"}
    assert "| ieee | " in result.stdout
    if torch.cuda.is_available():
        assert any(r["implementation"].startswith("fusedgrad-splitK") for r in rows)
    else:
        assert "GPU numbers need CUDA" in result.stderr


def run_host_cost(tmp_path, *args):
    """bench/host_cost.py --quick in a process of its own: Triton's real launch path needs the
    interpreter off."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(BENCH / "host_cost.py"), "--quick", *args], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env=env)


def test_host_cost_reaches_the_stubbed_driver_for_every_launch(tmp_path):
    out = tmp_path / "host.json"
    result = run_host_cost(tmp_path, "--json", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    for name in ("eager_step_us", "autograd_step_us", "fused_step_us", "floor_step_us"):
        assert 0 < record[name] < 1e5, (name, record[name])
    assert [row["gemm"] for row in record["gemm_launch_us"]][0] == "relu(x @ w1)"
    assert len(record["gemm_launch_us"]) == 5 and all(0 < row["us"] < 1e4 for row in record["gemm_launch_us"])
    # Launches that reached the driver's launch call, per call of each case: the autograd step's
    # 5 GEMMs, loss and SGD; the fused step's 5 GEMMs; one each for the GEMMs; none for eager
    # and for the skeleton of Functions that launch nothing.
    launches = record["launches"]
    assert launches.pop("eager_step_us") == 0 and launches.pop("autograd_step_us") == 7
    assert launches.pop("floor_step_us") == 0
    assert launches.pop("fused_step_us") == 5 and set(launches.values()) == {1}
    assert record["autograd_vs_eager"] == record["autograd_step_us"] / record["eager_step_us"]
    assert {"torch", "triton", "git_commit", "date"} <= set(record["environment"])


def test_host_cost_refuses_the_interpreter(tmp_path):
    result = subprocess.run([sys.executable, str(BENCH / "host_cost.py"), "--quick"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert result.returncode != 0 and "unset TRITON_INTERPRET" in result.stderr


def test_results_go_to_bench_out_by_default_and_git_ignores_it(tmp_path):
    out = common.OUT / "host_cost.json"
    before = out.stat().st_mtime_ns if out.exists() else None
    result = run_host_cost(tmp_path)
    assert result.returncode == 0, result.stderr
    assert common.OUT == BENCH / "out" and out.stat().st_mtime_ns != before
    assert json.loads(out.read_text())["gemm_launch_us"]
    assert not any(tmp_path.iterdir())  # nothing written where the script ran
    if shutil.which("git") is not None and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", "bench/out/host_cost.json"], cwd=ROOT)
        assert ignored.returncode == 0, "bench/out/ must be git-ignored"


@pytest.mark.parametrize("name, dtype, torch_setting", [
    ("ieee", torch.float32, "ieee"), ("tf32", torch.float32, "tf32"), ("tf32x3", torch.float32, "ieee"),
    ("bf16", torch.bfloat16, "ieee"), ("fp16", torch.float16, "ieee")])
def test_set_precision_sets_torchs_setting_and_returns_the_dtype(name, dtype, torch_setting):
    from fusedgrad.kernels.precision import PRECISIONS
    from helpers import torch_fp32_setting

    with torch_fp32_setting("tf32" if torch_setting == "ieee" else "ieee"):  # the opposite, restored after
        assert common.set_precision(name) == dtype
        assert torch.backends.cuda.matmul.fp32_precision == torch_setting
    assert common.kernel_fp32_precision(name) == (PRECISIONS[name][1] or "ieee")


def test_set_precision_rejects_the_old_names():
    with pytest.raises(ValueError, match="unknown precision 'fp32'"):
        common.set_precision("fp32")


def test_tolerance_tables_are_keyed_by_precision_names():
    from fusedgrad.kernels.precision import PRECISIONS
    assert set(common.WEIGHTS_VS_EAGER) <= set(PRECISIONS) and set(common.GEMM_VS_FLOAT64) <= set(PRECISIONS)


def test_relative_error():
    reference = torch.tensor([3.0, 4.0, float("nan"), float("inf")])
    assert common.relative_error(reference, reference) == 0.0
    assert common.relative_error(torch.tensor([3.0, 4.5, float("nan"), float("inf")]), reference) == pytest.approx(0.1)
    for wrong in ([3.0, 4.0, 1.0, float("inf")], [3.0, 4.0, float("nan"), 1.0], [3.0, 4.0, float("nan"), -float("inf")]):
        assert common.relative_error(torch.tensor(wrong), reference) == float("inf")
    assert common.relative_error(torch.zeros(2), torch.zeros(2)) == 0.0


def test_environment_names_the_commit_and_write_result_records_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_COMMIT", "0123abc")
    path = tmp_path / "new" / "folder" / "result.json"
    returned = common.write_result(path, {"rows": [1]}, torch.device("cpu"))
    record = json.loads(path.read_text())
    assert record == returned and record["rows"] == [1]
    environment = record["environment"]
    # the keys bench/summarize.py reads (gpu and cuda_driver only on CUDA), and the rest
    assert environment["git_commit"] == "0123abc" and environment["torch"] == torch.__version__
    assert {"date", "triton", "cuda", "python", "platform", "command", "device"} <= set(environment)
    assert environment["device"] == "cpu" and "gpu" not in environment
    monkeypatch.delenv("GIT_COMMIT")
    if shutil.which("git") is not None and (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert common.environment(torch.device("cpu"))["git_commit"] == head


@pytest.mark.parametrize("backend", ["aten", "triton"])
def test_saved_for_backward_bytes_per_backend(backend):
    """The activation-memory count of `bench/run.py`: fusedgrad's autograd ops keep h once and
    one N x D_out tensor for the loss on either backend (Triton: interpreted on CPU)."""
    import fusedgrad
    from helpers import kernel_device

    bench = load_bench_module()
    case = bench.Case(8, 16, 8, 4, "ieee")
    device = torch.device(kernel_device() if backend == "triton" else "cpu")
    x, y, w1, w2 = bench.make_data(case, device, torch.float32)
    w1.requires_grad_()
    w2.requires_grad_()
    with fusedgrad.backend(backend):
        step, _, _ = bench.build("fusedgrad-autograd", x, y, w1, w2, 1e-3)
        assert bench.saved_for_backward_bytes(step, (x, y, w1, w2)) == 4 * (8 * 8 + 8 * 4)
        # nothing excluded, data and weights count too: x (for grad_w1; x needs no gradient, so
        # w1 is not saved) and w2 (for grad_h) on both backends, y by ATen's loss
        with_data = bench.saved_for_backward_bytes(step, ())
    data = {"triton": 8 * 16 + 8 * 4, "aten": 8 * 16 + 8 * 4 + 8 * 4}[backend]
    assert with_data == 4 * (8 * 8 + 8 * 4 + data)


def test_mlp_rows_at_tiny_size(tmp_path):
    """bench/run.py --mlp (bench/mlp.py --quick): every variant times, trains alike and is compared."""
    out = tmp_path / "mlp.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = subprocess.run([sys.executable, str(BENCH / "run.py"), "--mlp", "--quick", "--device", device,
                             "--variants", "eager", "fusedgrad autograd", "fusedgrad step", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"eager", "fusedgrad autograd", "fusedgrad step"}
    for row in rows.values():
        assert row["us_per_step"] > 0 and row["rel_error_vs_eager"] < 1e-4
    assert "| fusedgrad step |" in result.stdout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_distributed_rows_under_torchrun(tmp_path):
    """torchrun ... bench/run.py --distributed --quick (bench/distributed.py) on 2 ranks over
    127.0.0.1: a row per case and rank count, scaling efficiency relative to one rank."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "distributed.json"
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["GLOO_SOCKET_IFNAME"] = "lo"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
                             "--master-addr", "127.0.0.1", "--master-port", str(port), str(BENCH / "run.py"),
                             "--distributed", "--quick", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["world_size"] == 2 and record["backend"] in ("gloo", "nccl")
    assert sorted((row["case"].split()[0], row["ranks"]) for row in record["rows"]) == [
        ("MLP", 1), ("MLP", 2), ("tutorial", 1), ("tutorial", 2)]
    for row in record["rows"]:
        assert row["steps_per_second"] > 0 and row["scaling_efficiency"] > 0
        assert row["ranks"] > 1 or row["scaling_efficiency"] == 1.0
