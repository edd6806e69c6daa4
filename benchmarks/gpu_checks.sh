#!/usr/bin/env bash
# The GPU figures the open work still needs, one stage per call, each under ~9 minutes, so that a
# session lent a GPU for a short while spends it on measuring and not on setting up.
#
#   bash benchmarks/gpu_checks.sh STAGE [OUT]
#
# STAGE (in priority order):
#   grid      the paper-multilevel grid, one run at a time vs stacked (train-head --runs-at-once)
#   finetune  joint fine-tuning throughput: wav2vec2-large + BERT-base sized, bf16, micro-batches
#             capped at 480 padded seconds (--micro-batch-seconds), vs a plain loop at 8; profiled
#   extract   extract-embeddings on 30 min of audio vs the plain loop, and the store's commits vs
#             the disk's plain write (serial, pipelined, and the code before pipelining)
#   grid-before, grid-after  four grid rows, one process each: the code before fused stacked
#             attention and the sync-free padding (aa2d0bf, from .baseline/emofuse-aa2d0bf.tar:
#             carry `.baseline`), then today's, on the same store (one device call each)
#   grid-bf16 the same four rows with train-head --bf16 (bfloat16 autocast for the heads)
#   grid-fast the same four rows with --bf16 --group-by-length (batches of similar lengths)
#   grid-runs25  the launch-bound rows (linear, late, concatenation) with 25 runs to stack, as in
#             the real grid, one at a time vs stacked
#   profile   why coattention lost under --bf16 on 2026-11-25 (0.76x) and where a launch-bound row's
#             step goes: Coattention F+P and Late F+P+S+W one run at a time, float32 and --bf16,
#             under torch.profiler (grid.py --profile; tables in benchmarks/results/grid-profile/)
#   sync      where training makes the host wait for the GPU (benchmarks/sync_check.py)
#   finetune-compile  the finetune stage's run with every transformer block compiled (--compile)
#   breakdown extraction stage by stage on an hour of audio, next to the disk's ceiling
#   writer-sim  the store writer inside a simulated GPU extraction on this host's cores and disk
#             (extract_sim.py): today's writer vs the one that holds the GIL through its C calls
#             (a17ffb2, reverted after a 2-core VM showed no gain: .baseline/emofuse-a17ffb2.tar)
#   all       grid, finetune and extract, one after the other (needs ~25 minutes)
# OUT (default $OUT, else ./gpu-out): where each stage's log and a tar of its result files go
# (benchmarks/results/*.json and the rows it appended to BENCHMARKS.md).
#
# Set up once per machine: Python packages the GPU image lacks are installed from .whl/ (wheels
# for the image's Python, fetched beforehand with `pip download --python-version 3.12
# --only-binary=:all: --no-deps -d .whl soundfile soxr cffi pycparser praatio`; carry `.whl`),
# and emofuse is imported from this checkout. For `extract`, carry `.baseline/` too, holding the
# store code before the two-stage commits: `mkdir -p .baseline && git archive 7127853 emofuse >
# .baseline/emofuse-before-pipelining.tar` (7127853: the last commit before them); for
# `writer-sim`, `git archive a17ffb2 emofuse > .baseline/emofuse-a17ffb2.tar`.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_checks.sh STAGE [OUT] (see the comment at the top for the stages)}
out=${2:-${OUT:-./gpu-out}}
case $stage in
  grid|profile|grid-before|grid-after|grid-bf16|grid-fast|grid-runs25|sync|finetune|finetune-compile) ;;
  extract|breakdown|writer-sim|all) ;;
  *) echo "unknown stage $stage: expected grid, profile, grid-before, grid-after, grid-bf16, grid-fast," \
       "grid-runs25, sync, finetune, finetune-compile, extract, breakdown, writer-sim or all" >&2
     exit 2 ;; esac
mkdir -p "$out"

