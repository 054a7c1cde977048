"""Training-step throughput of the tutorial's network, every variant side by side in one process.

    python bench/run.py            # full: three sizes x ieee/tf32/bf16, all variants
    python bench/run.py --quick    # tutorial size ieee and 4096^4 bf16; fits a short GPU slot
    python bench/run.py --mlp ...  # the MLP rows (bench/mlp.py); torchrun ... bench/run.py --distributed: bench/distributed.py

Precisions are named as `fusedgrad.kernels.precision.PRECISIONS` names them: "ieee" (float32
at IEEE precision), "tf32" (float32 inputs, tf32 products), "bf16". Each case sets torch's
float32 matmul setting and fusedgrad's `fp32_precision` to the same product.

Variants, all doing the same math at the same precision from the same initial weights:
    eager                     the tutorial's loop in plain PyTorch (autograd, `w -= lr * w.grad`)
    compile / compile-max-autotune / compile-reduce-overhead
                              torch.compile of the loss (forward + AOT backward) and the update
    fusedgrad-compile / fusedgrad-compile-reduce-overhead
                              the same with the loss written in fusedgrad's ops (mm_relu, mm,
                              mse_loss: operators in the compiled graph), backend in force
    fusedgrad-autograd        mm_relu, mm, mse_loss and optim.SGD under autograd, backend "auto"
                              (its GEMMs run on ATen at "ieee": the row says so)
    fusedgrad-autograd-triton the same on backend "triton"; run only where "auto" differs (ieee)
    fusedgrad-step            fusedgrad.train_step (no autograd tape)
    fusedgrad-step-graph      that step replayed from a CUDA graph

Per row: median steps/s with p20 and p80 over timed rounds (CUDA events; warm-up excluded, the
first step's time, compilation included, reported apart), µs per step, speedup over eager,
achieved TFLOP/s and percent of the dense matmul peak measured in the same run, peak memory
above the weights and data over the whole run (compilation and a CUDA graph's pool included),
the activation memory saved for backward (the distinct storages autograd's saved-tensor hooks
see in one step, data and weights left out; variants with an autograd tape only), and the
largest relative difference of the final loss and weights against eager. A row whose
difference is above its precision's bound is flagged WRONG and gets no speedup. Output: a
markdown table on stdout, JSON (with the environment; default bench/out/bench[_quick].json) and,
when matplotlib is installed, a PNG plot; progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import common
import fusedgrad
from fusedgrad import dispatch
from fusedgrad.train import describe_backend, make_step

VARIANTS = ("eager", "compile", "compile-max-autotune", "compile-reduce-overhead",
            "fusedgrad-compile", "fusedgrad-compile-reduce-overhead", "fusedgrad-autograd", "fusedgrad-autograd-triton", "fusedgrad-step", "fusedgrad-step-graph")
PRECISIONS = ("ieee", "tf32", "bf16")
TOLERANCE = common.WEIGHTS_VS_EAGER
TUTORIAL = common.TUTORIAL
log = common.log


@dataclasses.dataclass(frozen=True)
class Case:
    batch: int
    d_in: int
    hidden: int
    d_out: int
    precision: str

    @property
    def size(self) -> str:
        return f"{self.batch}x{self.d_in}x{self.hidden}x{self.d_out}"

    @property
    def flops_per_step(self) -> int:
        # forward: x @ w1, h @ w2; backward: grad_h, grad_w2, grad_w1 (x needs no gradient)
        return 4 * self.batch * self.d_in * self.hidden + 6 * self.batch * self.hidden * self.d_out


def make_data(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The tutorial's data; beyond the tutorial's size, weights scaled by 1/sqrt(fan_in) so
    that the loss stays finite over the timed steps."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(case.batch, case.d_in), (case.batch, case.d_out), (case.d_in, case.hidden), (case.hidden, case.d_out)]
    x, y, w1, w2 = (torch.randn(shape, generator=generator) for shape in shapes)
    if (case.batch, case.d_in, case.hidden, case.d_out) != TUTORIAL:
        w1, w2 = w1 / math.sqrt(case.d_in), w2 / math.sqrt(case.hidden)
    return [t.to(device, dtype) for t in (x, y, w1, w2)]


def learning_rate(case: Case, lr: float) -> float:
    """The tutorial's rate at its size; beyond it, scaled down with the square of the width so
    that plain SGD on the summed loss stays stable over the timed steps."""
    if (case.batch, case.d_in, case.hidden, case.d_out) == TUTORIAL:
        return lr
    return lr * (1024 / max(case.batch, case.d_in, case.hidden, case.d_out)) ** 2


def torch_loss(x, y, w1, w2):
    return (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()


def fusedgrad_loss(x, y, w1, w2):
    return fusedgrad.mse_loss(fusedgrad.mm(fusedgrad.mm_relu(x, w1), w2), y, reduction="sum")


COMPILED = {"compile": torch_loss, "fusedgrad-compile": fusedgrad_loss}  # variant prefix -> the loss it compiles


def compiled_step(loss_fn, mode: str | None, x, y, w1, w2, lr: float):
    """torch.compile of the tutorial's loss `loss_fn` (forward and, through AOTAutograd,
    backward) and of its update; `.backward()` itself stays a call, as in any compiled
    training loop."""
    def update(w1, w2, lr):
        with torch.no_grad():
            w1 -= lr * w1.grad
            w2 -= lr * w2.grad

    compiled_loss = torch.compile(loss_fn, mode=mode)
    compiled_update = torch.compile(update, mode=mode)

    def step():
        loss = compiled_loss(x, y, w1, w2)
        loss.backward()
        compiled_update(w1, w2, lr)
        w1.grad = w2.grad = None
        return loss
    return step


def is_compiled(variant: str) -> bool:
    return variant.startswith(tuple(COMPILED))


def build(variant: str, x, y, w1, w2, lr: float):
    """(step callable, w1, w2) for `variant`; w1 and w2 are leaves that require grad."""
    if variant == "eager":
        return make_step("reference", False, x, y, w1, w2, lr), w1, w2
    if is_compiled(variant):
        prefix = "fusedgrad-compile" if variant.startswith("fusedgrad-compile") else "compile"
        mode = variant.removeprefix(prefix).removeprefix("-") or None
        return compiled_step(COMPILED[prefix], mode, x, y, w1, w2, lr), w1, w2
    mode, cuda_graph = {"fusedgrad-autograd": ("autograd", False), "fusedgrad-autograd-triton": ("autograd", False),
                        "fusedgrad-step": ("step", False), "fusedgrad-step-graph": ("step", True)}[variant]
    return make_step(mode, cuda_graph, x, y, w1, w2, lr), w1, w2


class SkipRecorder(logging.Handler):
    """Collects torch's messages about skipped CUDA graphs and fallbacks during compilation."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        text = record.getMessage()
        if "skipping cudagraphs" in text or "fallback" in text.lower():
            self.messages.append(text.splitlines()[0][:200])


