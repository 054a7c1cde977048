"""Markdown tables for the README from a committed results folder (never typed by hand).

    python bench/summarize.py bench/results/2026-11-26-h200
"""

from __future__ import annotations

import json
import pathlib
import sys


def load(folder: pathlib.Path, name: str) -> dict | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def trainer_table(folder: pathlib.Path) -> list[str]:
    lines = ["| trainer (`python -m fusedgrad ...`) | backend | steps/s | loss at step 500 |",
             "| --- | --- | ---: | ---: |"]
    for flag, name in (("--backend triton", "train_triton.json"), ("--backend aten", "train_aten.json"),
                       ("--reference", "train_reference.json")):
        run = load(folder, name)
        if run:
            lines.append(f"| `{flag}` | {run['backend']} | {run['steps_per_second']:.0f} | {run['losses']['500']:.3g} |")
    return lines


def tiles_table(folder: pathlib.Path) -> list[str]:
    run = load(folder, "tiles.json")
    if not run:
        return []
    lines = ["| tutorial GEMM (fp32, IEEE) | M x N x K | fusedgrad µs | first-version tiles µs | cuBLAS µs |",
             "| --- | --- | ---: | ---: | ---: |"]
    for row in run["rows"]:
        lines.append(f"| `{row['gemm']}` | {row['M']} x {row['N']} x {row['K']} | {row['heuristic_us']:.1f} | "
                     f"{row['fixed_tiles_us']:.1f} | {row['cublas_us']:.1f} |")
    return lines


def main() -> int:
    folder = pathlib.Path(sys.argv[1])
    source = load(folder, "train_triton.json") or load(folder, "tiles.json")
    env = source["environment"]
    print(f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
          f"driver {env['cuda_driver']}, {env['date'][:10]} (`{folder}`):\n")
    print("\n".join(trainer_table(folder)))
    print()
    print("\n".join(tiles_table(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
