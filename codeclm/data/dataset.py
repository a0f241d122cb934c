"""Torch datasets over manifests: fixed-length audio segments, duration buckets, collation.

Typical use::

    ds = AudioSegmentDataset(read_manifest("train.jsonl"), sample_rate=24000, channels=1,
                             segment_seconds=2.0)
    sampler = DurationBucketSampler(ds.records, batch_size=16, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_audio, num_workers=2)
    for epoch in range(n):
        ds.set_epoch(epoch); sampler.set_epoch(epoch)
        for batch in loader:
            bad_files += int(batch["failed"].sum())   # unreadable files replaced in this batch

Determinism: the crop of item ``i`` depends only on (seed, epoch, i), and a replacement for an
unreadable file only on (seed, epoch, i, attempt), so results do not depend on worker count or
order. Workers get a copy of the dataset when an epoch's iterator starts, so call ``set_epoch``
before iterating (and do not use ``persistent_workers=True`` with per-epoch crops).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from codeclm.audio import load_audio
from codeclm.data.manifest import AudioRecord
from codeclm.errors import AudioError, CodecLMError

__all__ = ["AudioSegmentDataset", "DurationBucketSampler", "collate_audio"]

_META = ("text", "speaker", "caption", "language")


class AudioSegmentDataset(Dataset):
    """Segments of ``segment_seconds`` from each record, as float32 ``[channels, samples]``.

    Each item is a dict: ``wav`` (zero-padded at the end when the file is shorter), ``length``
    (valid samples), ``index`` (the record actually loaded), ``failed`` (how many unreadable
    files were skipped to produce it) and ``text`` / ``speaker`` / ``caption`` / ``language``
    when the record has them. Only the needed part of a file is read (at the file's own rate),
    then resampled and mixed to ``channels``. ``segment_seconds=None`` loads whole files.

    ``on_error="skip"`` replaces an unreadable or missing file by another record chosen
    deterministically (up to ``max_retries`` times); ``"raise"`` raises its AudioError.
    ``errors`` counts failures per path in this process (DataLoader workers keep their own, so
    read ``failed`` from the batches for a global count).
    """

    def __init__(
        self,
        records: Sequence[AudioRecord],
        sample_rate: int,
        channels: int = 1,
        segment_seconds: float | None = None,
        random_crop: bool = True,
        seed: int = 0,
        on_error: str = "skip",
        max_retries: int = 10,
    ):
        self.records = list(records)
        if not self.records:
            raise CodecLMError("AudioSegmentDataset needs at least one record")
        if on_error not in ("skip", "raise"):
            raise CodecLMError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if sample_rate <= 0 or channels <= 0:
            raise CodecLMError(f"sample_rate and channels must be positive, got {sample_rate}, {channels}")
        if segment_seconds is not None and segment_seconds <= 0:
            raise CodecLMError(f"segment_seconds must be positive, got {segment_seconds}")
        self.sample_rate, self.channels = int(sample_rate), int(channels)
        self.segment_seconds = segment_seconds
        self.segment_samples = None if segment_seconds is None else int(round(segment_seconds * sample_rate))
        self.random_crop, self.seed, self.on_error = random_crop, int(seed), on_error
        self.max_retries = int(max_retries)
        self.epoch = 0
        self.errors: Counter[str] = Counter()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops (and replacements) ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def crop_start(self, index: int) -> float:
        """Start time (s) of item ``index``'s segment in this epoch, on the file's sample grid."""
        rec = self.records[index]
        if self.segment_seconds is None or not self.random_crop:
            return 0.0
        spare = int(math.floor((rec.duration - self.segment_seconds) * rec.sample_rate))
        if spare <= 0:
            return 0.0
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(0, spare + 1)) / rec.sample_rate

    def load(self, index: int) -> dict[str, Any]:
        """Item ``index`` without error handling (raises AudioError for a bad file)."""
        rec = self.records[index]
        wav, _ = load_audio(rec.path, sample_rate=self.sample_rate, channels=self.channels,
                            start=self.crop_start(index), duration=self.segment_seconds)
        length = wav.shape[-1]
        if self.segment_samples is not None:
            length = min(length, self.segment_samples)
            wav = wav[:, : self.segment_samples]
            if wav.shape[-1] < self.segment_samples:
                wav = torch.nn.functional.pad(wav, (0, self.segment_samples - wav.shape[-1]))
        item: dict[str, Any] = {"wav": wav.contiguous(), "length": length, "index": index}
        for key in _META:
            value = getattr(rec, key)
            if value is not None:
                item[key] = value
        return item

    def _replacement(self, index: int, attempt: int) -> int:
        rng = np.random.default_rng([self.seed, self.epoch, index, attempt])
        return int(rng.integers(len(self.records)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} records")
        failed, current, first_error = 0, index, None
        for attempt in range(self.max_retries + 1):
            if attempt:
                current = self._replacement(index, attempt)
            try:
                item = self.load(current)
            except AudioError as exc:
                path = self.records[current].path
                self.errors[path] += 1
                if self.on_error == "raise":
                    raise
                if self.errors[path] == 1:  # each unreadable file once, with the running count
                    print(f"codeclm: warning: skipping an unreadable file: {exc} ({len(self.errors)} unreadable "
                          f"file(s) so far, replaced by other records)", file=sys.stderr, flush=True)
                failed += 1
                first_error = first_error or str(exc)
                continue
            item["failed"] = failed
            return item
        raise AudioError(f"{failed} unreadable files in a row while loading item {index}; "
                         f"first: {first_error}")


class DurationBucketSampler(Sampler[list[int]]):
    """Batches of indices with similar durations, deterministic under ``seed`` and epoch.

    Per epoch: shuffle all indices, cut them into pools of ``pool_batches * batch_size``, sort
    each pool by duration, cut pools into batches and shuffle the batch order. Every index
    appears exactly once per epoch (``drop_last`` drops each pool's short final batch).
    ``shuffle=False`` sorts everything by duration. Use as ``DataLoader(batch_sampler=...)``.
    """

    def __init__(
        self,
        durations: Sequence[float] | Sequence[AudioRecord],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        pool_batches: int = 50,
    ):
        if batch_size <= 0 or pool_batches <= 0:
            raise CodecLMError(f"batch_size and pool_batches must be positive, got {batch_size}, {pool_batches}")
        self.durations = np.asarray([getattr(d, "duration", d) for d in durations], dtype=np.float64)
        if self.durations.size == 0:
            raise CodecLMError("DurationBucketSampler needs at least one duration")
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.drop_last, self.pool_batches = drop_last, int(pool_batches)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _pools(self) -> list[np.ndarray]:
        n = len(self.durations)
        if not self.shuffle:
            return [np.arange(n)]
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        size = self.batch_size * self.pool_batches
        return [order[i:i + size] for i in range(0, n, size)]

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in the order they are yielded."""
        out = []
        for pool in self._pools():
            pool = pool[np.argsort(self.durations[pool], kind="stable")]
            for i in range(0, len(pool), self.batch_size):
                batch = pool[i:i + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    out.append([int(j) for j in batch])
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch, 1]).permutation(len(out))
            out = [out[i] for i in perm]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        n = len(self.durations)
        sizes = [n] if not self.shuffle else [
            min(self.batch_size * self.pool_batches, n - i) for i in range(0, n, self.batch_size * self.pool_batches)]
        if self.drop_last:
            return sum(s // self.batch_size for s in sizes)
        return sum(math.ceil(s / self.batch_size) for s in sizes)


def collate_audio(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch: ``wav`` [B, C, T] zero-padded to the longest, ``length``,
    ``index`` and ``failed`` as int64 tensors [B], and lists for text/speaker/caption/language
    (``None`` where an item lacks one) when any item has that field."""
    if not items:
        raise CodecLMError("collate_audio got an empty batch")
    longest = max(it["wav"].shape[-1] for it in items)
    wav = torch.zeros(len(items), items[0]["wav"].shape[0], longest, dtype=items[0]["wav"].dtype)
    for b, it in enumerate(items):
        wav[b, :, : it["wav"].shape[-1]] = it["wav"]
    batch: dict[str, Any] = {"wav": wav}
    for key in ("length", "index", "failed"):
        batch[key] = torch.tensor([int(it.get(key, 0)) for it in items], dtype=torch.long)
    for key in _META:
        if any(key in it for it in items):
            batch[key] = [it.get(key) for it in items]
    return batch
