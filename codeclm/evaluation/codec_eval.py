"""Objective evaluation of a codec at several bandwidths, optionally against Opus.

>>> rows = evaluate_codec(codec, read_manifest("heldout.jsonl"), bandwidths=[1.5, 6], opus=True)
>>> rows[0]
{"system": "codeclm", "bandwidth_kbps": 1.5, "achieved_kbps": 1.21, "files": 10, "si_sdr": ..., ...}

Every file is loaded once at the codec's sample rate and channel count (optionally cropped to its
first ``seconds``), then for each bandwidth encoded and decoded with the codec, and, with
``opus=True``, sent through Opus at the same nominal bitrate. Each metric of
:mod:`codeclm.metrics` is computed against the original and averaged over files.

One row (a plain dict, JSON-ready) per (system, bandwidth):

==============  ==================================================================================
system          ``"codeclm"`` or ``"opus"``
bandwidth_kbps  the nominal bitrate asked for
achieved_kbps   codec: whole ``.cclm`` bytes (entropy-coded codes + container) * 8 / duration;
                Opus: packet payload bits / duration (see :mod:`codeclm.baselines`). Both are
                totals over all files divided by the total duration.
raw_kbps, n_q   codec only: codebooks used and their raw (not entropy-coded) bitrate
files, seconds  number of files and total seconds of audio evaluated
codebook_perplexity  codec only: exp(entropy) of each codebook's code histogram over all files
                (how many of its ``cardinality`` codes it effectively uses)
<metric>        mean over files; ``<metric>_failed`` counts files where it could not be computed
                (PESQ refuses signals without speech); the mean is then over the others, or
                ``None`` when every file failed
x_realtime      audio seconds / processing seconds. Codec: encode + decode on this machine's CPU
                or device; Opus: the whole ffmpeg round trip (process start-up and resampling
                included), so only a rough figure
==============  ==================================================================================

PESQ and STOI only make sense for speech: by default they are computed when every input record
has a transcript (``text``), otherwise only ``si_sdr``, ``mel`` and ``stft``. Pass ``metrics``
to choose explicitly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from codeclm.audio import load_audio
from codeclm.baselines import opus_available, opus_roundtrip
from codeclm.codec import CompressionModel
from codeclm.compression.api import compress_tensor
from codeclm.data.manifest import AUDIO_EXTENSIONS, AudioRecord, read_manifest, scan_folder
from codeclm.errors import CodecLMError
from codeclm.metrics import METRICS

__all__ = ["evaluate_codec", "roundtrip", "codebook_perplexity", "collect_inputs", "default_metrics", "BASIC_METRICS", "SPEECH_METRICS"]

BASIC_METRICS = ("si_sdr", "mel", "stft", "lines", "phase")
SPEECH_METRICS = ("pesq", "stoi")


def collect_inputs(source: str | os.PathLike, max_files: int | None = None) -> list[AudioRecord | str]:
    """Records of a manifest (``.jsonl``/``.json``), the audio files below a folder, or one audio file.

    Raises :class:`CodecLMError` when nothing usable is found.
    """
    path = Path(source)
    if path.is_dir():
        items: list = list(scan_folder(path, skip_errors=False).records)
    elif path.suffix.lower() in (".jsonl", ".json"):
        items = read_manifest(path)
    elif path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
        items = [str(path)]
    elif not path.exists():
        raise CodecLMError(f"{path}: no such file or folder")
    else:
        raise CodecLMError(f"{path}: expected a folder of audio, a manifest (.jsonl) or an audio file")
    if max_files is not None:
        if max_files <= 0:
            raise CodecLMError(f"max_files must be positive, got {max_files}")
        items = items[:max_files]
    if not items:
        raise CodecLMError(f"{path}: no audio files found")
    return items


def default_metrics(items: Sequence[AudioRecord | str | os.PathLike]) -> tuple[str, ...]:
    """``si_sdr mel stft``, plus ``pesq stoi`` when every item is a record with a transcript."""
    speech = bool(items) and all(isinstance(r, AudioRecord) and r.text for r in items)
    return BASIC_METRICS + SPEECH_METRICS if speech else BASIC_METRICS


@dataclass
class _Accumulator:
    """Running sums for one (system, bandwidth) row."""

    metrics: Sequence[str]
    files: int = 0
    seconds: float = 0.0
    bits: float = 0.0
    busy: float = 0.0  # processing seconds
    values: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    def add(self, ref: torch.Tensor, est: torch.Tensor, sample_rate: int, bits: float, busy: float) -> None:
        self.files += 1
        self.seconds += ref.shape[-1] / sample_rate
        self.bits += bits
        self.busy += busy
        for name in self.metrics:
            try:
                value = float(METRICS[name](ref, est, sample_rate))
            except CodecLMError:  # e.g. PESQ finding no speech: count it, keep going
                value = math.nan
            if math.isfinite(value):
                self.values.setdefault(name, []).append(value)
            else:
                self.failed[name] = self.failed.get(name, 0) + 1

    def row(self, **head) -> dict:
        row = dict(head)
        row["achieved_kbps"] = _round(self.bits / self.seconds / 1000) if self.seconds else None
        row.update(files=self.files, seconds=_round(self.seconds))
        for name in self.metrics:
            vals = self.values.get(name, [])
            row[name] = _round(sum(vals) / len(vals)) if vals else None
            if self.failed.get(name):
                row[f"{name}_failed"] = self.failed[name]
        row["x_realtime"] = _round(self.seconds / self.busy) if self.busy > 0 else None
        return row


def _round(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}") if abs(x) < 10 ** digits else round(x, 1)


def _number(x: float) -> int | float:
    """6.0 -> 6 so JSON rows read like the command line."""
    return int(x) if float(x).is_integer() else float(x)


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CodecLMError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(sorted(METRICS))}")
    for name, module in (("pesq", "pesq"), ("stoi", "pystoi")):
        if name in metrics:
            try:
                __import__(module)
            except ImportError:
                raise CodecLMError(f"metric {name!r} needs the {module!r} package: pip install {module}") from None
    return tuple(dict.fromkeys(metrics))  # unique, in order


def roundtrip(codec: CompressionModel, wav: torch.Tensor, bandwidth: float,
              usage: torch.Tensor | None = None) -> torch.Tensor:
    """``decode(encode(wav))`` trimmed to the input length, float32; ``wav`` is ``[C, T]`` (cast to
    the codec's weight dtype). ``usage`` ``[n_q, cardinality]`` (optional) accumulates how often
    each code was used."""
    x = wav[None].to(next(codec.parameters()).dtype)
    with torch.inference_mode():
        if getattr(codec.config, "normalize", False):  # EnCodec 48 kHz: per-chunk loudness scales
            codes, scales = codec.encode(x, bandwidth=bandwidth, return_scales=True)
            out = codec.decode(codes, scales)
        else:
            codes = codec.encode(x, bandwidth=bandwidth)
            out = codec.decode(codes)
        if usage is not None:
            for k in range(codes.shape[1]):
                usage[k] += torch.bincount(codes[:, k].reshape(-1), minlength=usage.shape[1])[: usage.shape[1]]
        return out[0, :, : wav.shape[-1]].float()


def codebook_perplexity(usage: torch.Tensor) -> list[float]:
    """exp(entropy) of each codebook's code histogram ``[n_q, cardinality]``: how many codes it
    effectively uses (cardinality = all equally often; 1 = one code only)."""
    p = usage.double() / usage.sum(-1, keepdim=True).clamp(min=1)
    entropy = -(p * p.clamp(min=1e-30).log()).sum(-1)
    return [round(float(v), 1) for v in entropy.exp()]


def evaluate_codec(
    codec: CompressionModel,
    records_or_paths: Iterable[AudioRecord | str | os.PathLike],
    bandwidths: Sequence[float],
    metrics: Sequence[str] | None = None,
    opus: bool | Sequence[float] = False,
    seconds: float | None = None,
    progress: bool = False,
) -> list[dict]:
    """Evaluate ``codec`` (and optionally Opus) at each of ``bandwidths`` kbps on the given audio.

    ``opus``: True compares Opus at each of ``bandwidths``; a list of kbps compares Opus at those.
    ``records_or_paths``: :class:`AudioRecord` s or audio file paths. ``metrics``: names from
    :data:`codeclm.metrics.METRICS` (None: :func:`default_metrics`). ``seconds`` crops every file
    to its first ``seconds``. Returns one row per (system, bandwidth), ordered by bandwidth with
    the codec first; see the module docstring for the fields. An unreadable file, a bandwidth
    above the model's, or an unknown metric raises a one-line :class:`CodecLMError`.
    """
    items = list(records_or_paths)
    if not items:
        raise CodecLMError("no audio files to evaluate")
    bandwidths = [float(b) for b in bandwidths]
    if not bandwidths:
        raise CodecLMError("give at least one bandwidth")
    n_q = {b: codec.num_codebooks_for(b) for b in bandwidths}  # CodesError when too high for the model
    metrics = _check_metrics(default_metrics(items) if metrics is None else metrics)
    if seconds is not None and not seconds > 0:
        raise CodecLMError(f"seconds must be positive, got {seconds}")
    if opus and not opus_available():
        raise CodecLMError("the Opus comparison needs ffmpeg (and ffprobe) with libopus: apt-get install ffmpeg")
    if opus and codec.channels > 2:
        raise CodecLMError(f"Opus takes mono or stereo audio; this codec has {codec.channels} channels")

    sr = codec.sample_rate
    opus_rates = ([] if opus is False else bandwidths if opus is True else [float(b) for b in opus])
    acc = {("codeclm", b): _Accumulator(metrics) for b in bandwidths}
    acc.update({("opus", b): _Accumulator(metrics) for b in opus_rates})
    usage = {b: torch.zeros(n_q[b], codec.cardinality, dtype=torch.long) for b in bandwidths}
    roundtrip(codec, torch.zeros(codec.channels, sr // 10), bandwidths[0])  # warm-up, so timings are fair
    bar = tqdm(total=len(items) * len(bandwidths), desc="eval codec", unit="file", disable=not progress,
               dynamic_ncols=True)
    try:
        for item in items:
            path = item.path if isinstance(item, AudioRecord) else str(item)
            wav, _ = load_audio(path, sr, codec.channels, duration=seconds)
            for b in bandwidths:
                bar.set_postfix_str(f"{b:g} kbps {Path(path).name}", refresh=False)
                start = time.perf_counter()
                decoded = roundtrip(codec, wav, b, usage[b])
                busy = time.perf_counter() - start
                bits = 8 * len(compress_tensor(wav, codec, b))
                acc["codeclm", b].add(wav, decoded, sr, bits, busy)
                bar.update(1)
            for b in opus_rates:
                start = time.perf_counter()
                decoded, kbps = opus_roundtrip(wav, sr, b)
                busy = time.perf_counter() - start
                acc["opus", b].add(wav, decoded, sr, kbps * 1000 * wav.shape[-1] / sr, busy)
    finally:
        bar.close()

    rows = []
    for b in sorted(set(bandwidths) | set(opus_rates)):
        if b in bandwidths:
            row = acc["codeclm", b].row(system="codeclm", bandwidth_kbps=_number(b), n_q=n_q[b],
                                        raw_kbps=_round(codec.bandwidth_of(n_q[b])))
            row["codebook_perplexity"] = codebook_perplexity(usage[b])
            rows.append(row)
        if b in opus_rates:
            rows.append(acc["opus", b].row(system="opus", bandwidth_kbps=_number(b)))
    return rows
