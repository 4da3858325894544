"""Run-folder hygiene: one writer per folder, no orphaned temporary files, no earlier log deleted.

A run folder (``--out``) holds a checkpoint, a train log and the run's record. Three things could spoil it:

- **Two runs writing one folder at once** (a second terminal, a rerun while the first is still going): their
  checkpoints and log lines would interleave into a run that never happened. :class:`RunLock` takes a lock file
  (``.lock``, created with ``O_EXCL``: atomic on every local file system) naming the owner's process and host; a
  second run is refused with a message naming them. A lock left by a process that no longer exists on this host (a
  ``kill -9``) is taken over; one from another host is not (its process cannot be checked from here).
- **Orphaned temporary files**: checkpoints and records are written through a temporary file and a rename
  (:func:`hparse.engine.checkpoint.save_checkpoint`); a process killed mid-write leaves ``.<name>.<random>.tmp``
  behind, possibly hundreds of MB. :func:`remove_orphaned_tmp` deletes them at the next start, under the lock.
- **An earlier log deleted by a fresh start**: a run that cannot resume (``--no-resume``, or no checkpoint) used to
  delete the folder's ``train_log.jsonl``. :func:`move_aside` renames it (and the run's ``result.json``) to
  ``<stem>.<UTC timestamp><suffix>`` instead, so nothing measured is lost.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME", "remove_orphaned_tmp", "move_aside"]

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live run holds the run folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """Exclusive lock of a run folder for one process: ``with RunLock(out_dir): ...``.

    Args:
        out_dir: the run folder (created if missing).
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.held = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                pid, host = owner.get("pid"), owner.get("host")
                stale = isinstance(pid, int) and host == me["host"] and pid != me["pid"] and not _alive(pid)
                if stale:
                    self.path.unlink(missing_ok=True)  # its process is gone (killed): take the folder over
                    continue
                who = f"process {pid} on {host}, since {owner.get('started')}" if pid else "an unknown process"
                raise RunLockedError(
                    f"run folder {self.out_dir} is in use by another run ({who}; lock file {self.path}). Wait for "
                    f"it to finish, or use another --out (out_dir); if that run is gone, delete {self.path}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}; delete it if no run uses {self.out_dir}")

    def release(self) -> None:
        if self.held:
            if self._owner().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_orphaned_tmp(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files an interrupted atomic write left in ``out_dir``; return them.

    Call it only while holding the folder's :class:`RunLock`: a live writer's temporary file looks the same.
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def move_aside(path: str | os.PathLike, stamp: str | None = None) -> Path | None:
    """Rename ``path`` to ``<stem>.<UTC timestamp><suffix>`` beside it (never over an existing file); return the new
    path, or ``None`` when ``path`` does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    stamp = stamp or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    count = 1
    while target.exists():
        count += 1
        target = path.with_name(f"{path.stem}.{stamp}-{count}{path.suffix}")
    os.replace(path, target)
    return target
