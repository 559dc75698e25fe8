"""Transfer on Fashion-MNIST: pre-train on classes 0-4, then learn classes 5-9 from 100 images per class.

For each variant, with the `googlenet` command as a user would run it:

1. pre-train on all training images of classes 0-4 (an image folder made from Fashion-MNIST);
2. learn classes 5-9 from 100 training images each, four ways: from scratch; fine-tuned from the pre-trained
   checkpoint (`train --init ... --freeze none`); a linear probe (`--freeze features`); and
   `googlenet features` + scikit-learn's logistic regression on the frozen pool5 features;
3. score each on all 5,000 test images of classes 5-9 (`googlenet eval`, 1 crop), and time it.

    python bench/transfer.py --out bench/out/transfer            # about 25 minutes on 2 CPU cores
    python bench/transfer.py --out /tmp/transfer --quick         # seconds: checks the script

Writes OUT/results.json and OUT/results.md (the table), and every run's folder and log under OUT.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_png

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from googlenet.data import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402

PRETRAIN_CLASSES, NEW_CLASSES = range(0, 5), range(5, 10)


def class_folder(label: int) -> str:
    return f"{label}-{FASHION_MNIST_CLASSES[label].replace('/', '-')}"


def write_split(folder: Path, images: torch.Tensor, labels: torch.Tensor, classes: range, per_class: int | None):
    """PNG files folder/<class>/<index>.png of the given classes (the first ``per_class`` of each, or all)."""
    for label in classes:
        (folder / class_folder(label)).mkdir(parents=True, exist_ok=True)
        picks = (labels == label).nonzero().flatten().tolist()[:per_class]
        for i in picks:
            png = encode_png(images[i].unsqueeze(0)).numpy().tobytes()
            (folder / class_folder(label) / f"{i:05d}.png").write_bytes(png)


def make_folders(root: Path, quick: bool) -> None:
    """root/pretrain/{train,val} (classes 0-4) and root/new/{train,val} (classes 5-9, 100 training images
    each; val = every test image of those classes)."""
    if (root / "done").exists():
        return
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    many = 40 if quick else None
    write_split(root / "pretrain" / "train", train_x, train_y, PRETRAIN_CLASSES, many)
    write_split(root / "pretrain" / "val", test_x, test_y, PRETRAIN_CLASSES, 20 if quick else 200)
    write_split(root / "new" / "train", train_x, train_y, NEW_CLASSES, 8 if quick else 100)
    write_split(root / "new" / "val", test_x, test_y, NEW_CLASSES, 20 if quick else None)
    (root / "done").write_text("")


def googlenet(args: list[str], log: Path) -> float:
    """Run a `googlenet` command, its output to ``log``; returns its wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ googlenet " + " ".join(args) + "\n")
        f.flush()
        subprocess.run([sys.executable, "-m", "googlenet", *args], stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def top1(out: Path, name: str, checkpoint: Path, data: Path) -> float:
    googlenet(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--crops", "1", "--workers", "0",
               "--json", str(out / f"{name}.eval.json")], out / f"{name}.eval.log")  # fmt: skip
    return json.loads((out / f"{name}.eval.json").read_text())["top1"]


def logistic_regression(out: Path, pretrained: Path, data: Path) -> tuple[float, float]:
    """Top-1 of a logistic regression on frozen pool5 features, and the wall time of extraction and fit."""
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    for split in ("train", "val"):
        googlenet(["features", "--checkpoint", str(pretrained), str(data / split), "--out", str(out / f"{split}.npz")],
                  out / f"features_{split}.log")  # fmt: skip
    train, val = np.load(out / "train.npz"), np.load(out / "val.npz")
    fit = LogisticRegression(max_iter=5000, C=1.0).fit(train["features"], train["labels"])
    accuracy = 100 * float(fit.score(val["features"], val["labels"]))
    return accuracy, time.perf_counter() - start


def pretrain(base: list[str], root: Path, out: Path, epochs: str) -> dict[str, float]:
    """Train on classes 0-4 with the CPU recipe at 32 px; its top-1 on their test images and its wall time."""
    args = ["train", "--config", "fashion-mnist-cpu", *base, "--data", str(root / "pretrain"), "--epochs", epochs,
            "--batch-size", "128", "--lr", "0.05", "--warmup-epochs", "0.5", "--workers", "1",
            "--out", str(out / "pretrain"), "--overwrite"]  # fmt: skip
    seconds = googlenet(args, out / "pretrain.log")
    result = {
        "top1": top1(out, "pretrain", out / "pretrain" / "checkpoint_last.pt", root / "pretrain"),
        "seconds": seconds,
    }
    (out / "pretrain.json").write_text(json.dumps(result) + "\n")
    return result


def run_variant(variant: str, root: Path, out: Path, quick: bool, reuse: bool) -> dict[str, dict[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    base = ["--model", variant, "--img-size", "32", "--device", "cpu"]  # bf16 where the CPU has it natively
    pre_epochs, new_epochs = ("1", "2") if quick else ("6", "15")
    pretrained = out / "pretrain"
    if reuse and (out / "pretrain.json").is_file():  # the fine-tuning ways again, on the same pre-trained weights
        results = {"pretrain": json.loads((out / "pretrain.json").read_text())}
    else:
        results = {"pretrain": pretrain(base, root, out, pre_epochs)}
    new = ["--data", str(root / "new"), "--epochs", new_epochs, "--batch-size", "32", "--workers", "1",
           "--val-subset", "500", "--overwrite"]  # fmt: skip
    ways = {
        # From scratch: the CPU recipe's settings at the same length, without EMA (240 steps are too few for
        # an average with decay 0.999 to catch up with the weights).
        "scratch": ["--config", "fashion-mnist-cpu", "--lr", "0.02", "--warmup-epochs", "1", "--no-ema"],
        "finetune": ["--config", "finetune", "--init", str(pretrained), "--freeze", "none"],
        "linear-probe": ["--config", "finetune", "--init", str(pretrained), "--freeze", "features"],
    }
    for name, flags in ways.items():
        run = out / name
        seconds = googlenet(["train", *flags, *base, *new, "--out", str(run)], out / f"{name}.log")
        results[name] = {"top1": top1(out, name, run / "checkpoint_last.pt", root / "new"), "seconds": seconds}
    accuracy, seconds = logistic_regression(out, pretrained, root / "new")
    results["features+logreg"] = {"top1": accuracy, "seconds": seconds}
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| variant | way | top-1 on classes 5-9 (5,000 test images) | wall time |", "|---|---|---|---|"]
    for variant, ways in results.items():
        for way, r in ways.items():
            what = "pre-training on classes 0-4 (its own test images)" if way == "pretrain" else way
            lines.append(f"| `{variant}` | {what} | {r['top1']:.2f}% | {r['seconds'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny folders and 1-2 epochs: checks the script")
    parser.add_argument("--variants", nargs="+", default=["googlenet", "googlenet_bn"])
    parser.add_argument("--reuse-pretrained", action="store_true", help="keep OUT's pre-trained runs where present")
    args = parser.parse_args()
    make_folders(args.out / "data", args.quick)
    results = {
        v: run_variant(v, args.out / "data", args.out / v, args.quick, args.reuse_pretrained) for v in args.variants
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