if [ -d .whl ] && ! python3 -c "import soundfile, soxr, praatio" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 - <<'PY'
import torch, emofuse
assert torch.cuda.is_available(), "no CUDA device here"
print(f"emofuse {emofuse.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
PY

failed=0
step() {  # step LOG SECONDS COMMAND...: a benchmark that fails or runs out of time is logged and
          # counted, and the stage goes on to its next benchmark and keeps what was written
  local log=$1 limit=$2 rc
  shift 2
  set +e
  timeout "$limit" "$@" 2>&1 | tee "$out/$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "gpu_checks: '$*' ended with status $rc$([ "$rc" -eq 124 ] && echo " (out of its ${limit} s)")" | tee -a "$out/$log"
    failed=$((failed + 1))
  fi
}

keep() {  # keep the stage's results (partial ones too): its logs are already in $out
  local name=$1
  tar -cf "$out/$name-results.tar" BENCHMARKS.md benchmarks/results
}

run_grid() {
  step grid.log 560 python3 benchmarks/grid.py --device cuda --scale 0.05 --epochs 2
  keep grid
}

run_finetune() {
  # the 2026-11-24 profile: the device busy 7 % of a step, the host launching ~100k operators per
  # global batch; fewer, larger passes (a padded-seconds cap instead of 8 utterances) against the
  # plain loop's 8, profiled
  step finetune.log 400 python3 benchmarks/finetune.py --device cuda --size large --bf16 --utterances 256 \
    --micro-batch 32 --micro-batch-seconds 480 --plain-micro-batch 8 --pos-conv matmul --profile
  keep finetune
}

run_finetune_compile() {
  # the same with every transformer block compiled (torch.compile, finetune --compile); a step of
  # a larger length compiles again in the warm-up only when dynamo sees a new shape class
  step finetune-compile.log 560 python3 benchmarks/finetune.py --device cuda --size large --bf16 --utterances 256 \
    --micro-batch 32 --micro-batch-seconds 480 --plain-micro-batch 8 --pos-conv matmul --compile
  cp benchmarks/results/finetune-*compile*.json "$out/" 2>/dev/null || true
}

grid_store() {  # the synthetic store (0.05 x IEMOCAP) the grid stages share, built once per machine
  python3 -c "from emofuse.testing.synthetic import make_synthetic_store as m; import os
if not os.path.exists('/tmp/g.h5'):
    m('/tmp/g.h5', per_class=14, layers=13, dim=768, planted_layer=7, strength=0.3, seed=0)"
}

ROWS_AB=("Frame, linear" "Frame, transformer" "Coattention F+P" "Late F+P+S+W")
grid_rows() {  # grid_rows TREE NAME [grid.py options]: each row in its own process (a row that fails,
               # e.g. out of memory, leaves the others measured), on one shared store built beforehand
  local tree=$1 name=$2 i=0
  shift 2
  grid_store
  for row in "${ROWS_AB[@]}"; do
    i=$((i + 1))
    step "grid-$name-$i.log" 130 python3 "$tree/benchmarks/grid.py" --device cuda --scale 0.05 --epochs 2 \
      --store /tmp/g.h5 --rows "$row" "$@"
  done
  grep -h "stacked is\|s/run-epoch  " "$out"/grid-"$name"-*.log > "$out/grid-$name.txt" || true
}
run_grid_before() {  # the code before this session's GPU changes (aa2d0bf)
  local old=/tmp/emofuse-before
  rm -rf "$old" && mkdir -p "$old" && tar -xf .baseline/emofuse-aa2d0bf.tar -C "$old"
  grid_rows "$old" before
}
run_grid_after() {
  grid_rows "$PWD" after
}
run_grid_bf16() {  # the same rows with train-head --bf16 (bfloat16 autocast), today's code
  grid_rows "$PWD" bf16 --bf16
}
run_grid_fast() {  # and with both levers the attention rows have: --bf16 and --group-by-length
  grid_rows "$PWD" fast --bf16 --group-by-length
}
run_grid_runs25() {  # the launch-bound rows with a real row's 25 runs (5 seeds x 5 folds) to stack,
                     # not 5: what stacking buys them in the grid
  step grid-runs25.log 540 python3 benchmarks/grid.py --device cuda --scale 0.05 --epochs 2 --repeats 5 \
    --rows "Frame, linear;Late F+P+S+W;Concatenation F+P"
  keep grid-runs25
}

run_profile() {  # one epoch of each row, one run at a time, profiled in float32 and in bf16
  local rows="Coattention F+P;Late F+P+S+W"
  grid_store
  step profile-fp32.log 250 python3 benchmarks/grid.py --device cuda --scale 0.05 --epochs 1 --paths per-run \
    --store /tmp/g.h5 --rows "$rows" --profile
  step profile-bf16.log 250 python3 benchmarks/grid.py --device cuda --scale 0.05 --epochs 1 --paths per-run \
    --store /tmp/g.h5 --rows "$rows" --profile --bf16
  mkdir -p benchmarks/results/grid-profile
  tar -cf "$out/profile-results.tar" benchmarks/results/grid-profile
}

run_sync() {
  step sync.log 300 python3 benchmarks/sync_check.py
  cp benchmarks/results/sync-*.json "$out/" 2>/dev/null || true
}

run_breakdown() {
  # --switch-interval 5: a whole run at Python's default too, against extraction's 0.5 ms (store_gil.py)
  step breakdown.log 540 python3 benchmarks/extract_breakdown.py --seconds 3600 --device cuda --dtype float32 bfloat16 \
    --switch-interval 5
  cp benchmarks/results/extract-breakdown-cuda.json "$out/" 2>/dev/null || true
}

run_writer_sim() {
  # the encoder simulated (no GPU needed), the host's cores and disk real: a 16-core host has no
  # oversubscribed cores, which confounded the 2-core VM's figures (BENCHMARKS.md)
  local base=()
  if [ -f .baseline/emofuse-a17ffb2.tar ]; then
    base=(--baseline-tar .baseline/emofuse-a17ffb2.tar)
  fi
  for share in 0.9 0.5; do
    step "writer-sim-$share.log" 200 python3 benchmarks/extract_sim.py --seconds 1800 --trials 3 \
      --python-share "$share" "${base[@]}"
    cp benchmarks/results/extract-sim.json "$out/extract-sim-$share.json" 2>/dev/null || true
  done
}

run_extract() {
  local base=()
  if [ -f .baseline/emofuse-before-pipelining.tar ]; then
    base=(--baseline-tar .baseline/emofuse-before-pipelining.tar)
  fi
  step store_write.log 200 python3 benchmarks/store_write.py --seconds 60 --repeats 5 --stream 8 --trials 3 \
    "${base[@]}" --name store_write-gpu-host
  step extract.log 360 python3 benchmarks/extract.py --seconds 1800 --device cuda
  keep extract
}

case $stage in
  grid) run_grid ;;
  grid-before) run_grid_before ;;
  grid-after) run_grid_after ;;
  grid-bf16) run_grid_bf16 ;;
  grid-runs25) run_grid_runs25 ;;
  profile) run_profile ;;
  grid-fast) run_grid_fast ;;
  sync) run_sync ;;
  breakdown) run_breakdown ;;
  writer-sim) run_writer_sim ;;
  finetune) run_finetune ;;
  finetune-compile) run_finetune_compile ;;
  extract) run_extract ;;
  all) run_grid; run_finetune; run_extract ;;
esac
if [ "$failed" -ne 0 ]; then
  echo "gpu_checks: $failed benchmark(s) failed (see the logs in $out); what finished is in the tar" >&2
  exit 1
fi
