"""Markdown tables from committed results folders (never typed by hand).

    python bench/summarize.py bench/results/2026-11-26-h200-fused-step bench/results/2026-11-26-h200-core
    python bench/summarize.py --readme README.md bench/results/2026-11-26-h200-fused-step

Each folder contributes the tables its files allow: the trainer runs (train_*.json), the
launches per step (launch_count.json), `bench/run.py` (bench_quick.json or any *-quick.json),
the per-GEMM timings (tiles.json), `bench/kernels.py` (kernels.json) and `bench/host_cost.py`
(host_cost.json).

With --readme, the file's block between README_BEGIN and README_END is replaced by
`readme_block`: one compact `bench/run.py --quick` table per folder, under a line naming the
GPU, versions, date and commit of the run. tests/test_readme.py checks that the committed
README holds exactly that block.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

TRAINER_RUNS = (("train_step_graph.json", ""), ("train_triton.json", "--backend triton"),
                ("train_autograd.json", "--mode autograd"),
                ("train_autograd_triton.json", "--mode autograd --backend triton"), ("train_aten.json", "--backend aten"),
                ("train_reference.json", "--reference"))
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


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


def quick_record(folder: pathlib.Path) -> dict | None:
    """The folder's `bench/run.py` record: bench_quick.json, else the first *-quick.json."""
    paths = sorted(folder.glob("bench_quick.json")) + sorted(folder.glob("*-quick.json"))
    return json.loads(paths[0].read_text()) if paths else None


def bench_table(folder: pathlib.Path) -> list[str]:
    record = quick_record(folder)
    if record is None:
        return []
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


def environment_line(env: dict) -> str:
    """GPU, versions, date and commit of a run, as far as its environment record has them."""
    machine = env.get("gpu") or ("CPU" if env["device"] == "cpu" else env["device"])
    parts = [f"**{machine}**", f"torch {env['torch']}", f"triton {env['triton']}"]
    parts += [f"{label} {env[name]}" for name, label in (("cuda", "CUDA"), ("cuda_driver", "driver")) if env.get(name)]
    parts += [env["date"][:10], f"commit {str(env.get('git_commit'))[:10]}"]
    return ", ".join(parts)


def quick_rows(record: dict) -> list[str]:
    """The measured rows of a `bench/run.py` record: size, precision, variant, steps/s, µs per
    step, and the speedup over eager (or the status where the row has none)."""
    lines = ["| N x D_in x H x D_out | precision | variant | steps/s | µs/step | vs eager |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for row in record["rows"]:
        if row.get("steps_per_s") is None:
            continue  # skipped or failed: the full table (`bench_table`) says why
        speedup = row.get("speedup_vs_eager")
        versus = f"{speedup:.2f}x" if speedup is not None else row["status"]
        lines.append(f"| {row['size']} | {row['precision']} | {row['variant']} | {row['steps_per_s']:,.0f} | "
                     f"{row['us_per_step']:.1f} | {versus} |")
    return lines


def host_cost_record(folder: pathlib.Path) -> dict | None:
    path = folder / "host_cost.json"
    return json.loads(path.read_text()) if path.exists() else None


def host_cost_rows(record: dict) -> list[str]:
    """`bench/host_cost.py`'s host µs per step (and per GEMM launch, the five's mean) against
    the eager tutorial step's."""
    eager = record["eager_step_us"]
    gemms = [row["us"] for row in record["gemm_launch_us"]]
    lines = ["| host time, stubbed driver | µs | vs eager step |", "| --- | ---: | ---: |"]
    rows = [("eager tutorial step (tiny tensors)", eager), ("fusedgrad autograd step", record["autograd_step_us"]),
            ("fusedgrad fused step", record["fused_step_us"])]
    if "floor_step_us" in record:  # recorded since the benchmark measured it
        rows.append(("autograd step's skeleton: its Functions only allocate", record["floor_step_us"]))
    for name, us in rows:
        lines.append(f"| {name} | {us:.1f} | {us / eager:.2f}x |")
    return lines + [f"| one GEMM launch (mean of the step's five) | {sum(gemms) / len(gemms):.1f} | |"]


def host_cost_table(folder: pathlib.Path) -> list[str]:
    record = host_cost_record(folder)
    return [] if record is None else host_cost_rows(record)


def readme_block(folders: list[pathlib.Path], base: pathlib.Path) -> list[str]:
    """The README's results block for `folders` (paths relative to `base`, the README's folder),
    markers included: each folder's `bench/run.py --quick` table, or its `bench/host_cost.py` one."""
    names = [folder.as_posix() for folder in folders]
    lines = [README_BEGIN,
             f"<!-- generated by: python bench/summarize.py --readme README.md {' '.join(names)} -->"]
    for folder, name in zip(folders, names):
        record = quick_record(base / folder)
        if record is not None:
            lines += ["", f"{environment_line(record['environment'])}; `bench/run.py --quick`, "
                          f"[`{name}`]({name}):", ""] + quick_rows(record)
            continue
        record = host_cost_record(base / folder)
        if record is None:
            raise SystemExit(f"{name}: no bench_quick.json, *-quick.json or host_cost.json to summarize")
        lines += ["", f"{environment_line(record['environment'])}; `bench/host_cost.py` (no GPU: Triton's launch "
                      f"path on a stubbed driver), [`{name}`]({name}):", ""] + host_cost_rows(record)
    return lines + [README_END]


def replace_block(text: str, block: list[str]) -> str:
    """`text` with its README_BEGIN ... README_END block (markers included) replaced by `block`."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"no {README_BEGIN} ... {README_END} block to replace")
    return text[:begin] + "\n".join(block) + text[end + len(README_END):]


def print_tables(folder: pathlib.Path) -> None:
    env = environment(folder)
    if env:
        print(f"{environment_line(env)} (`{folder}`):\n")
    for table in (trainer_table, launch_table, bench_table, tiles_table, kernels_table, host_cost_table):
        lines = table(folder)
        if lines:
            print("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=pathlib.Path, metavar="FOLDER")
    parser.add_argument("--readme", type=pathlib.Path, metavar="PATH",
                        help="rewrite this file's results block from the folders instead of printing tables")
    args = parser.parse_args(argv)
    if args.readme is None:
        for folder in args.folders:
            print_tables(folder)
        return 0
    base = args.readme.resolve().parent
    folders = [pathlib.Path(os.path.relpath(folder.resolve(), base)) for folder in args.folders]
    args.readme.write_text(replace_block(args.readme.read_text(), readme_block(folders, base)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
