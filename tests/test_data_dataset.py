"""AudioSegmentDataset crops, padding, error handling; DurationBucketSampler; collate_audio."""

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from codeclm.data.dataset import AudioSegmentDataset, DurationBucketSampler, collate_audio
from codeclm.data.manifest import AudioRecord
from codeclm.errors import AudioError, CodecLMError

SR = 8000


def _ramp(path, n, sr=SR, channels=1, offset=0.0):
    """A float WAV whose sample k holds (offset + k) / 1e5, so a crop tells where it came from."""
    x = (offset + np.arange(n, dtype=np.float64)) / 1e5
    data = np.stack([x, -x], axis=1) if channels == 2 else x
    sf.write(str(path), data.astype(np.float32), sr, subtype="FLOAT")
    return AudioRecord(str(path), n / sr, sr, channels)


@pytest.fixture
def records(tmp_path):
    recs = [_ramp(tmp_path / f"r{i}.wav", n, offset=10000 * i) for i, n in enumerate((16000, 12000, 8000, 800))]
    recs[0].text, recs[1].speaker, recs[2].caption = "words", "spk", "a ramp"
    return recs


def test_random_crop_matches_source_and_is_deterministic(records):
    ds = AudioSegmentDataset(records, SR, 1, segment_seconds=0.5, seed=3)
    item = ds[0]
    start = int(round(ds.crop_start(0) * SR))
    expected = (np.arange(start, start + 4000) / 1e5).astype(np.float32)
    assert torch.allclose(item["wav"][0], torch.from_numpy(expected), atol=1e-7)
    assert item["length"] == 4000 and item["index"] == 0 and item["failed"] == 0 and item["text"] == "words"
    assert "speaker" not in item
    again = AudioSegmentDataset(records, SR, 1, segment_seconds=0.5, seed=3)[0]
    assert torch.equal(item["wav"], again["wav"])
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        starts.add(ds.crop_start(0))
        assert 0.0 <= ds.crop_start(0) <= 1.5
    assert len(starts) > 3  # epochs see different crops
    other_seed = AudioSegmentDataset(records, SR, 1, segment_seconds=0.5, seed=4)
    assert other_seed.crop_start(0) != AudioSegmentDataset(records, SR, 1, segment_seconds=0.5, seed=3).crop_start(0)


def test_no_random_crop_starts_at_zero(records):
    ds = AudioSegmentDataset(records, SR, 1, segment_seconds=0.25, random_crop=False)
    assert ds.crop_start(1) == 0.0
    assert float(ds[1]["wav"][0, 0]) == pytest.approx(10000 / 1e5, abs=1e-7)


def test_short_file_is_zero_padded(records):
    item = AudioSegmentDataset(records, SR, 1, segment_seconds=0.5)[3]  # 800 samples
    assert item["wav"].shape == (1, 4000) and item["length"] == 800
    expected = (30000 + np.arange(800)) / 1e5
    assert np.allclose(item["wav"][0, :800].numpy(), expected, atol=1e-7)
    assert torch.count_nonzero(item["wav"][0, 800:]) == 0


def test_resample_and_channel_mixing(tmp_path):
    rec = _ramp(tmp_path / "st.wav", 8000, channels=2)
    item = AudioSegmentDataset([rec], 16000, 1, segment_seconds=0.5, random_crop=False)[0]
    assert item["wav"].shape == (1, 8000) and item["length"] == 8000
    assert item["wav"].abs().max() < 1e-6  # mean of x and -x
    item2 = AudioSegmentDataset([rec], 16000, 2, segment_seconds=0.5, random_crop=False)[0]
    # resampled ramp: about twice as many samples, same slope per second
    mid = item2["wav"][0, 2000:6000].numpy()
    assert np.allclose(np.diff(mid), 0.5 / 1e5, atol=2e-7)


def test_whole_file_mode(records):
    ds = AudioSegmentDataset(records, SR, 1, segment_seconds=None)
    assert ds[2]["wav"].shape == (1, 8000) and ds[2]["length"] == 8000


