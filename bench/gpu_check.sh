#!/usr/bin/env bash
# One call on a lent GPU machine: install this checkout, then run the stages named in $STAGES
# (default: all, in this order), writing logs and JSON to the folder given ($1), at most 8 files:
#   tests    every test tier, compiled (tier 3 included), files in parallel  pytest.log
#   train    the trainer: fused step + graph, autograd ops (auto, triton), reference  train.json
#   launch   kernels and host launch calls per step, by mode             launch_count.json
#   kernels  bench/kernels.py --quick, autotuned in bf16                  kernels.json
#   bench    bench/run.py --quick                                         bench_quick.json/.png
#   mlp      bench/mlp.py: width 1024, 4 layers, bf16 and tf32           mlp.json
#   distributed  one NCCL rank: tests/distributed_checks.py 1 nccl (graph capture included),
#            then torchrun of bench/distributed.py on every GPU             (its JSON in the log)
# The file names are those bench/summarize.py reads. All stages together exceed one 10-minute
# call (kernels and bench compile and time the most): split them, e.g. STAGES="tests train
# launch" then STAGES="kernels" on the same warm machine, and "bench mlp" if device time remains.
# GIT_COMMIT names the commit in every JSON's environment (bench/common.py) where the copy of
# the checkout has no .git to ask.
# Usage: GIT_COMMIT=$(git rev-parse HEAD) STAGES="tests kernels" bash bench/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR}
stages=" ${STAGES:-tests train launch kernels bench mlp distributed} "
exit_status=0  # 1 when a test file fails; the other stages report in their own output
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$out/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
if [[ $stages == *" tests "* ]]; then
  # One pytest process per test file, all at once: Triton compiles on the CPU, one kernel at a
  # time per process, so 16 cores finish the suite in about the time of its slowest file.
  logs=$(mktemp -d) pids=() names=()
  for file in tests/test_*.py; do
    names+=("$(basename "$file" .py)")
    timeout 360 python3 -m pytest -q -rs -p no:cacheprovider "$file" > "$logs/${names[-1]}.log" 2>&1 &
    pids+=($!)
  done
  # Each pid on its own: a bare `wait` would also wait for the `tee` above, which never ends.
  # Exit status 124: that file ran out of time.
  : > "$out/pytest.log"
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    status=$?
    (( status == 0 )) || exit_status=1
    { echo "=== ${names[$i]} (exit status $status)"; cat "$logs/${names[$i]}.log"; } >> "$out/pytest.log"
    printf '%-22s exit %-4s %s\n' "${names[$i]}" "$status" "$(tail -n 1 "$logs/${names[$i]}.log")"
  done
  rm -rf "$logs"
fi
if [[ $stages == *" train "* ]]; then
  for variant in "step_graph:" "autograd:--mode autograd" "autograd_triton:--mode autograd --backend triton" \
                 "reference:--reference"; do
    name=${variant%%:*}
    python3 -m fusedgrad ${variant#*:} --json "$out/train_$name.tmp" | tail -2
  done
  # One file, {"step_graph": run, ...}, with the full environment (commit, driver) that the
  # trainer's own small record leaves out.
  python3 - "$out" <<'PY'
import json, pathlib, sys
sys.path.insert(0, "bench")
import common
out = pathlib.Path(sys.argv[1])
runs = {p.stem.removeprefix("train_"): json.loads(p.read_text()) for p in sorted(out.glob("train_*.tmp"))}
runs["environment"] = common.environment(common.default_device())
(out / "train.json").write_text(json.dumps(runs, indent=1))
for p in out.glob("train_*.tmp"):
    p.unlink()
PY
fi
if [[ $stages == *" launch "* ]]; then
  python3 bench/launch_count.py --json "$out/launch_count.json"
fi
if [[ $stages == *" kernels "* ]]; then
  timeout 540 python3 bench/kernels.py --quick --autotune bf16 --json "$out/kernels.json" | tail -40
fi
if [[ $stages == *" bench "* ]]; then
  # two compiled rows per variant family and size, each compiled in a child process: room for them
  timeout 240 python3 bench/run.py --quick --json "$out/bench_quick.json" --plot "$out/bench_quick.png"
fi
if [[ $stages == *" mlp "* ]]; then
  timeout 300 python3 bench/mlp.py --json "$out/mlp.json"
fi
if [[ $stages == *" distributed "* ]]; then
  timeout 240 python3 tests/distributed_checks.py 1 nccl
  json=$(mktemp)
  timeout 240 python3 -m torch.distributed.run --nproc-per-node "$(nvidia-smi -L | wc -l)" --master-addr 127.0.0.1 \
    --master-port 29517 bench/distributed.py --json "$json" && cat "$json"
fi
exit $exit_status
