"""Kernel-level benchmark: fusedgrad's matmul-ReLU GEMMs against cuBLAS over M, N, K sweeps.

    python bench/kernels.py                    # the sweep below, JSON + markdown in bench/results/
    python bench/kernels.py --quick            # 4096^3 per precision and the tutorial's GEMMs
    python bench/kernels.py --autotune         # adds fusedgrad's autotuned configs as a variant
    python bench/kernels.py --quick --autotune bf16 tf32   # ... for some precisions only
    python bench/kernels.py --sizes 1024x1024x16384 --precisions bf16

Per (precision, M, N, K) three passes, each with every implementation:
    forward    fusedgrad relu(a @ b), ReLU in the epilogue     | torch.relu(torch.mm(a, b)),
                                                                 torch._addmm_activation (cuBLASLt epilogue)
    backward   fusedgrad: two GEMMs that apply relu'(out) to    | threshold_backward, then two torch.mm
               grad_out as they load it
    fwd+bwd    both of the above in sequence
fusedgrad runs with its shape heuristic ("fusedgrad"), with autotuning ("fusedgrad-autotuned",
--autotune), and where the autotuner would try them, split over K ("fusedgrad-splitK<n>") and
as persistent programs with TMA loads ("fusedgrad-persistent<BLOCK_M>x<BLOCK_N>"), forward only.
fusedgrad launches grad_b = a.T @ gated(grad_out) as its transpose (gated A);
"fusedgrad-gate-B" launches it as written, to measure the difference.
Each implementation's launches are captured in a CUDA graph and the replay is timed
(`triton.testing.do_bench` median, warm-up first): host launch cost is excluded, so the
numbers are GPU time; operands stay in L2 between launches when they fit. Per row: µs, TFLOP/s
(2MNK per GEMM), percent of the dense torch.mm peak measured in the same run, the bytes each
implementation moves beyond reading its operands and writing its results once (modelled), and
the relative error against float64 ("WRONG" rows are never counted as wins).
fp32 rows also report the error of IEEE, tf32 and 3xTF32 dots (fusedgrad.fp32_precision).
Without CUDA the script runs the kernels under Triton's interpreter at a tiny size: a smoke test
of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import statistics
import sys
import time

import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
PRECISIONS = ("bf16", "fp16", "tf32", "fp32")
DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}
TOLERANCE = {"bf16": 2e-2, "fp16": 3e-3, "tf32": 3e-3, "fp32": 1e-5}  # norm-relative vs float64
SWEEP = [(4096, 4096, 4096), (8192, 8192, 8192), (16384, 4096, 4096), (4096, 4096, 16384),
         (1024, 1024, 16384), (256, 4096, 4096), (8192, 256, 8192)]
TUTORIAL = [(64, 100, 1000), (1000, 100, 64)]  # forward1 and grad_w1 (M, N, K)
QUICK = [(4096, 4096, 4096)]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def set_precision(precision: str) -> torch.dtype:
    torch.backends.cuda.matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    return DTYPE[precision]


def graph_us(fn, device: torch.device, flops: float) -> float:
    """GPU time of one call of `fn`: several calls captured in a CUDA graph, replay timed."""
    if device.type != "cuda":
        fn()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e6 * statistics.median(times)
    import triton.testing
    reps = max(1, min(20, int(2e12 / max(flops, 1))))  # about 2 ms of work per replay at 1 PFLOP/s
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()  # compile (and autotune) outside the capture
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return 1e3 * triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median") / reps


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    actual = actual.double().to(reference.device)
    return ((actual - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def implementations(a, b, grad_out, out, kernels, configs: dict) -> dict:
    """{pass: {name: fn returning the pass's outputs}} for the operands of one case."""
    zero_bias = torch.zeros(b.shape[1], dtype=a.dtype, device=a.device)
    passes = {"forward": {}, "backward": {}, "fwd+bwd": {}}

    def ours_forward(config):
        return lambda: (kernels.matmul(a, b, relu=True, config=config),)

    def ours_backward(config):
        return lambda: (kernels.matmul(grad_out, b.T, a_relu_mask=out, config=config),
                        kernels.matmul(a.T, grad_out, b_relu_mask=out, config=config))

    def ours_both(config):
        def run():
            forward_out = kernels.matmul(a, b, relu=True, config=config)
            return (forward_out, kernels.matmul(grad_out, b.T, a_relu_mask=forward_out, config=config),
                    kernels.matmul(a.T, grad_out, b_relu_mask=forward_out, config=config))
        return run

    for name, config in configs.items():
        passes["forward"][name] = ours_forward(config)
        if config is None:  # a fixed config (split-K) is chosen for the forward's shape only
            passes["backward"][name] = ours_backward(config)
            passes["fwd+bwd"][name] = ours_both(config)

    # grad_b launched as written (B gated), to measure what the transposed launch buys (each
    # formulation with the heuristic's tiles for its own shape).
    gemm = kernels.gemm

    def grad_b_gating_b(forward_out):
        grad_b = torch.empty(b.shape, dtype=a.dtype, device=a.device)
        gemm.launch(a.T, grad_out, grad_b, mask_operand=gemm.MASK_B, gate=forward_out)
        return grad_b

    passes["backward"]["fusedgrad-gate-B"] = lambda: (
        kernels.matmul(grad_out, b.T, a_relu_mask=out), grad_b_gating_b(out))

    def both_gating_b():
        forward_out = kernels.matmul(a, b, relu=True)
        return (forward_out, kernels.matmul(grad_out, b.T, a_relu_mask=forward_out),
                grad_b_gating_b(forward_out))
    passes["fwd+bwd"]["fusedgrad-gate-B"] = both_gating_b

    def torch_backward(forward_out):
        masked = torch.ops.aten.threshold_backward(grad_out, forward_out, 0)
        return torch.mm(masked, b.T), torch.mm(a.T, masked)

    passes["forward"]["torch.mm+relu"] = lambda: (torch.relu(torch.mm(a, b)),)
    if hasattr(torch, "_addmm_activation"):
        passes["forward"]["torch._addmm_activation"] = lambda: (torch._addmm_activation(zero_bias, a, b),)
    passes["backward"]["torch.mm+relu"] = lambda: torch_backward(out)

    def torch_both():
        forward_out = torch.relu(torch.mm(a, b))
        return (forward_out, *torch_backward(forward_out))
    passes["fwd+bwd"]["torch.mm+relu"] = torch_both
    return passes


def extra_bytes(pass_name: str, name: str, M: int, N: int, itemsize: int) -> int:
    """Traffic beyond each operand read once and each result written once (a model):
    eager writes the pre-activation and re-reads/re-writes it for the ReLU (2MN), and its
    backward's mask kernel reads grad_out and out and writes the masked gradient (3MN) that the
    two GEMMs then read in place of grad_out; fusedgrad's backward GEMMs read `out` (MN each),
    and split-K writes and reads back one fp32 partial tile per slice."""
    mn = M * N * itemsize
    if name.startswith("fusedgrad-splitK"):  # forward only
        return 2 * int(name.removeprefix("fusedgrad-splitK")) * M * N * 4
    if name.startswith("fusedgrad"):
        model = {"forward": 0, "backward": 2 * mn, "fwd+bwd": 2 * mn}
    elif name == "torch._addmm_activation":
        model = {"forward": 0}
    else:
        model = {"forward": 2 * mn, "backward": 3 * mn, "fwd+bwd": 5 * mn}
    return model[pass_name]


def dense_peak(precision: str, device: torch.device, n: int) -> float | None:
    if device.type != "cuda":
        return None
    import triton.testing
    dtype = set_precision(precision)
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    ms = triton.testing.do_bench(lambda: torch.mm(a, b), warmup=100, rep=400, return_mode="median")
    return 2 * n**3 / (ms * 1e-3) / 1e12


def fp32_errors(a, b, kernels) -> dict:
    """Relative error vs float64 of fusedgrad's IEEE, tf32 and 3xTF32 dots and cuBLAS's."""
    reference = a.double() @ b.double()
    errors = {f"fusedgrad-{p}": relative_error(kernels.matmul(a, b, fp32_precision=p), reference)
              for p in ("ieee", "tf32", "tf32x3")}
    for precision in ("ieee", "tf32"):
        set_precision("tf32" if precision == "tf32" else "fp32")
        errors[f"cublas-{precision}"] = relative_error(torch.mm(a, b), reference)
    set_precision("fp32")
    return errors


def run_case(precision: str, shape: tuple[int, int, int], device: torch.device, args, peak) -> list[dict]:
    from fusedgrad.kernels import gemm, tuning
    import fusedgrad.kernels as kernels
    M, N, K = shape
    dtype = set_precision(precision)
    generator = torch.Generator(device="cpu").manual_seed(M * 31 + N * 7 + K)
    a = torch.randn(M, K, generator=generator).to(device=device, dtype=dtype)
    b = (torch.randn(N, K, generator=generator) / math.sqrt(K)).to(device=device, dtype=dtype).T
    grad_out = torch.randn(M, N, generator=generator).to(device=device, dtype=dtype)
    out = torch.relu(a @ b)
    configs = {"fusedgrad": None}
    if device.type == "cuda":
        index = tuning.device_index(device)
        num_sms = tuning.multiprocessors(index)
        tma = tuning.has_tma(index) and tuning.tma_suits(a, b, gemm.input_precision(dtype))
        for config in tuning.candidates(M, N, K, dtype, gemm.input_precision(dtype), num_sms, tma):
            if config["SPLIT_K"] > 1:
                configs[f"fusedgrad-splitK{config['SPLIT_K']}"] = config
            if config.get("PERSISTENT") and gemm.tma_layout(a) and gemm.tma_layout(b):
                configs[f"fusedgrad-persistent{config['BLOCK_M']}x{config['BLOCK_N']}"] = config
    autotune = args.autotune is not None and (not args.autotune or precision in args.autotune)
    # References in float64 (on the GPU: fast enough for the sweep), masked by the rounded `out`.
    a64, b64, g64 = a.double(), b.double(), grad_out.double()
    out64 = torch.relu(a64 @ b64)
    masked64 = g64.masked_fill(out <= 0, 0)
    references = {"forward": (out64,), "backward": (masked64 @ b64.T, a64.T @ masked64)}
    references["fwd+bwd"] = references["forward"] + references["backward"]
    rows = []
    for pass_name, impls in implementations(a, b, grad_out, out, kernels, configs).items():
        gemms = 1 if pass_name == "forward" else 2 if pass_name == "backward" else 3
        flops = 2 * M * N * K * gemms
        if autotune:
            impls["fusedgrad-autotuned"] = _autotuned(impls["fusedgrad"], kernels)
        for name, fn in impls.items():
            error = max(relative_error(o, e) for o, e in zip(fn(), references[pass_name]))
            us = graph_us(fn, device, flops)
            rows.append({
                "precision": precision, "M": M, "N": N, "K": K, "pass": pass_name, "implementation": name,
                "us": us, "tflops": flops / (us * 1e-6) / 1e12,
                "percent_of_peak": None if peak is None else 100 * flops / (us * 1e-6) / 1e12 / peak,
                "extra_bytes_modelled": extra_bytes(pass_name, name, M, N, a.element_size()),
                "relative_error": error, "ok": error <= TOLERANCE[precision],
            })
            log(f"{precision} {M}x{N}x{K} {pass_name:8s} {name:24s} {us:10.1f} us  "
                f"{rows[-1]['tflops']:7.1f} TFLOP/s  err {error:.1e}{'' if rows[-1]['ok'] else '  WRONG'}")
    baseline = {(r["pass"]): r["us"] for r in rows if r["implementation"] == "torch.mm+relu"}
    for row in rows:
        row["speedup_vs_torch"] = baseline[row["pass"]] / row["us"] if row["ok"] else None
    return rows


def _autotuned(heuristic_fn, kernels):
    """The heuristic's closure run with autotuning on: the chooser times candidates on its first
    call (outside the graph capture, in `graph_us`'s warm-up) and reuses them afterwards."""
    def run():
        kernels.tuning.set_autotune(True)
        try:
            return heuristic_fn()
        finally:
            kernels.tuning.set_autotune(None)
    return run


def markdown(rows: list[dict]) -> str:
    lines = ["| precision | M x N x K | pass | implementation | µs | TFLOP/s | % peak | vs torch | extra MB | error |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        peak = "" if r["percent_of_peak"] is None else f"{r['percent_of_peak']:.1f}"
        speedup = "WRONG" if not r["ok"] else f"{r['speedup_vs_torch']:.2f}x"
        lines.append(f"| {r['precision']} | {r['M']}x{r['N']}x{r['K']} | {r['pass']} | {r['implementation']} | "
                     f"{r['us']:.1f} | {r['tflops']:.1f} | {peak} | {speedup} | "
                     f"{r['extra_bytes_modelled'] / 1e6:.1f} | {r['relative_error']:.1e} |")
    return "\n".join(lines)


def fp32_error_markdown(errors: dict) -> str:
    names = ("fusedgrad-ieee", "fusedgrad-tf32", "fusedgrad-tf32x3", "cublas-ieee", "cublas-tf32")
    lines = ["| fp32 product (columns scaled 1e-3..1e3) | " + " | ".join(names) + " |",
             "| --- |" + " ---: |" * len(names)]
    for size, row in errors.items():
        lines.append(f"| {size} | " + " | ".join(f"{row[name]:.1e}" for name in names) + " |")
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"size {text!r} is not MxNxK")
    return parts  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4096^3 per precision and the tutorial's GEMMs")
    parser.add_argument("--sizes", type=parse_size, nargs="+", help="MxNxK sizes instead of the sweep")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--autotune", nargs="*", choices=PRECISIONS, metavar="PRECISION",
                        help="add fusedgrad's autotuned configs as a variant (for these precisions; "
                             "all when none is named): compiling and timing the candidates takes minutes")
    parser.add_argument("--peak-size", type=int, default=8192, help="n of the torch.mm n^3 peak measurement")
    parser.add_argument("--json", type=pathlib.Path, help="result file (default bench/results/kernels-<date>.json)")
    args = parser.parse_args(argv)

    from fusedgrad.train import environment
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        sizes = args.sizes or (QUICK if args.quick else SWEEP)
    else:
        log("no CUDA device: the kernels run under Triton's interpreter at a tiny size; "
            "GPU numbers need CUDA")
        os.environ.setdefault("TRITON_INTERPRET", "1")
        sizes = args.sizes or [(48, 40, 96)]
        args.precisions = [p for p in args.precisions if p in ("fp16", "fp32")]  # interpreter: no bf16
    rows, errors = [], {}
    for precision in args.precisions:
        peak = dense_peak(precision, device, args.peak_size)
        if peak is not None:
            log(f"peak {precision}: {peak:.0f} TFLOP/s (torch.mm {args.peak_size}^3)")
        shapes = list(sizes) + (TUTORIAL if precision == "fp32" and device.type == "cuda" else [])
        for shape in shapes:
            rows.extend(run_case(precision, shape, device, args, peak))
        if precision == "fp32":
            import fusedgrad.kernels as kernels
            M, N, K = sizes[0]
            a = torch.randn(M, K, device=device) * torch.logspace(-3, 3, K, device=device)
            errors[f"{M}x{N}x{K}"] = fp32_errors(a, torch.randn(K, N, device=device), kernels)
            log(f"fp32 errors vs float64: {errors}")
    result = {"rows": rows, "fp32_errors": errors, "peak_size": args.peak_size,
              "environment": environment(device)}
    result["table"] = markdown(rows)
    result["fp32_error_table"] = fp32_error_markdown(errors)
    if args.autotune is not None:
        from fusedgrad.kernels import tuning
        result["autotuned"] = tuning.TUNER.entries()  # key -> chosen config and every candidate's time
    path = args.json or RESULTS / f"kernels-{datetime.date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(result["table"] + "\n\n" + result["fp32_error_table"])
    log(f"wrote {path}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
