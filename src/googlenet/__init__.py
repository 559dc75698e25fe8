"""googlenet: GoogLeNet (Inception v1) in PyTorch, as published and as torchvision ships it."""

from googlenet.checkpoint import load_checkpoint, open_checkpoint
from googlenet.evaluate import multi_crop
from googlenet.features import extract_features
from googlenet.model import (
    MIN_INPUT_SIZE,
    GoogLeNet,
    GoogLeNetConfig,
    GoogLeNetOutputs,
    create_model,
    list_models,
)

__version__ = "0.1.0"

__all__ = [
    "MIN_INPUT_SIZE",
    "GoogLeNet",
    "GoogLeNetConfig",
    "GoogLeNetOutputs",
    "create_model",
    "extract_features",
    "list_models",
    "load_checkpoint",
    "multi_crop",
    "open_checkpoint",
]
