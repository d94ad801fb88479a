#!/usr/bin/env bash
# Issue 13's comparison at equal compute: the same DiT trunk (128 x 4 blocks, 4 heads), data (embedded
# corpus, character level, blocks of 64), batch (32), seed (0) and number of steps for every process;
# then each run's bound on its validation split. Usage (from the repository root):
#   STEPS=600 bash experiments/equal_compute/run.sh        # two runs at a time, OMP_NUM_THREADS=1 each
# Results: experiments/equal_compute/results/<name>.json (ddlm eval); runs in runs/equal-compute/.
set -euo pipefail
STEPS=${STEPS:-600}
PASSES=${PASSES:-1}
DDLM=${DDLM:-.venv/bin/ddlm}
OUT=experiments/equal_compute/results
mkdir -p "$OUT"
common="max_steps=$STEPS max_minutes=10000 seed=0 eval_every=$STEPS save_every=$STEPS sample_every=0"
declare -A CFG=(
  [mdm]="demo-mdm"
  [udm-loo]="demo-udm"
  [d3pm-uniform]="demo-d3pm"
  [d3pm-absorbing]="demo-d3pm d3pm.kind=absorbing"
  [sedd-absorbing]="demo-sedd"
  [sedd-uniform]="demo-sedd process=udm model.score_scaling=none"
)
one() {
  local name=$1
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $DDLM train ${CFG[$name]} run_dir=runs/equal-compute/$name $common --no-progress \
    > "$OUT/$name.train.log" 2>&1
  OMP_NUM_THREADS=1 $DDLM eval runs/equal-compute/$name --passes "$PASSES" --out "$OUT/$name.json" --overwrite \
    --no-progress > "$OUT/$name.eval.log" 2>&1
  echo "$name done"
}
(one mdm; one d3pm-uniform; one sedd-absorbing) &
(one udm-loo; one d3pm-absorbing; one sedd-uniform) &
wait
