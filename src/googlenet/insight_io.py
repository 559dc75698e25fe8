"""Writing the pictures of `dream`, `visualize` and `explain`: PNG files, replaced atomically."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from googlenet.files import replacing


def write_png(path: str | Path, image: Tensor) -> None:
    """uint8 RGB [3, H, W] -> ``path`` as PNG; torchvision's encoder writes the same bytes for the same pixels."""
    from torchvision.io import encode_png

    data = encode_png(image.cpu().contiguous()).numpy().tobytes()
    with replacing(path) as tmp:
        Path(tmp).write_bytes(data)


def save_figure(path: str | Path, figure) -> None:
    """A matplotlib figure -> ``path`` as PNG (no timestamp in the file: the same figure, the same bytes)."""
    import matplotlib.pyplot as plt

    try:
        with replacing(path) as tmp:
            figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(figure)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
