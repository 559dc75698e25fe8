#!/bin/bash
# usage: demo_sweep.sh NAME ARGS...   one training from the repository root, its wall time and final
# test top-1 appended to results.txt (NAME, seconds from start to exit, epochs, top-1, the flags).
name=$1; shift
start=$(date +%s.%N)
.venv/bin/googlenet train --config fashion-mnist-cpu --img-size 32 --bf16 --out runs/sweep/$name --overwrite "$@" \
    > runs/sweep/$name.log 2>&1
end=$(date +%s.%N)
last=$(tail -1 runs/sweep/$name/metrics.jsonl | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["epoch"], d["val_top1"])')
echo "$name $(python3 -c "print(round($end-$start,1))")s $last :: $*" >> results.txt