def saved_for_backward_bytes(step, exclude: tuple[torch.Tensor, ...]) -> int:
    """Bytes of the distinct storages that autograd saves for backward during one call of
    `step`, the storages of `exclude` (data and weights) left out: the activation memory the
    step keeps from its forward to its backward."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def time_variant(step, device: torch.device, warmup: int, rounds: int, steps_per_round: int,
                 tape_of: tuple[torch.Tensor, ...] = ()) -> dict:
    """Time `step`; when `tape_of` (its data and weights) is given, the second warm-up step also
    counts the activation memory it saves for backward. Every variant runs the same number of
    steps (at least two warm-up steps), so final weights stay comparable."""
    warmup = max(warmup, 2)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    entered = start = time.perf_counter()
    loss = step()
    sync()
    first_step_s = time.perf_counter() - start
    saved = census_error = None
    if tape_of:  # a failed count costs the row its memory number, not its timing
        try:
            saved = saved_for_backward_bytes(step, tape_of)
        except Exception as error:
            census_error = f"saved-tensor count failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    for _ in range(warmup - 1 - bool(tape_of)):
        loss = step()
    sync()
    per_step_us = []
    for _ in range(rounds):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(steps_per_round):
                loss = step()
            end.record()
            end.synchronize()
            per_step_us.append(1e3 * begin.elapsed_time(end) / steps_per_round)
        else:
            begin_s = time.perf_counter()
            for _ in range(steps_per_round):
                loss = step()
            per_step_us.append(1e6 * (time.perf_counter() - begin_s) / steps_per_round)
    steps_per_s = sorted(1e6 / us for us in per_step_us)
    quantile = lambda q: steps_per_s[min(len(steps_per_s) - 1, int(q * len(steps_per_s)))]
    return {"first_step_s": first_step_s, "saved_for_backward_bytes": saved, "census_error": census_error,
            "us_per_step": statistics.median(per_step_us),
            "steps_per_s": statistics.median(steps_per_s), "steps_per_s_p20": quantile(0.2),
            "steps_per_s_p80": quantile(0.8),
            "final_loss": float(loss.detach().float().item()),
            "steps_run": warmup + rounds * steps_per_round,
            "_timed_s": time.perf_counter() - entered}  # lets the caller add its setup time


def matmul_peaks(device: torch.device, n: int) -> dict:
    """Dense matmul TFLOP/s through torch.mm (cuBLAS) per precision, same run, random data."""
    peaks = {}
    for precision in PRECISIONS:
        peaks[precision] = common.dense_peak_tflops(precision, device, n)
        log(f"peak {precision}: {peaks[precision]:.0f} TFLOP/s (torch.mm {n}^3)")
    return peaks


@contextlib.contextmanager
def fusedgrad_settings(precision: str, backend: str):
    """fusedgrad's backend, and its fp32 precision set to the case's product, the one torch's
    setting gives eager (`common.set_precision`), whatever FUSEDGRAD_FP32_PRECISION says."""
    with fusedgrad.backend(backend), fusedgrad.fp32_precision(common.kernel_fp32_precision(precision)):
        yield


def measure(case: Case, variant: str, device: torch.device, lr: float, schedule: tuple[int, int, int]):
    """Build and time one variant on fresh data; returns (results, notes, final w1, final w2)."""
    x, y, w1, w2 = make_data(case, device, common.set_precision(case.precision))
    w1.requires_grad_()
    w2.requires_grad_()
    cuda = device.type == "cuda"
    if cuda:  # peak memory above weights and data, over the whole run: a graph's pool counts too
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    recorder = SkipRecorder()
    logging.getLogger("torch").addHandler(recorder)
    backend = "triton" if variant == "fusedgrad-autograd-triton" else fusedgrad.current_backend()
    notes = []
    try:
        with fusedgrad_settings(case.precision, backend):
            if variant.startswith(("fusedgrad-autograd", "fusedgrad-compile")):
                notes.append(f"backend {describe_backend('autograd', x)}")
            torch._dynamo.reset()
            start = time.perf_counter()
            step, final_w1, final_w2 = build(variant, x, y, w1, w2, learning_rate(case, lr))
            tape = (x, y, w1, w2) if not variant.startswith("fusedgrad-step") else ()  # the step has no tape
            results = time_variant(step, device, *schedule, tape_of=tape)
            results["first_step_s"] += time.perf_counter() - start - results.pop("_timed_s")
            results["peak_memory_above_data_bytes"] = (torch.cuda.max_memory_allocated(device) - base) if cuda else None
    finally:
        logging.getLogger("torch").removeHandler(recorder)
    return results, notes + sorted(set(recorder.messages)), final_w1.detach(), final_w2.detach()


def measure_in_child(case: Case, variant: str, device: torch.device, lr: float, schedule, folder: pathlib.Path):
    """`measure` in a fresh process, so that a crash inside torch.compile or its CUDA graphs
    (seen: a segmentation fault after "skipping cudagraphs due to mutated inputs") becomes a
    row that says so instead of the end of the benchmark."""
    spec = folder / f"{variant}.json"
    spec.write_text(json.dumps({"case": dataclasses.asdict(case), "variant": variant, "device": str(device),
                                "lr": lr, "schedule": list(schedule)}))
    child = subprocess.run([sys.executable, __file__, "--child", str(spec)], capture_output=True, text=True)
    sys.stderr.write(child.stderr[-2000:])
    if child.returncode != 0:
        how = f"signal {-child.returncode}" if child.returncode < 0 else f"exit status {child.returncode}"
        lines = [line for line in child.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"the process crashed ({how})" + (f"; last words: {lines[-1][:160]}" if lines else ""))
    saved = torch.load(spec.with_suffix(".pt"))
    notes = sorted(set(saved["notes"]) | {line.split("] ", 1)[-1][:200] for line in child.stderr.splitlines()
                                          if "skipping cudagraphs" in line})
    return saved["results"], notes, saved["w1"].to(device), saved["w2"].to(device)


def child_main(spec_path: str) -> int:
    spec = json.loads(pathlib.Path(spec_path).read_text())
    results, notes, w1, w2 = measure(Case(**spec["case"]), spec["variant"], torch.device(spec["device"]),
                                     spec["lr"], tuple(spec["schedule"]))
    torch.save({"results": results, "notes": notes, "w1": w1.cpu(), "w2": w2.cpu()},
               pathlib.Path(spec_path).with_suffix(".pt"))
    return 0


def run_case(case: Case, variants: list[str], device: torch.device, args, peaks: dict) -> list[dict]:
    big = case.flops_per_step > 1e10
    schedule = (3, args.rounds, 2) if big else (10, args.rounds, args.steps_per_round)
    rows, eager = [], None
    for variant in variants:
        row = {"size": case.size, "precision": case.precision, "variant": variant, "notes": []}
        rows.append(row)
        if variant == "compile-max-autotune" and args.quick:
            row["status"] = "skipped (--quick: autotuning takes minutes)"
            continue
        if variant.endswith("compile-reduce-overhead") and args.quick and case.flops_per_step > 1e10:
            row["status"] = "skipped (--quick: GEMM-bound size, CUDA graphs cannot help)"
            continue
        if is_compiled(variant) and device.type == "cpu" and not args.cpu_compile:
            row["status"] = "skipped on CPU (pass --cpu-compile)"
            continue
        if variant in ("fusedgrad-step-graph", "compile-reduce-overhead", "fusedgrad-compile-reduce-overhead",
                       "fusedgrad-autograd-triton") and device.type != "cuda":
            row["status"] = "needs CUDA"
            continue
        if variant == "fusedgrad-autograd-triton":
            probe = torch.empty(0, device=device, dtype=common.set_precision(case.precision))
            with fusedgrad_settings(case.precision, fusedgrad.current_backend()):
                on_triton = dispatch.resolve(probe, gemm=True) == "triton"
            if on_triton:
                row["status"] = "same as fusedgrad-autograd here (its GEMMs run on Triton)"
                continue
        log(f"{case.size} {case.precision} {variant} ...")
        try:
            if is_compiled(variant):
                with tempfile.TemporaryDirectory() as folder:
                    results, notes, final_w1, final_w2 = measure_in_child(
                        case, variant, device, args.lr, schedule, pathlib.Path(folder))
            else:
                results, notes, final_w1, final_w2 = measure(case, variant, device, args.lr, schedule)
        except Exception as error:  # a variant that cannot run is reported, not dropped
            row["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            log(row["status"])
            continue
        row.update(results, status="ok")
        row["notes"] += notes + ([results["census_error"]] if results["census_error"] else [])
        if variant == "eager":
            eager = (row, final_w1.detach().clone(), final_w2.detach().clone())
        if eager is not None:
            eager_row, eager_w1, eager_w2 = eager
            row["max_rel_diff_weights"] = max(common.relative_error(final_w1, eager_w1),
                                              common.relative_error(final_w2, eager_w2))
            row["rel_diff_loss"] = abs(row["final_loss"] - eager_row["final_loss"]) / max(abs(eager_row["final_loss"]), 1e-30)
            row["correct"] = row["max_rel_diff_weights"] <= TOLERANCE[case.precision]
            row["speedup_vs_eager"] = row["steps_per_s"] / eager_row["steps_per_s"] if row["correct"] else None
            if row["saved_for_backward_bytes"] is not None and eager_row["saved_for_backward_bytes"]:
                row["saved_vs_eager"] = row["saved_for_backward_bytes"] / eager_row["saved_for_backward_bytes"]
        row["tflops"] = case.flops_per_step * row["steps_per_s"] / 1e12
        if case.precision in peaks:
            row["percent_of_peak"] = 100 * row["tflops"] / peaks[case.precision]
        log(f"{case.size} {case.precision} {variant}: {row['steps_per_s']:.0f} steps/s")
    return rows


def saved_cell(row: dict) -> str:
    """Saved activation MiB, with the ratio to eager's where both are known."""
    saved = row.get("saved_for_backward_bytes")
    if saved is None:
        return ""
    ratio = row.get("saved_vs_eager")
    return f"{saved / 2**20:.3g}" + (f" ({ratio:.2f}x)" if ratio is not None else "")


