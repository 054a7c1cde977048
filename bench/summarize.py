"""Markdown tables for the README from committed results folders (never typed by hand).

    python bench/summarize.py bench/results/2026-11-26-h200-fused-step bench/results/2026-11-26-h200-core

Each folder contributes the tables its files allow: the trainer runs (train_*.json), the
launches per step (launch_count.json), `bench/run.py` (bench_quick.json or any *-quick.json),
the per-GEMM timings (tiles.json) and `bench/kernels.py` (kernels.json).
"""

from __future__ import annotations

import json
import pathlib
import sys

TRAINER_RUNS = (("train_step_graph.json", ""), ("train_triton.json", "--backend triton"),
                ("train_autograd.json", "--mode autograd"),
                ("train_autograd_triton.json", "--mode autograd --backend triton"), ("train_aten.json", "--backend aten"),
                ("train_reference.json", "--reference"))


def trainer_table(folder: pathlib.Path) -> list[str]:
    runs = [(flag, json.loads((folder / name).read_text())) for name, flag in TRAINER_RUNS if (folder / name).exists()]
    if (folder / "train.json").exists():  # gpu_check.sh's merged file: {"step_graph": run, ...}
        merged = json.loads((folder / "train.json").read_text())
        runs += [(flag, merged[name.removeprefix("train_").removesuffix(".json")]) for name, flag in TRAINER_RUNS
                 if name.removeprefix("train_").removesuffix(".json") in merged]
    if not runs:
        return []
    lines = ["| `python -m fusedgrad` | backend | mode | steps/s | 500 steps, s | loss at step 500 |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for flag, run in runs:
        lines.append(f"| `{flag or '(defaults)'}` | {run['backend']} | {run.get('mode', '-')} | "
                     f"{run['steps_per_second']:.0f} | {run['seconds']:.3f} | {run['losses']['500']:.3g} |")
    return lines


def launch_table(folder: pathlib.Path) -> list[str]:
    path = folder / "launch_count.json"
    if not path.exists():
        return []
    lines = ["| mode (one tutorial step) | GPU kernels | memcpy/memset | host launch calls |",
             "| --- | ---: | ---: | ---: |"]
    for mode, row in json.loads(path.read_text())["per_step"].items():
        names = row["gpu_work_names"]
        copies = sum(n for name, n in names.items() if name.startswith(("Memcpy", "Memset")))
        annotations = sum(n for name, n in names.items() if "#" in name)  # profiler ranges, not work
        kernels = row["gpu_work"] - copies - annotations
        lines.append(f"| {mode} | {kernels} | {copies} | {row['host_launch_calls']} |")
    return lines


def bench_table(folder: pathlib.Path) -> list[str]:
    paths = sorted(folder.glob("bench_quick.json")) + sorted(folder.glob("*-quick.json"))
    if not paths:
        return []
    record = json.loads(paths[0].read_text())
    peaks = ", ".join(f"{p} {v:.0f}" for p, v in record["matmul_peak_tflops"].items())
    return [f"`bench/run.py --quick` (dense matmul peak measured in the same run, TFLOP/s: {peaks}):", "",
            record["table"]]


def tiles_table(folder: pathlib.Path) -> list[str]:
    path = folder / "tiles.json"
    if not path.exists():
        return []
    lines = ["| tutorial GEMM (fp32, IEEE) | M x N x K | fusedgrad µs | first-version tiles µs | cuBLAS µs |",
             "| --- | --- | ---: | ---: | ---: |"]
    for row in json.loads(path.read_text())["rows"]:
        lines.append(f"| `{row['gemm']}` | {row['M']} x {row['N']} x {row['K']} | {row['heuristic_us']:.1f} | "
                     f"{row['fixed_tiles_us']:.1f} | {row['cublas_us']:.1f} |")
    return lines


def kernels_table(folder: pathlib.Path) -> list[str]:
    path = folder / "kernels.json"
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    return [f"`bench/kernels.py` (GPU time from CUDA-graph replay; % of the torch.mm peak at "
            f"{record['peak_size']}^3 measured in the same run):", "", record["table"], "",
            record["fp32_error_table"]]


def environment(folder: pathlib.Path) -> dict | None:
    for path in sorted(folder.glob("*.json")):
        env = json.loads(path.read_text()).get("environment")
        if env and env.get("gpu"):
            return env
    return None


def main() -> int:
    for argument in sys.argv[1:]:
        folder = pathlib.Path(argument)
        env = environment(folder)
        if env:
            print(f"**{env['gpu']}**, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
                  f"driver {env['cuda_driver']}, {env['date'][:10]}, commit {str(env['git_commit'])[:10]} "
                  f"(`{folder}`):\n")
        for table in (trainer_table, launch_table, bench_table, tiles_table, kernels_table):
            lines = table(folder)
            if lines:
                print("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
