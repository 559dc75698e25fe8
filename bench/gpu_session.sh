#!/usr/bin/env bash
# The one prepared GPU run: the end-to-end speed table first (it needs the GPU to itself), then Fashion-MNIST
# training of both variants with the committed recipe (concurrently: at 64 px both are launch-bound, not
# GPU-bound), then their test-set evaluations. Writes everything under ${OUT:-bench/out}.
#   bash bench/gpu_session.sh            # on the GPU machine (data in GOOGLENET_DATA)
#   bash bench/gpu_session.sh --quick    # a few seconds on a CPU: checks the script
# Time limits per phase (seconds): E2E_LIMIT_S, TRAIN_LIMIT_S; MODEL_SPEED=1 adds bench/model_speed.py at
# the end. A training run stopped by its limit saves a checkpoint on SIGTERM, and is still evaluated.
set -u
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
quick=0; [ "${1:-}" = "--quick" ] && quick=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU";
  $PY -c "import torch, torchvision, platform; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'python', platform.python_version())";
  date -u; } | tee "$OUT/env.txt"

if [ $quick = 1 ]; then
  extra=(--epochs 1 --train-subset 256 --val-subset 128 --img-size 32 --batch-size 32 --no-bf16 --no-compile --device cpu)
  e2e=(--quick); limit=300; e2e_limit=300
else
  extra=(--device cuda); e2e=()
  limit=${TRAIN_LIMIT_S:-400}; e2e_limit=${E2E_LIMIT_S:-150}
fi

timeout "$e2e_limit" $PY bench/e2e_speed.py "${e2e[@]}" 2>&1 | tee "$OUT/e2e_speed.md"

for model in googlenet googlenet_bn; do
  timeout "$limit" $PY -m googlenet train --config fashion-mnist --model "$model" --out "$OUT/fm_$model" \
    --log-every 100000 "${extra[@]}" > "$OUT/fm_$model.log" 2>&1 &
done
wait
for model in googlenet googlenet_bn; do
  tail -n 3 "$OUT/fm_$model.log"
  if [ -f "$OUT/fm_$model/checkpoint_best.pt" ]; then
    crops_list="1"; [ $model = googlenet ] && [ $quick = 0 ] && crops_list="1 10"
    for crops in $crops_list; do
      $PY -m googlenet eval --checkpoint "$OUT/fm_$model/checkpoint_best.pt" --data fashion-mnist --crops $crops \
        --json "$OUT/fm_$model/eval_${crops}crop.json" --batch-size 256 | head -n 1
    done
  fi
  rm -f "$OUT"/fm_$model/checkpoint_*.pt   # too large to bring back; metrics and evals stay
done

if [ $quick = 1 ] || [ "${MODEL_SPEED:-0}" = 1 ]; then
  $PY bench/model_speed.py "${e2e[@]}" | tee "$OUT/model_speed.md"
fi
