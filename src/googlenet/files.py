"""Files written whole or not at all, never over a command's own inputs: checkpoints, packs, ONNX, plots."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot be written without harm (a folder, a command's own input)."""


def check_output(path: str | Path, inputs: Iterable[str | Path] = (), flag: str = "output") -> Path:
    """Refuse, before any work, an output that is a folder or one of the command's ``inputs``.

    ``flag`` names the option in the message (``--json``). A path that does not exist yet is fine: its folder
    is made when it is written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name")
    _check_folder_possible(path, flag)
    for source in inputs:
        if _same_file(path, Path(source)):
            raise OutputError(f"{flag} {path} is also an input of this command; it would be replaced")
    return path


def check_outside_data(path: str | Path, data: str | Path, suffixes: Iterable[str], flag: str = "output") -> None:
    """Refuse an output inside the folder ``data`` that the command reads, where it would replace one of its
    files or, named with one of ``suffixes``, be read as data by the next run (an image in a class folder)."""
    path, data = Path(path), Path(data)
    if not data.is_dir() or not path.resolve().is_relative_to(data.resolve()):
        return
    if path.exists() or path.suffix.lower() in suffixes:
        harm = "replace a file" if path.exists() else "become part of the data"
        raise OutputError(f"{flag} {path} is inside {data}, which this command reads; it would {harm} there")


def _check_folder_possible(path: Path, flag: str) -> None:
    """Refuse, before any work, an output whose folder cannot be made because a file stands in its way."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{flag} {path}: {parent} is a file, not a folder")
            return


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A path for the block to write that becomes ``path`` only if the block succeeds.

    A regular file (or a new one) is written to a temporary file in the same folder, fsynced and renamed over
    ``path``: readers, and a crash or kill mid-write, see the old file or the new one, never half of one. A
    path that exists and is not a regular file (``/dev/null``, a FIFO) is handed to the block as it is, to
    be written in place: renaming over it would replace the device with a file. The block creates the file
    itself; the temporary name keeps ``path``'s suffix for writers that infer a format from it.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:
        if e.filename not in (str(tmp), tmp):
            raise
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None  # the name the user gave
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; a no-op where the filesystem does not allow it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_TEMPORARY = re.compile(r"^\.(?P<stem>.*)\.(?P<pid>\d+)\.tmp(?P<suffix>\.[^.]*)?$")


def remove_stale_temporaries(folder: str | Path, target: str | Path | None = None) -> list[Path]:
    """Remove the temporary files that processes no longer running left in ``folder`` (a kill mid-write).

    With ``target``, only those of that file. Returns what was removed.
    """
    removed = []
    target_name = Path(target).name if target is not None else None
    for candidate in Path(folder).glob(".*.tmp*"):
        match = _TEMPORARY.match(candidate.name)
        if not match or _process_alive(int(match["pid"])) or not _is_regular(candidate):
            continue
        if target_name is not None and f"{match['stem']}{match['suffix'] or ''}" != target_name:
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    return removed


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
