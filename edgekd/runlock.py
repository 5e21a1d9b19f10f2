"""One build per run folder: an OS file lock held for the life of the process that writes the folder.

The lock file sits beside the run folder (``<output_dir>/.<name>.lock``), not in it, so `--force` can delete
the folder while holding it. ``fcntl.flock`` is released by the kernel when the holder exits in any way
(normal exit, exception, SIGKILL), so a lock left by a dead process is simply taken over: its file still
names the old holder, but nobody holds the lock. The file is never deleted (deleting a lock file races with
a process that opened it just before), and the holder's pid and start time are written into it for the
message a refused build prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.layout import RunLayout


def lock_path(run_dir: Path) -> Path:
    return RunLayout(run_dir).lock


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[Path]:
    """Hold the run folder's lock for the block; EdgekdError (exit 2) naming the holder when another has it."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115  (held open for the whole block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy_error(run_dir, path) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock


def refuse_if_busy(run_dir: Path) -> None:
    """The run folder's "in use by" error, now, when another process holds its lock (nothing is created):
    checked before the folder's other checks, so a second build names the holder, not what it wrote."""
    path = lock_path(run_dir)
    if not path.is_file():
        return
    try:
        handle = open(path)  # noqa: SIM115  (closed below; closing releases a lock taken here)
    except OSError:
        return  # unreadable: the lock itself decides later
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise busy_error(run_dir, path) from None
    finally:
        handle.close()


def busy_error(run_dir: Path, path: Path) -> EdgekdError:
    return EdgekdError(
        f"output: run folder '{run_dir}' is in use by {describe_holder(path)}; "
        "wait for it to finish, or give this run another name (--set name=...)"
    )


def describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"edgekd pid {holder['pid']} (started {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another edgekd process"