def markdown(rows: list[dict]) -> str:
    lines = ["| size | prec | variant | steps/s (p20-p80) | µs/step | vs eager | TFLOP/s | % peak | mem MiB | saved for bwd MiB | 1st step s | rel diff w / loss | status |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['size']} | {r['precision']} | {r['variant']} | | | | | | | | | | {r['status']} |")
            continue
        speed = f"{r['speedup_vs_eager']:.2f}x" if r.get("speedup_vs_eager") else ("WRONG" if r.get("correct") is False else "")
        mem = r["peak_memory_above_data_bytes"]
        percent = f"{r['percent_of_peak']:.1f}" if "percent_of_peak" in r else ""
        status = "ok" if r.get("correct", True) else "WRONG: differs from eager"
        if r["notes"]:
            status += "; " + " / ".join(r["notes"])
        lines.append(
            f"| {r['size']} | {r['precision']} | {r['variant']} | {r['steps_per_s']:.4g} "
            f"({r['steps_per_s_p20']:.4g}-{r['steps_per_s_p80']:.4g}) | {r['us_per_step']:.1f} | {speed} | "
            f"{r['tflops']:.3g} | {percent} | "
            f"{'' if mem is None else f'{mem / 2**20:.1f}'} | {saved_cell(r)} | {r['first_step_s']:.2f} | "
            f"{r.get('max_rel_diff_weights', 0):.1e} / {r.get('rel_diff_loss', 0):.1e} | {status} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: pathlib.Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install '.[bench]'): no plot")
        return False
    cases = sorted({(r["size"], r["precision"]) for r in rows}, key=lambda c: (c[0], c[1]))
    variants = [v for v in VARIANTS if any(r["variant"] == v and r.get("speedup_vs_eager") for r in rows)]
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        values = [next((r.get("speedup_vs_eager") or 0 for r in rows if (r["size"], r["precision"]) == c
                        and r["variant"] == variant), 0) for c in cases]
        axis.bar([j + i * width for j in range(len(cases))], values, width, label=variant)
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], [f"{s}\n{p}" for s, p in cases], fontsize=7)
    axis.set_ylabel("speedup over eager (steps/s)")
    axis.set_yscale("log")
    axis.axhline(1, color="gray", linewidth=0.8)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def parse_size(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(p) for p in text.split("x"))
    if len(parts) != 4 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"size is NxD_INxHxD_OUT, got {text!r}")
    return parts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    if argv[:1] == ["--mlp"]:  # the MLP rows: bench/mlp.py and its flags
        import mlp
        return mlp.main(argv[1:])
    if argv[:1] == ["--distributed"]:  # under torchrun: bench/distributed.py and its flags
        import distributed
        return distributed.main(argv[1:])
    parser = common.parser(__doc__, None)
    parser.add_argument("--quick", action="store_true", help="tutorial ieee and 4096^4 bf16 only")
    parser.add_argument("--sizes", type=parse_size, nargs="+", help="NxD_INxHxD_OUT, e.g. 64x1000x100x10")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps-per-round", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-6, help="at the tutorial's size; scaled down beyond")
    parser.add_argument("--device", type=torch.device, default=common.default_device())
    parser.add_argument("--cpu-compile", action="store_true", help="also time torch.compile on CPU")
    parser.add_argument("--plot", type=pathlib.Path, help="default: the JSON path with .png")
    args = parser.parse_args(argv)
    device = args.device
    json_path = args.json or common.OUT / ("bench_quick.json" if args.quick else "bench.json")

    if args.sizes or args.precisions:
        sizes = args.sizes or [TUTORIAL]
        cases = [Case(*s, p) for s in sizes for p in (args.precisions or PRECISIONS)]
    elif args.quick:
        cases = [Case(*TUTORIAL, "ieee"), Case(4096, 4096, 4096, 4096, "bf16")]
    else:
        cases = [Case(*s, p) for s in (TUTORIAL, (4096,) * 4, (16384, 8192, 8192, 8192)) for p in PRECISIONS]
    if device.type == "cpu":
        log("GPU numbers need CUDA: on CPU this compares eager with fusedgrad's ATen paths")
        cases = [dataclasses.replace(c, precision="ieee") for c in cases if c.precision != "tf32"
                 and (args.sizes or c.flops_per_step < 1e10)]  # large sizes take minutes a step
        cases = list(dict.fromkeys(cases))

    peaks = matmul_peaks(device, 4096 if args.quick else 8192) if device.type == "cuda" else {}
    rows = []
    for case in cases:
        rows += run_case(case, args.variants, device, args, peaks)
        table = markdown(rows)  # written after every case, so an interrupted run keeps what it measured
        common.write_result(json_path, {"rows": rows, "matmul_peak_tflops": peaks, "tolerance_rel_weights": TOLERANCE,
                                        "table": table, "complete": case == cases[-1]}, device)
    plotted = plot(rows, args.plot or json_path.with_suffix(".png"))
    print(table)
    if device.type == "cpu":
        print("\nGPU numbers need CUDA; these are CPU timings of the ATen paths.")
    log(f"wrote {json_path}" + (" and its plot" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