def test_bad_file_skip_and_raise(records, tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    bad = [AudioRecord(str(tmp_path / name), 1.0, SR, 1) for name in ("missing.wav", "broken.wav")]
    ds = AudioSegmentDataset(records + bad, SR, 1, segment_seconds=0.25, seed=1)
    for i in (4, 5):
        item = ds[i]
        assert item["failed"] >= 1 and item["index"] < 4  # a good record replaced it
        assert torch.equal(item["wav"], ds[i]["wav"])  # deterministic replacement
    assert ds.errors[str(tmp_path / "missing.wav")] == 2 and ds.errors[str(tmp_path / "broken.wav")] == 2
    strict = AudioSegmentDataset(records + bad, SR, 1, segment_seconds=0.25, on_error="raise")
    with pytest.raises(AudioError, match="missing.wav: no such file"):
        strict[4]
    with pytest.raises(AudioError, match="broken.wav: not a readable audio file"):
        strict[5]
    only_bad = AudioSegmentDataset(bad, SR, 1, segment_seconds=0.25, max_retries=3)
    with pytest.raises(AudioError, match="4 unreadable files in a row"):
        only_bad[0]
    with pytest.raises(CodecLMError):
        AudioSegmentDataset(records, SR, on_error="ignore")


def test_bucket_sampler_coverage_determinism_and_similarity():
    rng = np.random.default_rng(0)
    durations = rng.uniform(0.5, 20.0, size=203).tolist()
    s = DurationBucketSampler(durations, batch_size=8, seed=5, pool_batches=4)
    b0 = list(s)
    assert len(b0) == len(s)
    assert sorted(i for b in b0 for i in b) == list(range(203))
    assert b0 == list(DurationBucketSampler(durations, batch_size=8, seed=5, pool_batches=4))
    s.set_epoch(1)
    assert list(s) != b0 and sorted(i for b in s for i in b) == list(range(203))
    spread = np.mean([np.ptp([durations[i] for i in b]) for b in b0 if len(b) == 8])
    random_spread = np.mean([np.ptp(rng.choice(durations, 8)) for _ in range(200)])
    assert spread < 0.4 * random_spread  # batches hold similar durations
    dropped = DurationBucketSampler(durations, batch_size=8, seed=5, pool_batches=4, drop_last=True)
    assert all(len(b) == 8 for b in dropped) and len(list(dropped)) == len(dropped)
    ordered = list(DurationBucketSampler(durations, batch_size=10, shuffle=False))
    flat = [durations[i] for b in ordered for i in b]
    assert flat == sorted(durations) and len(ordered) == 21


def test_collate_pads_and_lists_metadata():
    items = [{"wav": torch.ones(1, 5), "length": 5, "index": 0, "failed": 0, "text": "a"},
             {"wav": 2 * torch.ones(1, 3), "length": 3, "index": 7, "failed": 1}]
    batch = collate_audio(items)
    assert batch["wav"].shape == (2, 1, 5)
    assert batch["wav"][1, 0].tolist() == [2, 2, 2, 0, 0]
    assert batch["length"].tolist() == [5, 3] and batch["index"].tolist() == [0, 7]
    assert batch["failed"].tolist() == [0, 1] and batch["text"] == ["a", None] and "speaker" not in batch


def test_dataloader_with_workers_matches_single_process(records, tmp_path):
    recs = records + [AudioRecord(str(tmp_path / "gone.wav"), 1.0, SR, 1)]
    ds = AudioSegmentDataset(recs, SR, 1, segment_seconds=0.25, seed=2)
    ds.set_epoch(3)
    sampler = DurationBucketSampler(recs, batch_size=2, seed=2)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_audio, num_workers=2)
    got = {}
    failed = 0
    for batch in loader:
        failed += int(batch["failed"].sum())
        for b in range(batch["wav"].shape[0]):
            got[int(batch["index"][b])] = batch["wav"][b]
    assert failed == 1
    for i in range(4):
        assert torch.equal(got[i], ds[i]["wav"])
