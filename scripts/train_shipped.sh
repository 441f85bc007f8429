#!/usr/bin/env bash
# Train ribsr's shipped CPU models the way they were trained: ribsr-s x2 from scratch, then x3 and x4
# from the x2 body (only the upsampler is new), each in stages. A stage names the run's *total* training
# minutes and a new peak learning rate; the trainer resumes runs/<name>/last.pt, restarts the cosine at
# the point the elapsed fraction of the new budget gives, and decays it to 1e-5 at the new end. A stage
# the run has already reached returns at once, so re-running this script (or raising the minutes of
# the last stage) continues where it stopped. Step counts depend on the machine's speed (the schedule
# is fitted to the time budget), so a re-run lands close to, not bit-exactly on, the shipped weights.
#
# Usage: nohup scripts/train_shipped.sh > runs/train_shipped.log 2>&1 &
#        then: ribsr export runs/ribsr-s-x2 --name ribsr-s-x2 --default  (same for x3, x4)
# Env:   THREADS (per process, default 1; two processes run at once from phase 2 on)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-1}
PY=${PYTHON:-python3}
mkdir -p runs

stage() {  # name scale total-minutes peak-lr warmup [extra args]
  local name=$1 scale=$2 minutes=$3 lr=$4 warmup=$5; shift 5
  $PY -m ribsr_cli train --arch ribsr-s --scale "$scale" --out "runs/$name" --steps 0 \
      --max-minutes "$minutes" --lr "$lr" --warmup "$warmup" --threads "$THREADS" \
      --val-every 250 --ckpt-minutes 3 "$@"
}

# Phase 1: the x2 body from scratch.
stage ribsr-s-x2 2 60 1e-3 300
# Phase 2: x3 and x4 start from that 60-minute x2 body (the init is used only when a run has no checkpoint).
stage ribsr-s-x4 4 45 5e-4 100 --init-from runs/ribsr-s-x2/ema.safetensors &
stage ribsr-s-x3 3 45 5e-4 100 --init-from runs/ribsr-s-x2/ema.safetensors &
wait
# Phase 3: continue, x2 on one core, x4 then x3 on the other.
stage ribsr-s-x2 2 190 4e-4 300 &
{ stage ribsr-s-x4 4 110 3e-4 100 && stage ribsr-s-x3 3 110 3e-4 100; } &
wait
# Phase 4: a third cosine. The shipped x2 is its state at 256 min of this stage's 320 (it met both
# targets and its core went to x3); x3 had run 3 min of a 240-min plan before this 178-min stage.
stage ribsr-s-x2 2 320 3e-4 100 &
stage ribsr-s-x4 4 240 5e-4 100 &
wait
stage ribsr-s-x3 3 178 5e-4 100
# Phase 5: short low-LR tails (on the clock-based cosine a 17-min extension restarts near 4e-5).
stage ribsr-s-x4 4 257 3e-3 100 &
stage ribsr-s-x3 3 195 1.5e-3 100 &
wait
# Phase 6: one more cosine each, restarted near 1.4e-4 (x4) and 1.8e-4 (x3) and decayed to 1e-5 at the new
# total. As run, the planned total was changed mid-stage (x4: 345, then 406, then 334 min; x3: 330, then
# 344) with the peak re-chosen each time so the learning rate carried on where it was; x3's last 56 min ran
# on 2 threads once x4 had finished, and x3 was stopped (SIGTERM) at 329 of its 344 min, at lr 1.2e-5.
# The single stages below give about the same learning-rate path.
stage ribsr-s-x4 4 334 1.15e-3 100 &
stage ribsr-s-x3 3 344 4.4e-4 100 &
wait
echo "all stages done"
