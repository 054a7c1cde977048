#!/usr/bin/env bash
# One call on a lent GPU machine: install this checkout, run every test tier (tier 2 compiled,
# tier 3 included), the trainer in its main modes, the per-step launch count, and
# `bench/run.py --quick`. Logs and JSON go to the folder given ($1), at most 8 files.
# Usage: GIT_COMMIT=$(git rev-parse HEAD) bash bench/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exec > >(tee "$out/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 150 python3 -m pytest -q -rs $parallel 2>&1 | tee "$out/pytest.log" | tail -15
for variant in "step_graph:" "autograd:--mode autograd" "reference:--reference"; do
  name=${variant%%:*}
  python3 -m fusedgrad ${variant#*:} --json "$out/train_$name.json" | tail -2
done
python3 bench/launch_count.py --json "$out/launch_count.json"
timeout 170 python3 bench/run.py --quick --json "$out/bench_quick.json" --plot "$out/bench_quick.png"
