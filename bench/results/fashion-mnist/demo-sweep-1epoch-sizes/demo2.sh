set -x
cd /work/main
while pgrep -f "int8_by_size" >/dev/null; do sleep 5; done
for spec in "d1_b64_lr005:--batch-size 64 --lr 0.05" "d2_48px:--img-size 48"; do
  name=${spec%%:*}; flags=${spec#*:}
  start=$(date +%s)
  .venv/bin/googlenet train --config demo --bf16 --epochs 1 $flags --out /work/exp/runs/$name --overwrite > /work/exp/runs/$name.log 2>&1
  echo "$name $flags $(( $(date +%s) - start ))s $(grep final /work/exp/runs/$name.log)" >> /work/exp/demo2_results.txt
done
