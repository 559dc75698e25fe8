"""A training run's folder: config.json, metrics.jsonl, curves.png, checkpoint_last.pt and checkpoint_best.pt.

Every file in it is replaced whole (temporary file, fsync, rename), so a crash leaves each one as it was
before or as it is after, never half written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from googlenet.checkpoint import link_checkpoint, save_checkpoint
from googlenet.config import ConfigError
from googlenet.files import remove_stale_temporaries, replacing

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
LOCK = ".lock"
RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", LAST, BEST)


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

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    @contextlib.contextmanager
    def claim(self, resume: bool, overwrite: bool) -> Iterator[None]:
        """Hold the folder for one training's life: refuse a finished run's folder unless resuming or told
        to overwrite it, and refuse a second trainer while this one runs.

        The lock is an ``flock`` on ``.lock``: the kernel drops it when the holder dies however it dies
        (kill -9 included), so a stale lock never blocks the next run. Temporary files of writers that
        were killed are removed here too.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} is a file, not a run folder")
        if not resume and not overwrite and self.holds_run():
            raise ConfigError(
                f"{self.path} holds a run already; continue it with --resume {self.path}, "
                "start afresh with --overwrite, or choose another --out"
            )
        created = not self.path.exists()
        self.create()
        try:
            with _exclusive_lock(self.path / LOCK):
                remove_stale_temporaries(self.path)
                if overwrite and not resume:
                    for name in RUN_FILES:
                        (self.path / name).unlink(missing_ok=True)
                yield
        finally:
            if created:
                self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        """Remove the folder this run made if it failed before writing anything (bad data, a bad flag)."""
        if {p.name for p in self.path.iterdir()} <= {LOCK}:
            (self.path / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()

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


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"{path.parent} is in use by another training (process {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


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
