"""``--device`` values: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` ... checked up front.

A device name torch does not know, or a GPU this machine or this torch build does not have,
is a one-line :class:`~codeclm.errors.CodecLMError` before any model is loaded.
"""

from __future__ import annotations

import torch

from codeclm.errors import CodecLMError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The ``torch.device`` for ``name`` (None / ``"auto"``: cuda when available, else cpu)."""
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name.strip() if isinstance(name, str) else name)
    except (RuntimeError, TypeError, ValueError):
        raise CodecLMError(f"--device {name!r} is not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CodecLMError(f"--device {name}: {why} (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CodecLMError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CodecLMError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    elif device.type != "cpu":
        raise CodecLMError(f"--device {name}: unsupported device type {device.type!r} (use auto, cpu, cuda or mps)")
    return device
