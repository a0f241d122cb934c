"""Data for codeclm: manifests, corpus readers, torch datasets, synthetic and packaged audio.

* :mod:`~codeclm.data.manifest`: :class:`AudioRecord`, JSON-lines manifests, folder scans.
* :mod:`~codeclm.data.readers`: LJSpeech, LibriTTS and VCTK layouts.
* :mod:`~codeclm.data.dataset`: :class:`AudioSegmentDataset`, :class:`DurationBucketSampler`,
  :func:`collate_audio`.
* :mod:`~codeclm.data.synth_speech` / :mod:`~codeclm.data.synth_music`: espeak-ng speech and
  fluidsynth-rendered MIDI with transcripts and captions. Their functions are not re-exported
  here (they share the modules' names): ``from codeclm.data.synth_speech import synth_speech``.
* :mod:`~codeclm.data.real`: the Debian-packaged recordings codeclm may train on, held-out split.
* the ``codeclm data`` command group lives in :mod:`codeclm.cli.data`.
"""

from codeclm.data.dataset import AudioSegmentDataset, DurationBucketSampler, collate_audio
from codeclm.data.manifest import AudioRecord, ScanResult, read_manifest, scan_folder, write_manifest
from codeclm.data.readers import read_libritts, read_ljspeech, read_vctk
from codeclm.data.real import asterisk_speech, split_held_out, wesnoth_music

__all__ = [
    "AudioRecord", "ScanResult", "read_manifest", "write_manifest", "scan_folder",
    "read_ljspeech", "read_libritts", "read_vctk",
    "AudioSegmentDataset", "DurationBucketSampler", "collate_audio",
    "asterisk_speech", "wesnoth_music", "split_held_out",
]
