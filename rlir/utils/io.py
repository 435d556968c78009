"""Atomic writes: write to a temporary file in the same directory, fsync, then rename."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it, so set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> None:
    """Give a file written by a library that creates it 0600 (safetensors' save_file does) the mode any
    other file gets: a checkpoint or cache is shared like the rest of the run."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call write(f) on a temporary file, then rename it to path, so readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=TMP_SUFFIX)
    try:
        # mkstemp makes the file 0600; a dataset or checkpoint is shared like any other file: follow the umask
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows))
