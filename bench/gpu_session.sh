#!/usr/bin/env bash
# The prepared GPU run, in phases, one after another (never concurrently: two Fashion-MNIST trainings
# sharing the H100 ran at 4.5k + 3.7k img/s against 15k for one alone, bench/results/2026-11-27-h100-run3):
#   e2e              bench/e2e_speed.py, the end-to-end table (needs the GPU and the CPUs to itself)
#   fm_googlenet     Fashion-MNIST training, committed recipe, paper variant, then `googlenet eval` 1 and 10 crops
#   fm_googlenet_bn  the same for the BatchNorm variant (1 crop)
#   model_speed      bench/model_speed.py
#   step_overhead    bench/step_overhead.py --profile: host syncs per training step, their cost, and where a
#                    step's time goes (eager, ~1 min)
# Default: e2e fm_googlenet fm_googlenet_bn. Writes under ${OUT:-bench/out}; checkpoints are deleted after
# their evaluation (too large to bring back) unless FM_KEEP=1 (below). TRAIN_LIMIT_S / E2E_LIMIT_S bound each
# phase; a training run stopped by its limit saves a checkpoint on SIGTERM and is still evaluated.
#   bash bench/gpu_session.sh --quick [PHASE...]   # a minute on a CPU: checks the script
# On the lent machine (at most 8 files come back, so bring one archive; the data travels in .data/), in two
# calls while the machine stays warm, the training first since it answers the open accuracy goal:
#   R=$OUT; OUT=/tmp/gs GOOGLENET_DATA=$PWD/.data/fashion-mnist timeout 480 bash bench/gpu_session.sh fm_googlenet step_overhead;
#   tar czf $R/gs.tgz --exclude='*.pt' -C /tmp/gs .
#   (then the same with `e2e model_speed` and timeout 260)
# A schedule longer than one call (10 min; the H200 ran 4.2 s per epoch after a 95 s compile,
# bench/results/2026-11-27-h200-run4): the same command twice on the warm machine, each call continuing the last:
#   OUT=/tmp/gs FM_KEEP=1 FM_ARGS="--epochs 130" FM_TAG=e130 TRAIN_LIMIT_S=520 GOOGLENET_DATA=... bash bench/gpu_session.sh fm_googlenet
set -u
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
quick=0; [ "${1:-}" = "--quick" ] && { quick=1; shift; }
phases=("$@"); [ ${#phases[@]} = 0 ] && phases=(e2e fm_googlenet fm_googlenet_bn)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU";
  $PY -c "import torch, torchvision, platform; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'python', platform.python_version())";
  date -u; } | tee -a "$OUT/env.txt"

if [ $quick = 1 ]; then
  train_extra=(--epochs 1 --train-subset 256 --val-subset 128 --img-size 32 --batch-size 32 --no-bf16 --no-compile --device cpu)
  bench_extra=(--quick); train_limit=300; e2e_limit=300
else
  train_extra=(--device cuda); bench_extra=()
  train_limit=${TRAIN_LIMIT_S:-400}; e2e_limit=${E2E_LIMIT_S:-200}
fi

# FM_ARGS: extra flags for both trainings, last so they win (e.g. "--img-size 96"); FM_TAG names their run
# folders fm_MODEL_TAG;
# FM_KEEP=1 keeps the checkpoints so that the next call with the same OUT and FM_TAG continues the run.
# The final weights are evaluated, not checkpoint_best: Fashion-MNIST's validation split is its test split,
# so picking the best epoch on it would be selection on the test set.
read -r -a fm_args <<< "${FM_ARGS:-}"
fashion_mnist() {  # model, crop counts to evaluate
  local model=$1 run="$OUT/fm_$1${FM_TAG:+_$FM_TAG}"; shift
  # A run folder left by an earlier call (FM_KEEP=1) is continued, so a schedule longer than one call's
  # limit runs in two calls on one warm machine (a checkpoint is too large to bring back between machines).
  local start=(--config fashion-mnist --model "$model" --out "$run")
  [ -f "$run/checkpoint_last.pt" ] && start=(--resume "$run")
  echo "== $model on Fashion-MNIST ${start[*]} ${FM_ARGS:-} ($(date -u +%T))"
  timeout "$train_limit" $PY -m googlenet train "${start[@]}" --log-every 100000 "${train_extra[@]}" \
    "${fm_args[@]}" >> "$run.log" 2>&1
  tail -n 3 "$run.log"
  if [ -f "$run/checkpoint_last.pt" ]; then
    for crops in "$@"; do
      # Into a file, not `| head`: head would exit after one line and the eval's next print (per-class
      # lines, unbuffered here) would die of a broken pipe before the JSON is written.
      $PY -m googlenet eval --checkpoint "$run/checkpoint_last.pt" --data fashion-mnist --crops "$crops" \
        --json "$run/eval_${crops}crop.json" --batch-size 256 > "$run/eval_${crops}crop.txt" 2>&1
      head -n 1 "$run/eval_${crops}crop.txt"
    done
  fi
  [ "${FM_KEEP:-0}" = 1 ] || rm -f "$run"/checkpoint_*.pt
}

for phase in "${phases[@]}"; do
  case $phase in
    e2e) timeout "$e2e_limit" $PY bench/e2e_speed.py "${bench_extra[@]}" 2>&1 | tee "$OUT/e2e_speed.md" ;;
    fm_googlenet) if [ $quick = 1 ]; then fashion_mnist googlenet 1; else fashion_mnist googlenet 1 10; fi ;;
    fm_googlenet_bn) fashion_mnist googlenet_bn 1 ;;
    model_speed) $PY bench/model_speed.py "${bench_extra[@]}" | tee "$OUT/model_speed.md" ;;
    step_overhead) $PY bench/step_overhead.py --profile "${bench_extra[@]}" | tee "$OUT/step_overhead.md" ;;
    *) echo "unknown phase: $phase (e2e, fm_googlenet, fm_googlenet_bn, model_speed, step_overhead)" >&2; exit 2 ;;
  esac
done
