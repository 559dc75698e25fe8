#!/usr/bin/env bash
# GPU benchmark suite: Fashion-MNIST training of both variants and the speed benchmarks on one CUDA machine,
# in phases run one after another (never at the same time: two trainings sharing one H100 each ran 3x
# slower, bench/results/fashion-mnist/paper-bn-h100-shared-gpu/).
#
# Phases (default: e2e fm_googlenet fm_googlenet_bn):
#   e2e              bench/e2e_speed.py: end-to-end training speed, the standard pipeline against ours
#                    (wants the GPU and the CPU cores to itself)
#   fm_googlenet     the paper variant trained with the `fashion-mnist` recipe, then `googlenet eval` of its
#                    final weights with 1 and 10 crops
#   fm_googlenet_bn  the same for the BatchNorm variant (1 crop)
#   model_speed      bench/model_speed.py: model-only training and inference speed against torchvision
#   step_overhead    bench/step_overhead.py --profile: host syncs per training step, their cost, and where a
#                    step's time goes (eager, about a minute)
#
# Usage, from the repository root, with a Python that has torch, torchvision and this package's dependencies:
#   bash bench/gpu_suite.sh                            # the default phases
#   bash bench/gpu_suite.sh fm_googlenet model_speed   # chosen phases, in this order
#   bash bench/gpu_suite.sh --quick [PHASE...]         # about a minute on a CPU: checks the script
#
# Environment:
#   OUT=DIR         where everything goes (default bench/out): env.txt, one .md per benchmark, and per
#                   training a run folder fm_MODEL[_TAG]/ and its log fm_MODEL[_TAG].log
#   PYTHON=...      the interpreter (default python3); PYTHONPATH is set to ./src
#   GOOGLENET_DATA  folder with the Fashion-MNIST idx files, if they are not in /usr/share/datasets/fashion-mnist
#   FM_ARGS="..."   extra `googlenet train` flags for the trainings, placed last so they win ("--img-size 96")
#   FM_TAG=NAME     suffix of the training run folders (fm_googlenet_NAME), to keep variants apart
#   FM_KEEP=1       keep the checkpoints (about 124 MB each); a later call with the same OUT, FM_TAG and FM_ARGS
#                   then continues that run with --resume. Without it, checkpoints are deleted after evaluation.
#   TRAIN_LIMIT_S   wall-clock cap per training, in seconds (default 400; 0 = no cap). A training stopped by
#                   its cap saves a checkpoint on SIGTERM and is still evaluated.
#   E2E_LIMIT_S     wall-clock cap for the e2e phase, in seconds (default 200; 0 = no cap)
#
# Example: the `fashion-mnist` recipe at 90 epochs for the paper variant, without a cap:
#   OUT=/tmp/suite FM_ARGS="--epochs 90" FM_TAG=e90 TRAIN_LIMIT_S=0 bash bench/gpu_suite.sh fm_googlenet
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

# The final weights are evaluated, not checkpoint_best: Fashion-MNIST's validation split is its test split,
# so picking the best epoch on it would be selection on the test set.
read -r -a fm_args <<< "${FM_ARGS:-}"
fashion_mnist() {  # model, crop counts to evaluate
  local model=$1 run="$OUT/fm_$1${FM_TAG:+_$FM_TAG}"; shift
  # A run folder left by an earlier call with FM_KEEP=1 is continued, so one schedule can run in several calls.
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
