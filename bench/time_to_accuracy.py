"""Test top-1 against wall-clock minutes for training runs, from their run folders' metrics.jsonl.

Each epoch's line holds its wall time (`wall_s`: training, validation and checkpoints); the minutes plotted
are their running sum, so a run's last point is its whole length. Runs made on different machines are not
comparable in minutes: give runs from one machine, or say so in the title.

    python bench/time_to_accuracy.py --out curve.png "new recipe=runs/a" "old recipe=bench/results/.../b"
    python bench/time_to_accuracy.py --out curve.png --at 30,60,90,120 runs/a runs/b   # and at equal minutes

`--at` adds a column per minute: each run's top-1 at the last epoch that had ended by then, the comparison
that accuracy per minute asks for ("-" where no epoch had ended, or the run had already stopped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from googlenet.insight_io import pyplot, save_figure  # noqa: E402


def read_curve(folder: Path) -> tuple[list[float], list[float]]:
    """(cumulative minutes, validation top-1) per epoch of one run folder."""
    minutes, top1, total = [], [], 0.0
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            epoch = json.loads(line)
            total += epoch["wall_s"] / 60
            minutes.append(total)
            top1.append(epoch["val_top1"])
    if not minutes:
        raise SystemExit(f"{folder}/metrics.jsonl: no epochs")
    return minutes, top1


def top1_at(minutes: list[float], top1: list[float], minute: float) -> float | None:
    """Top-1 of the last epoch ended by ``minute``; None before the first, or after the run's end."""
    if minute > minutes[-1] + 1e-9:
        return None
    ended = [t for m, t in zip(minutes, top1) if m <= minute + 1e-9]
    return ended[-1] if ended else None


def table(curves: dict[str, tuple[list[float], list[float]]], at: list[float]) -> str:
    """Markdown: each run's length and final top-1, then its top-1 at each of the ``at`` minutes."""
    head = "| run | minutes | final top-1 |" + "".join(f" at {m:g} min |" for m in at)
    lines = [head, "|---|---:|---:|" + "---:|" * len(at)]
    for label, (minutes, top1) in curves.items():
        cells = [top1_at(minutes, top1, m) for m in at]
        lines.append(
            f"| {label} | {minutes[-1]:.1f} | {top1[-1]:.2f}% |"
            + "".join(" - |" if c is None else f" {c:.2f}% |" for c in cells)
        )
    return "\n".join(lines)


def parse_run(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    return (label, Path(path)) if sep else (Path(text).name, Path(text))


def plot(curves: dict[str, tuple[list[float], list[float]]], title: str, floor: float):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (minutes, top1) in curves.items():
        ax.plot(minutes, top1, marker="o", markersize=3, label=f"{label}: {top1[-1]:.2f}% in {minutes[-1]:.0f} min")
    ax.set_xlabel("wall-clock minutes (training, validation and checkpoints)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(bottom=floor)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders, each optionally as LABEL=FOLDER")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="Fashion-MNIST: test top-1 against wall-clock time")
    p.add_argument("--floor", type=float, default=80.0, help="lowest top-1 shown")
    p.add_argument(
        "--at",
        type=lambda v: [float(m) for m in v.split(",")],
        default=[],
        metavar="M1,M2,...",
        help="also each run's top-1 at these minutes",
    )
    args = p.parse_args()
    curves = {label: read_curve(folder) for label, folder in map(parse_run, args.runs)}
    save_figure(args.out, plot(curves, args.title, args.floor))
    print(table(curves, args.at))


if __name__ == "__main__":
    main()
