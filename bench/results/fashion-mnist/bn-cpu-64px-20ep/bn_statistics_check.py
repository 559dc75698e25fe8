"""Were the averaged weights paired with the wrong BatchNorm statistics? One checkpoint, three ways.

Before commit af568d8 the EMA averaged googlenet_bn's weights but copied the live model's BatchNorm running
statistics. This evaluates (1 crop, Fashion-MNIST test) the saved model (EMA weights + live statistics),
the live model (its own weights and statistics, kept in the checkpoint's train_state), and the EMA weights
with statistics re-estimated for them on 5,120 training images seen as at test time.

    .venv/bin/python bench/results/fashion-mnist/bn-cpu-64px-20ep/bn_statistics_check.py RUN/checkpoint_last.pt
"""

import copy
import sys

import torch

from googlenet import open_checkpoint
from googlenet.augment import normalize
from googlenet.data import load_fashion_mnist
from googlenet.evaluate import eval_dataset, evaluate_ensemble, multi_crop

path = sys.argv[1]
member = open_checkpoint(path)
dataset = eval_dataset("fashion-mnist", member.class_names)


def top1(m):
    return evaluate_ensemble([m], dataset, 1, batch_size=256, workers=0).top1


print("EMA weights + live BN statistics (as saved):", top1(member))
live = copy.deepcopy(member)
live.model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu")["train_state"]["model"])
print("live model:", top1(live))

recalibrated = copy.deepcopy(member)
model = recalibrated.model
for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
        module.reset_running_stats()
        module.momentum = None  # a plain average over the batches below
        module.train()
images, _ = load_fashion_mnist("train")
pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:5120]
pre = member.preprocess
with torch.no_grad():
    for chunk in pick.split(256):
        crops = torch.cat(
            [multi_crop(images[i][None].expand(3, -1, -1), 1, int(pre["img_size"]), pre["resize_ratio"]) for i in chunk]
        )
        model(normalize(crops.float() / 255, pre["mean"], pre["std"]).contiguous(memory_format=torch.channels_last))
model.eval()
print("EMA weights + statistics re-estimated on 5,120 training images:", top1(recalibrated))
