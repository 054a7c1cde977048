#!/usr/bin/env bash
# One call on a lent GPU machine: install this checkout, run every test tier (tier 2 compiled,
# tier 3 included), and the trainer three ways; logs and JSON go to the folder given ($1).
# Usage: GIT_COMMIT=$(git rev-parse HEAD) bash bench/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$out/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
python3 -m pytest -q -rs --junitxml="$out/junit.xml" 2>&1 | tee "$out/pytest.log" | tail -25
for variant in "triton:--backend triton" "aten:--backend aten" "reference:--reference"; do
  name=${variant%%:*}
  python3 -m fusedgrad ${variant#*:} --json "$out/train_$name.json" 2>&1 | tee -a "$out/train.log"
done
python3 bench/overhead.py --json "$out/overhead.json" 2>&1 | tail -40
