#!/usr/bin/env bash
# Train ribsr's shipped CPU models: ribsr-s x2 from scratch, then x3 and x4 in parallel, each starting
# from the x2 body (only the upsampler is new). Every stage checkpoints every few minutes and resumes
# from runs/<name>/last.pt, so re-running this script continues where it stopped.
#
# Usage: nohup scripts/train_shipped.sh > runs/train_shipped.log 2>&1 &
# Env:   X2_MINUTES (default 60), X34_MINUTES (default 45), THREADS (per process, default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
X2_MINUTES=${X2_MINUTES:-60}
X34_MINUTES=${X34_MINUTES:-45}
THREADS=${THREADS:-1}
PY=${PYTHON:-python3}
mkdir -p runs

stage() {  # name scale minutes [extra args]
  local name=$1 scale=$2 minutes=$3; shift 3
  if [ -f "runs/$name/DONE" ]; then echo "$name already done"; return; fi
  $PY -m ribsr_cli train --arch ribsr-s --scale "$scale" --out "runs/$name" --steps 0 \
      --max-minutes "$minutes" --threads "$THREADS" --val-every 250 --ckpt-minutes 3 "$@"
  touch "runs/$name/DONE"
}

stage ribsr-s-x2 2 "$X2_MINUTES" --lr 1e-3 --warmup 300
stage ribsr-s-x4 4 "$X34_MINUTES" --lr 5e-4 --warmup 100 --init-from runs/ribsr-s-x2/ema.safetensors &
stage ribsr-s-x3 3 "$X34_MINUTES" --lr 5e-4 --warmup 100 --init-from runs/ribsr-s-x2/ema.safetensors &
wait
echo "all stages done"
