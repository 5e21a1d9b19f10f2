"""Writing files so that a crash never leaves half of one behind: write beside it, then rename over it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None:
            raise
        # A failed write() (a full disk) names no file: name the one being written.
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


# A native writer (OpenVINO's serializer, torch's zip writer) that runs out of disk raises its own RuntimeError
# ("basic_ios::clear: iostream error"); with less than this free on the folder's file system it is reported
# as the full disk it is.
NEARLY_FULL_BYTES = 16 << 20


@contextlib.contextmanager
def native_writes(path: Path) -> Iterator[None]:
    """Turn a native library's write failure on a nearly full file system into OSError(ENOSPC, path)."""
    try:
        yield
    except RuntimeError as exc:
        stats = os.statvfs(nearest_existing(Path(path).parent))
        if stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists (what a folder about to be made would be made in)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def folder_problem(path: Path) -> str | None:
    """Why files cannot be written into the folder `path` (made when missing), or None; creates nothing, so
    a command can refuse a bad output folder before its work rather than after it."""
    try:
        return _folder_problem(Path(path))
    except OSError as error:  # a parent this user may not even look into
        return f"cannot be reached ({error.strerror})"


def _folder_problem(path: Path) -> str | None:
    if path.exists():
        if not path.is_dir():
            return "is a file, not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else "is a folder this user cannot write in"
    ancestor = nearest_existing(path.parent)
    if not ancestor.is_dir():
        return f"lies under '{ancestor}', which is a file"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot be made: this user cannot write in '{ancestor}'"
    return None


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
