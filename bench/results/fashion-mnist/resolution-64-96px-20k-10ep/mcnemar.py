"""Paired comparison of two Fashion-MNIST checkpoints on the test split (1 crop): McNemar's exact test.

    PYTHONPATH=src python bench/results/fashion-mnist/resolution-64-96px-20k-10ep/mcnemar.py A.pt B.pt

Uses evaluate.py's own crop and softmax helpers, so each model sees exactly what `googlenet eval` feeds it.
"""

import sys
from math import comb

import torch

from googlenet.checkpoint import open_checkpoint
from googlenet.evaluate import _crops_for, _softmax_in_chunks, eval_dataset

torch.set_num_threads(2)
correct = []
for path in sys.argv[1:3]:
    member = open_checkpoint(path)
    data = eval_dataset("fashion-mnist", member.class_names)
    ok = []
    with torch.inference_mode():
        for start in range(0, len(data), 250):
            items = [data[i] for i in range(start, min(start + 250, len(data)))]
            probs = _softmax_in_chunks(member, _crops_for(member, [x[0] for x in items], 1), 250, "cpu")
            ok.append(probs.argmax(1) == torch.tensor([x[1] for x in items]))
    correct.append(torch.cat(ok))
a, b = correct
only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
n = only_a + only_b
p = min(1.0, 2 * sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n)
print(f"A {100 * a.float().mean():.2f}%  B {100 * b.float().mean():.2f}%", end="  ")
print(f"right only in A {only_a}, only in B {only_b}, McNemar exact two-sided p = {p:.2g}")
