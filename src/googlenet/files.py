"""Files written whole or not at all: checkpoints, packs, ONNX graphs, plots."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed over ``path`` if the block succeeds,
    removed if it fails. Readers (and a crash or kill mid-write) see the old file or the new one, never half
    of one. The block creates the file itself (``open`` gives it the umask's permissions); the name keeps
    ``path``'s suffix for writers that infer a format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
