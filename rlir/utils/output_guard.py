"""Guards around what a command writes: the right place, one writer at a time, nothing empty left behind.

    check_output(Output("runs/gen", "--out"), [Input("runs/data", "--data", dataset=True)])
    with OutputLock("runs/gen", "rlir generate ...") as lock:
        ...                       # the command's work
        lock.succeeded = True     # otherwise a folder this command created and left empty is removed

Every check runs before anything is written, so a refused command changes nothing.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from rlir.errors import RlirError

LOCK_FILE = ".rlir.lock"
HOLDER_FILE = ".rlir.lock.json"       # who holds the lock (flock itself records nobody)


@dataclass
class Output:
    path: str
    option: str = "--out"             # how the user named it
    kind: str = "folder"              # "folder" | "file"


@dataclass
class Input:
    path: str
    option: str
    dataset: bool = True              # a dataset: no output may be it, lie inside it or hold it


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(out: Output, inputs: list[Input] = ()) -> None:
    """Refuse an output that would write into an input, or that the file system cannot take."""
    target = Path(out.path).resolve()
    for i in inputs:
        if not i.path:
            continue
        src = Path(i.path).resolve()
        if _within(target, src):
            where = "is" if target == src else "lies inside"
            raise RlirError(f"{out.option} {out.path} {where} the input {i.option} {i.path}: rlir never writes "
                            f"into its inputs; give another {out.option}")
        if i.dataset and _within(src, target):
            raise RlirError(f"{out.option} {out.path} holds the input {i.option} {i.path}: rlir never writes "
                            f"over its inputs; give another {out.option}")
    check_location(out)


def check_location(out: Output) -> None:
    """The output is of the right kind (folder or file) and its nearest existing folder is writable."""
    p = Path(out.path)
    if p.exists():
        if out.kind == "folder" and not p.is_dir():
            raise RlirError(f"{out.option} {out.path} is a file, not a folder")
        if out.kind == "file" and p.is_dir():
            raise RlirError(f"{out.option} {out.path} is a folder, not a file")
    existing = p if p.exists() and out.kind == "folder" else p.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RlirError(f"{out.option} {out.path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RlirError(f"{out.option} {out.path}: no permission to write in {existing}")
    if out.kind == "file" and p.exists() and not os.access(p, os.W_OK):
        raise RlirError(f"{out.option} {out.path}: no permission to overwrite it")


class OutputLock:
    """An exclusive lock (filelock) on an output folder, taken for the command's whole run.

    A second writer is refused with a message naming the holder (pid, host, command); the kernel
    drops the lock when its holder dies, so a killed run never leaves a stale lock. A folder this
    command created is removed again when the command fails before writing anything into it."""

    def __init__(self, folder: str | Path, command: str):
        self.folder, self.command = Path(folder), command
        self.succeeded = False
        self._created: list[Path] = []
        self._lock = None

    def __enter__(self) -> "OutputLock":
        from filelock import FileLock, Timeout
        missing = self.folder
        while not missing.exists():
            self._created.append(missing)
            missing = missing.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.folder / LOCK_FILE), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise RlirError(f"{self.folder} is being written by another rlir process ({self._holder()}); "
                            f"wait for it to end or write elsewhere") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "since": datetime.datetime.now().isoformat(timespec="seconds")}
        (self.folder / HOLDER_FILE).write_text(json.dumps(holder) + "\n")
        return self

    def _holder(self) -> str:
        try:
            h = json.loads((self.folder / HOLDER_FILE).read_text())
            return f"pid {h['pid']} on {h['host']} since {h['since']}: {h['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder not recorded yet"

    def __exit__(self, *exc) -> None:
        (self.folder / HOLDER_FILE).unlink(missing_ok=True)
        self._lock.release()
        if not self.succeeded and self._created:
            self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        if any(p.name != LOCK_FILE for p in self.folder.iterdir()):
            return                          # the command wrote something: keep it (a resume may use it)
        (self.folder / LOCK_FILE).unlink(missing_ok=True)
        for p in self._created:             # innermost first
            try:
                p.rmdir()
            except OSError:
                break
