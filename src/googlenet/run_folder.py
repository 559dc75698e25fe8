"""A training run's folder: config.json, metrics.jsonl, curves.png, checkpoint_last.pt and checkpoint_best.pt.

Every file in it is replaced whole (temporary file, fsync, rename), so a crash leaves each one as it was
before or as it is after, never half written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from googlenet.checkpoint import link_checkpoint, save_checkpoint
from googlenet.files import replacing

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


class RunFolder:
    """The files of one run; only the main process of a run writes them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def curves_path(self) -> Path:
        return self.path / "curves.png"

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        _write_text(self.config_path, json.dumps(config, indent=2) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl, one per finished epoch, in order."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(ln) for ln in self.metrics_path.read_text().splitlines() if ln.strip()]

    def truncate_metrics(self, epochs_done: int) -> None:
        """Keep the rows of the first ``epochs_done`` epochs (on resume: later ones will be redone)."""
        rows = [r for r in self.metrics() if r["epoch"] <= epochs_done]
        if self.metrics_path.exists() or rows:
            self._write_metrics(rows)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add an epoch's row and redraw curves.png."""
        self._write_metrics([*self.metrics(), row])
        plot_curves(self.metrics(), self.curves_path)

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        _write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def save_last(self, checkpoint: dict[str, Any]) -> None:
        save_checkpoint(self.last, checkpoint)

    def mark_last_as_best(self) -> None:
        link_checkpoint(self.last, self.best)


def _write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def plot_curves(rows: list[dict[str, Any]], png_path: Path) -> None:
    """Loss and accuracy against epoch, from the rows of metrics.jsonl."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in rows], label="train loss (with aux)")
    ax1.plot(epochs, [r["val_loss"] for r in rows], label="val loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    ax2.plot(epochs, [r["val_top1"] for r in rows], label="val top-1 %")
    ax2.plot(epochs, [r["val_top5"] for r in rows], label="val top-5 %")
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.tight_layout()
    with replacing(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
