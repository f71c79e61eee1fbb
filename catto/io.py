"""Writing files so that nothing is ever half-written: every file catto writes goes through here.

A file is written to a temporary name in its destination folder, flushed to disk, then renamed over the
destination (`os.replace` is atomic on POSIX and Windows): a reader, or a re-run after a crash, sees the old file
or the new one, never a torn one. Folders (an extracted wheel, a checkpoint) are built under a temporary name and
renamed the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any


def _default_mode(kind_bits: int) -> int:
    """`kind_bits` (0o666 for files, 0o777 for folders) less the process umask: the mode `open()` / `os.makedirs`
    would have given. `tempfile` creates private (0o600 / 0o700) names, which would otherwise become the final
    files and hide results and checkpoints from the rest of a team on a shared machine."""
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return kind_bits & ~mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to `path`; on a clean exit it replaces `path`, on an error it is removed.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a", "x.txt")
        >>> with atomic_write(path) as f:
        ...     _ = f.write("done")
        >>> open(path).read()
        'done'
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        # keep the mode of the file being replaced, else what a plain open() would give
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else _default_mode(0o666))
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write `payload` as indented JSON to `path` atomically (see `atomic_write`)."""
    with atomic_write(path) as f:
        json.dump(payload, f, indent=2, sort_keys=False)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in `path`; `default` when the file does not exist and a default is given (else FileNotFoundError)."""
    if default is not None and not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def cached_json(path: str | os.PathLike, key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()`, remembered in `path` under `key` (JSON): a file holding the same key is read back instead of
    computing again; another key (other inputs or settings) is recomputed and replaces it. The value is returned as
    read back from JSON, so a cached and a fresh call give the same types (lists, string keys).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.json")
    >>> cached_json(path, {"n": 2}, lambda: {"square": 4}), cached_json(path, {"n": 2}, lambda: 1 / 0)
    ({'square': 4}, {'square': 4})
    """
    hit = read_json(path, default={})
    if isinstance(hit, dict) and hit.get("key") == key and "value" in hit:
        return hit["value"]
    payload = json.loads(json.dumps({"key": key, "value": compute()}))
    write_json_atomic(path, payload)
    return payload["value"]


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False) -> Iterator[str]:
    """Yield a temporary folder next to `path`; on a clean exit it becomes `path` (an existing `path` is replaced
    only with `replace=True`), on an error it is removed."""
    path = os.fspath(path).rstrip("/")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(path)}-")
    try:
        os.chmod(tmp, _default_mode(0o777))
        yield tmp
        if os.path.exists(path):
            if not replace:
                raise FileExistsError(f"{path} appeared while it was being written; not replacing it.")
            old = tempfile.mkdtemp(dir=parent, prefix=f".old-{os.path.basename(path)}-")
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(folder: str | os.PathLike) -> None:
    """Create `folder` and write (then remove) a probe file there; an `OSError` says why it cannot be written. Called
    before any model loads, so an unwritable output folder is one line, not a failure after the work."""
    folder = os.fspath(folder)
    probe = os.path.join(folder, f".catto-write-check-{os.getpid()}")
    os.makedirs(folder, exist_ok=True)
    with open(probe, "w") as f:
        f.write("ok")
    os.remove(probe)

