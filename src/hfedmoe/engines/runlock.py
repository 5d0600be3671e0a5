"""One writer per run folder: ``<run>/.lock`` holds the writer's pid and host.

Taken with ``O_CREAT | O_EXCL`` (atomic on local file systems). A lock whose process is gone
(same host, pid not alive) is stale: it is replaced, and the replacement is logged. A lock held by
a live process is a one-line :class:`HFedMoEError`. A pid reused by an unrelated process after a
crash reads as alive: the message names the file to delete in that case.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

from hfedmoe.errors import HFedMoEError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Context manager holding ``<run_dir>/.lock``; ``run_dir`` is created if needed (and removed
    again on release when this lock created it and it is still empty)."""

    def __init__(self, run_dir: Path, what: str = "--out") -> None:
        self.dir = Path(run_dir)
        self.what = what
        self.held = False
        self._created_dir = False

    @property
    def path(self) -> Path:
        return self.dir / LOCK_FILE

    def acquire(self) -> RunLock:
        try:
            return self._acquire()
        except OSError as exc:
            self.release()
            raise HFedMoEError(f"{self.what}: cannot lock {self.dir}: {exc.strerror or exc}") from None

    def _acquire(self) -> RunLock:
        if self.dir.exists() and not self.dir.is_dir():
            raise HFedMoEError(f"{self.what}: expected a directory, got an existing file {self.dir}")
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            self._created_dir = True
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale()
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self.held = True
            return self
        raise HFedMoEError(f"{self.what}: {self.dir} is locked by another writer ({self.path}); retry")

    def _clear_if_stale(self) -> None:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        pid, host = info.get("pid"), info.get("host")
        if host not in (None, socket.gethostname()):
            raise HFedMoEError(f"{self.what}: {self.dir} is in use by hfedmoe pid {pid} on host {host} "
                               f"(delete {self.path} if that process is gone)")
        if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
            raise HFedMoEError(f"{self.what}: {self.dir} is in use by another hfedmoe process (pid {pid}); wait for "
                               f"it to finish or stop it (delete {self.path} only if no such run is going)")
        if isinstance(pid, int) and pid == os.getpid():
            raise HFedMoEError(f"{self.what}: {self.dir} is already locked by this process")
        log.warning("%s: removing the stale lock of a process that is gone (pid %s)", self.dir, pid)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def moved_to(self, new_dir: Path) -> None:
        """The locked folder was renamed to ``new_dir`` (the lock file went with it)."""
        self.dir = Path(new_dir)
        self._created_dir = False

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False
        if self._created_dir:
            try:
                self.dir.rmdir()  # only when empty: a failed start leaves nothing behind
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def replace_run(staging: Path, target: Path) -> Path:
    """``run --overwrite``: move the run folder ``target`` aside, ``staging`` in its place, and delete
    the old one; returns where the old one was (its lock file went with it)."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return old
