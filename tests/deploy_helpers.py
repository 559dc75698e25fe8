"""Checkpoints for the deployment tests whose predictions differ from image to image."""

from pathlib import Path

import torch

from googlenet import create_model
from googlenet.checkpoint import save_checkpoint

from .conftest import class_image

CLASSES = ["class_0", "class_1", "class_2"]


def decisive_checkpoint(path: Path, classes: list[str] = CLASSES, img_size: int = 32, seed: int = 0) -> Path:
    """A random googlenet_bn whose BatchNorm statistics come from a batch of images.

    A fresh model's running statistics (mean 0, variance 1) shrink the activations layer after layer until
    every image gets the same logits, so a top-1 comparison between runtimes would only compare ties.
    """
    torch.manual_seed(seed)
    model = create_model("googlenet_bn", num_classes=len(classes), aux_logits=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the running statistics become those of the batch below
    images = torch.stack([class_image(i % len(classes), i, (img_size, img_size)) for i in range(24)])
    with torch.no_grad():
        model.train()((images.float() / 255 - 0.5) / 0.25)
        model.fc.weight.mul_(50.0)
    preprocess = {"mean": [0.5] * 3, "std": [0.25] * 3, "grayscale": False, "resize_ratio": 256 / 224}
    payload = {
        "model_config": model.config.to_dict(),
        "class_names": list(classes),
        "model": model.state_dict(),
        "preprocess": {**preprocess, "img_size": img_size},
    }
    save_checkpoint(path, payload)
    return path
