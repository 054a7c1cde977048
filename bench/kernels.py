"""Kernel-level benchmark: fusedgrad's matmul-ReLU GEMMs against cuBLAS over M, N, K sweeps.

    python bench/kernels.py                    # the sweep below, JSON (bench/out/kernels.json) + markdown
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
Precisions are `fusedgrad.kernels.precision.PRECISIONS` names: bf16, fp16, tf32 (float32 inputs,
tf32 products) and ieee (float32 at IEEE precision); fusedgrad gets the product as its
`fp32_precision` argument, cuBLAS as torch's setting.
Each implementation's launches are captured in a CUDA graph and the replay is timed
(`common.graph_replay_us`): host launch cost is excluded, so the numbers are GPU time;
operands stay in L2 between launches when they fit. Per row: µs, TFLOP/s
(2MNK per GEMM), percent of the dense torch.mm peak measured in the same run, the bytes each
implementation moves beyond reading its operands and writing its results once (modelled), and
the relative error against float64 ("WRONG" rows are never counted as wins).
With ieee, the run also reports the error of fusedgrad's IEEE, tf32 and 3xTF32 dots and
cuBLAS's IEEE and tf32 products on inputs whose columns span 1e-3 to 1e3.
Without CUDA the script runs the kernels under Triton's interpreter at a tiny size: a smoke test
of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

import common
import fusedgrad
from fusedgrad import settings
from fusedgrad.kernels.precision import dot_precision

PRECISIONS = ("bf16", "fp16", "tf32", "ieee")
TOLERANCE = common.GEMM_VS_FLOAT64
SWEEP = [(4096, 4096, 4096), (8192, 8192, 8192), (16384, 4096, 4096), (4096, 4096, 16384),
         (1024, 1024, 16384), (256, 4096, 4096), (8192, 256, 8192)]
# forward1 x @ w1 and grad_w1 = x.T @ grad_h, as (M, N, K)
TUTORIAL = [(common.TUTORIAL.batch, common.TUTORIAL.hidden, common.TUTORIAL.d_in),
            (common.TUTORIAL.d_in, common.TUTORIAL.hidden, common.TUTORIAL.batch)]
QUICK = [(4096, 4096, 4096)]
log = common.log


def time_us(fn, device: torch.device, flops: float) -> float:
    """GPU µs of one call of `fn` from CUDA-graph replays, or wall-clock µs off CUDA (the
    interpreter: a smoke test, not a measurement)."""
    if device.type != "cuda":
        return common.wall_us(fn)
    calls = max(1, min(20, int(2e12 / max(flops, 1))))  # about 2 ms of work per replay at 1 PFLOP/s
    return common.graph_replay_us(fn, calls, warmup_ms=25, rep_ms=200)


def implementations(a, b, grad_out, out, kernels, variants: dict, tuned: dict | None) -> dict:
    """{pass: {name: fn returning the pass's outputs}} for the operands of one case. `variants`
    maps fusedgrad's implementation names to `kernels.matmul` keyword arguments ("fusedgrad":
    the plain launch); those with a fixed `config` are chosen for the forward's shape, so they
    run the forward only. `tuned`, when given, is the autotuned launch ("fusedgrad-autotuned",
    last in every pass)."""
    zero_bias = torch.zeros(b.shape[1], dtype=a.dtype, device=a.device)
    plain = variants["fusedgrad"]
    passes = {"forward": {}, "backward": {}, "fwd+bwd": {}}

    def ours_forward(launch):
        return lambda: (kernels.matmul(a, b, relu=True, **launch),)

    def ours_backward(launch):
        return lambda: (kernels.matmul(grad_out, b.T, a_relu_mask=out, **launch),
                        kernels.matmul(a.T, grad_out, b_relu_mask=out, **launch))

    def ours_both(launch):
        def run():
            forward_out = kernels.matmul(a, b, relu=True, **launch)
            return (forward_out, kernels.matmul(grad_out, b.T, a_relu_mask=forward_out, **launch),
                    kernels.matmul(a.T, grad_out, b_relu_mask=forward_out, **launch))
        return run

    def add_ours(name, launch):
        passes["forward"][name] = ours_forward(launch)
        if "config" not in launch:
            passes["backward"][name] = ours_backward(launch)
            passes["fwd+bwd"][name] = ours_both(launch)

    for name, launch in variants.items():
        add_ours(name, launch)

    # grad_b launched as written (B gated), to measure what the transposed launch buys (each
    # formulation with the heuristic's tiles for its own shape).
    gemm = kernels.gemm

    def grad_b_gating_b(forward_out):
        grad_b = torch.empty(b.shape, dtype=a.dtype, device=a.device)
        gemm.launch(a.T, grad_out, grad_b, mask_operand=gemm.MASK_B, gate=forward_out, **plain)
        return grad_b

    passes["backward"]["fusedgrad-gate-B"] = lambda: (
        kernels.matmul(grad_out, b.T, a_relu_mask=out, **plain), grad_b_gating_b(out))

    def both_gating_b():
        forward_out = kernels.matmul(a, b, relu=True, **plain)
        return (forward_out, kernels.matmul(grad_out, b.T, a_relu_mask=forward_out, **plain),
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
    if tuned is not None:
        add_ours("fusedgrad-autotuned", tuned)
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


def fp32_errors(a, b, kernels) -> dict:
    """Relative error vs float64 of fusedgrad's IEEE, tf32 and 3xTF32 dots and cuBLAS's."""
    reference = a.double() @ b.double()
    errors = {f"fusedgrad-{p}": common.relative_error(kernels.matmul(a, b, fp32_precision=p), reference)
              for p in ("ieee", "tf32", "tf32x3")}
    for precision in ("ieee", "tf32"):
        common.set_precision(precision)
        errors[f"cublas-{precision}"] = common.relative_error(torch.mm(a, b), reference)
    common.set_precision("ieee")
    return errors


def fixed_variants(a, b, fp32_precision: str, kernels) -> dict:
    """The autotuner's candidates worth a row of their own on this GPU, as `kernels.matmul`
    arguments: split-K ("fusedgrad-splitK<n>") and persistent TMA programs
    ("fusedgrad-persistent<BLOCK_M>x<BLOCK_N>", where TMA can describe a and b)."""
    gemm, tuning = kernels.gemm, kernels.tuning
    (M, K), N = a.shape, b.shape[1]
    index = tuning.device_index(a.device)
    input_precision = dot_precision(a.dtype, fp32_precision)
    tma = tuning.has_tma(index) and tuning.tma_suits(a, b, input_precision)
    found = {}
    for config in tuning.candidates(M, N, K, a.dtype, input_precision, tuning.multiprocessors(index), tma):
        launch = dict(config=config, fp32_precision=fp32_precision)
        if config.SPLIT_K > 1:
            found[f"fusedgrad-splitK{config.SPLIT_K}"] = launch
        if config.PERSISTENT and gemm.tma_layout(a) and gemm.tma_layout(b):
            found[f"fusedgrad-persistent{config.BLOCK_M}x{config.BLOCK_N}"] = launch
    return found


def run_case(precision: str, shape: tuple[int, int, int], device: torch.device, args, peak) -> list[dict]:
    import fusedgrad.kernels as kernels
    M, N, K = shape
    dtype = common.set_precision(precision)
    fp32_precision = common.kernel_fp32_precision(precision)
    generator = torch.Generator(device="cpu").manual_seed(M * 31 + N * 7 + K)
    a = torch.randn(M, K, generator=generator).to(device=device, dtype=dtype)
    b = (torch.randn(N, K, generator=generator) / math.sqrt(K)).to(device=device, dtype=dtype).T
    grad_out = torch.randn(M, N, generator=generator).to(device=device, dtype=dtype)
    out = torch.relu(a @ b)
    variants = {"fusedgrad": dict(fp32_precision=fp32_precision)}
    if device.type == "cuda":
        variants.update(fixed_variants(a, b, fp32_precision, kernels))
    tuned = None
    if args.autotune is not None and (not args.autotune or precision in args.autotune):
        # Candidates are timed on a launch's first call (outside the graph capture, in
        # `time_us`'s warm-up or the error check) and reused afterwards.
        tuned = dict(fp32_precision=fp32_precision, tuner=autotuner())
    # References in float64 (on the GPU: fast enough for the sweep), masked by the rounded `out`.
    a64, b64, g64 = a.double(), b.double(), grad_out.double()
    out64 = torch.relu(a64 @ b64)
    masked64 = g64.masked_fill(out <= 0, 0)
    references = {"forward": (out64,), "backward": (masked64 @ b64.T, a64.T @ masked64)}
    references["fwd+bwd"] = references["forward"] + references["backward"]
    rows = []
    for pass_name, impls in implementations(a, b, grad_out, out, kernels, variants, tuned).items():
        gemms = 1 if pass_name == "forward" else 2 if pass_name == "backward" else 3
        flops = 2 * M * N * K * gemms
        for name, fn in impls.items():
            error = max(common.relative_error(o, e) for o, e in zip(fn(), references[pass_name]))
            us = time_us(fn, device, flops)
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


def autotuner():
    """The autotuner's store in the cache folder in force (`fusedgrad.cache_dir`, else
    FUSEDGRAD_CACHE_DIR, else ~/.cache/fusedgrad), shared with fusedgrad's own launches."""
    with fusedgrad.autotune(True):
        return settings.tuner()


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
    parser = common.parser(__doc__, "kernels.json")
    parser.add_argument("--quick", action="store_true", help="4096^3 per precision and the tutorial's GEMMs")
    parser.add_argument("--sizes", type=parse_size, nargs="+", help="MxNxK sizes instead of the sweep")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--autotune", nargs="*", choices=PRECISIONS, metavar="PRECISION",
                        help="add fusedgrad's autotuned configs as a variant (for these precisions; "
                             "all when none is named): compiling and timing the candidates takes minutes")
    parser.add_argument("--peak-size", type=int, default=8192, help="n of the torch.mm n^3 peak measurement")
    args = parser.parse_args(argv)

    device = common.default_device()
    if device.type == "cuda":
        sizes = args.sizes or (QUICK if args.quick else SWEEP)
    else:
        log("no CUDA device: the kernels run under Triton's interpreter at a tiny size; "
            "GPU numbers need CUDA")
        if not settings.use_triton_interpreter():
            raise SystemExit("triton was imported before the interpreter could be turned on")
        sizes = args.sizes or [(48, 40, 96)]
        args.precisions = [p for p in args.precisions if p in ("fp16", "ieee")]  # interpreter: no bf16
    rows, errors = [], {}
    for precision in args.precisions:
        peak = common.dense_peak_tflops(precision, device, args.peak_size) if device.type == "cuda" else None
        if peak is not None:
            log(f"peak {precision}: {peak:.0f} TFLOP/s (torch.mm {args.peak_size}^3)")
        shapes = list(sizes) + (TUTORIAL if precision == "ieee" and device.type == "cuda" else [])
        for shape in shapes:
            rows.extend(run_case(precision, shape, device, args, peak))
        if precision == "ieee":
            import fusedgrad.kernels as kernels
            M, N, K = sizes[0]
            a = torch.randn(M, K, device=device) * torch.logspace(-3, 3, K, device=device)
            errors[f"{M}x{N}x{K}"] = fp32_errors(a, torch.randn(K, N, device=device), kernels)
            log(f"fp32 errors vs float64: {errors}")
    result = {"rows": rows, "fp32_errors": errors, "peak_size": args.peak_size,
              "table": markdown(rows), "fp32_error_table": fp32_error_markdown(errors)}
    if args.autotune is not None:
        result["autotuned"] = autotuner().entries()  # key -> chosen config and every candidate's time
    common.write_result(args.json, result, device)
    print(result["table"] + "\n\n" + result["fp32_error_table"])
    log(f"wrote {args.json}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
