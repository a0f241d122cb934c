"""Atomic file output: write to a temporary file beside the target, then publish it.

A crash, a full disk, an exception, Ctrl-C or (inside :func:`cleanup_on_signals`) SIGTERM/SIGHUP
mid-write never leaves a half-written file under the final name. With ``replace=True`` an
existing file is replaced in one step; with ``replace=False`` the file is published only if the
name is still free at that instant (``renameat2(RENAME_NOREPLACE)``, else ``link`` + ``unlink``),
so a file created at the destination while the output was being written is never clobbered.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from codeclm.errors import CodecLMError, Interrupted, OutputExistsError

__all__ = ["atomic_output", "cleanup_on_signals", "os_error", "publish"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_error(path, exc: OSError, doing: str = "cannot write") -> CodecLMError:
    """A one-line CodecLMError for an OSError while writing ``path`` (disk full, read-only, ...)."""
    reason = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied", errno.EFBIG: "file too large"}.get(exc.errno)
    return CodecLMError(f"{path}: {doing} ({reason or exc.strerror or type(exc).__name__})")


def _renameat2_noreplace(src: str, dst: str) -> bool:
    """``renameat2(src, dst, RENAME_NOREPLACE)``; False when the kernel, libc or file system lacks it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, noreplace = -100, 1
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, replace: bool = True) -> None:
    """Give the finished file ``tmp`` the name ``path`` (same folder).

    ``replace=False`` never replaces an existing ``path``, even one created a moment ago: it
    raises :class:`OutputExistsError` and leaves ``tmp`` in place for the caller to remove.
    """
    tmp, path = os.fspath(tmp), os.fspath(path)
    if replace:
        os.replace(tmp, path)
        return
    try:
        if _renameat2_noreplace(tmp, path):
            return
        try:
            os.link(tmp, path)  # atomic: fails if path exists
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            if os.path.lexists(path):  # no hard links here: the last check before the rename
                raise FileExistsError(errno.EEXIST, "exists", path) from None
            os.rename(tmp, path)
            return
        os.unlink(tmp)
    except FileExistsError:
        raise OutputExistsError(path) from None


@contextmanager
def atomic_output(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success publish it as ``path``.

    On any exception the temporary file is removed and the exception propagates. The final
    file gets the usual permissions (``0666 & ~umask``), not ``mkstemp``'s 0600. ``replace=False``
    refuses (``OutputExistsError``) to replace a file that exists when the output is published.
    A folder that cannot be written (read-only, missing, no permission) is a one-line CodecLMError.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as exc:
        raise os_error(path, exc, f"cannot create a file in folder {path.parent}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        publish(tmp, path, replace)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Treat SIGTERM and SIGHUP like Ctrl-C inside the block: they raise :class:`Interrupted`
    (a KeyboardInterrupt), so ``finally`` blocks remove temporary files; once the block has
    unwound, the signal is delivered again with the previous handler (by default the process
    then dies of it, as it would have). Only the main thread can install handlers; elsewhere
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    old = {}
    try:
        for sig in _SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup: SIGHUP stays ignored
                old[sig] = signal.signal(sig, handler)
    except (ValueError, OSError):  # not allowed here (embedded interpreters)
        pass
    try:
        yield
    except Interrupted as exc:
        for sig, previous in old.items():
            signal.signal(sig, previous)
        old = {}
        os.kill(os.getpid(), exc.signum)
        raise  # the previous handler returned (or ignored the signal): keep unwinding as Ctrl-C
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def json_object(line: str, where: str, required: tuple[str, ...] = (), noun: str = "field") -> dict:
    """One JSON-lines record: a dict with the ``required`` keys, else a one-line CodecLMError
    naming ``where`` (``file:line``)."""
    import json

    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CodecLMError(f"{where}: malformed JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise CodecLMError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CodecLMError(f"{where}: missing {noun}(s) {', '.join(missing)}")
    return obj


def replace_folder(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the folder ``src`` to ``dst``, replacing what was there (e.g. a codec into an export)."""
    import shutil

    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst
