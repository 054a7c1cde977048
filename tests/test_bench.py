"""`bench/run.py` and `bench/kernels.py` keep working: tiny runs on this machine's device."""

import json
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quick_run_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--sizes", "8x16x8x4", "--precisions", "fp32", "--rounds", "2",
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
    # fp32 at IEEE precision: "auto" runs the autograd GEMMs on ATen, and the row names it
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
    # Activation memory kept for backward at 8x16x8x4 fp32, in bytes: eager saves the
    # pre-activation (clamp), h (mm) and y_pred - y (pow); fusedgrad saves h once (the ReLU mask
    # and mm's input) and the loss gradient. The fused step has no tape.
    assert rows["eager"]["saved_for_backward_bytes"] == 4 * (2 * 8 * 8 + 8 * 4)
    assert rows["fusedgrad-autograd"]["saved_for_backward_bytes"] == 4 * (8 * 8 + 8 * 4)
    assert rows["fusedgrad-autograd"]["saved_vs_eager"] == pytest.approx(0.6)
    assert rows["fusedgrad-step"]["saved_for_backward_bytes"] is None
    assert record["environment"]["torch"] == torch.__version__ and record["complete"]
    assert "| fusedgrad-step |" in result.stdout
    if device == "cpu":
        assert "GPU numbers need CUDA" in result.stdout


def load_bench_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_compile_variant_runs_in_a_child_process_and_its_failure_becomes_a_row(tmp_path):
    bench = load_bench_module()
    case = bench.Case(8, 16, 8, 4, "fp32")
    results, notes, w1, w2 = bench.measure_in_child(case, "compile", torch.device("cpu"), 1e-3, (1, 1, 1), tmp_path)
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
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "kernels.py"), "--sizes", size,
                             "--precisions", "fp16", "fp32", "--peak-size", "1024", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    rows = record["rows"]
    for precision in ("fp16", "fp32"):
        found = {(r["pass"], r["implementation"]) for r in rows if r["precision"] == precision}
        assert {("forward", "fusedgrad"), ("forward", "torch.mm+relu"), ("backward", "fusedgrad"),
                ("backward", "torch.mm+relu"), ("fwd+bwd", "fusedgrad"), ("fwd+bwd", "torch.mm+relu")} <= found
    assert all(r["ok"] and r["us"] > 0 and r["speedup_vs_torch"] > 0 for r in rows)
    errors = next(iter(record["fp32_errors"].values()))
    assert set(errors) == {"fusedgrad-ieee", "fusedgrad-tf32", "fusedgrad-tf32x3", "cublas-ieee", "cublas-tf32"}
    assert "| fp32 | " in result.stdout
    if torch.cuda.is_available():
        assert any(r["implementation"].startswith("fusedgrad-splitK") for r in rows)
    else:
        assert "GPU numbers need CUDA" in result.stderr


def test_launcher_cost_script(tmp_path):
    out = tmp_path / "cost.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "launcher_cost.py"), "--number", "20",
                             "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    launches, steps = rows[:5], rows[5:]
    assert all(0 < row["us_per_launch"] < 1e4 for row in launches)
    assert [row["step"].split()[0] for row in steps] == ["autograd", "fused"]
    assert all(0 < row["us_per_step"] < 1e5 for row in steps)


def test_launcher_cost_script_loads_a_kernels_folder(tmp_path):
    """--kernels-dir loads a `kernels/` folder as a package of its own (an older checkout's):
    the kernels must import nothing relative to fusedgrad."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "launcher_cost.py"), "--number", "5",
                             "--kernels-dir", str(ROOT / "kernels")], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "relu(x @ w1)" in result.stdout


@pytest.mark.parametrize("backend", ["aten", "triton"])
def test_saved_for_backward_bytes_per_backend(backend):
    """The activation-memory count of `bench/run.py`: fusedgrad's autograd ops keep h once and
    one N x D_out tensor for the loss on either backend (Triton: interpreted on CPU)."""
    import fusedgrad
    from helpers import kernel_device

    bench = load_bench_module()
    case = bench.Case(8, 16, 8, 4, "fp32")
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
