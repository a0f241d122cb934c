"""Atomic file output: write to a temporary file beside the target, then rename.

A crash, a full disk or an exception mid-write never leaves a half-written file under the
final name, and an existing file is replaced in one step.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_output"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it to ``path``.

    On any exception the temporary file is removed and the exception propagates. The final
    file gets the usual permissions (``0666 & ~umask``), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_object(line: str, where: str, required: tuple[str, ...] = (), noun: str = "field") -> dict:
    """One JSON-lines record: a dict with the ``required`` keys, else a one-line CodecLMError
    naming ``where`` (``file:line``)."""
    import json

    from codeclm.errors import CodecLMError

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
