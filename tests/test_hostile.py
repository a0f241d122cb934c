"""Hostile files and faults (issue 14): bombs, reordered chunks, races, signals, full disks, bad configs.

Each test names the item of the issue it covers. Crafted files are built here byte by byte (with
valid CRCs where the attack needs them), so they exercise the checks behind the checksums.
"""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codeclm.audio import save_audio
from codeclm.codec import Codec, CodecConfig
from codeclm.compression import compress_file, compress_tensor, decompress_tensor, read_info
from codeclm.compression import format as fmt
from codeclm.errors import BitstreamError, CodecLMError, OutputExistsError

SR = 24000
CLI = [sys.executable, "-m", "codeclm.cli"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread for the module


@pytest.fixture(scope="module")
def codec(one_thread) -> Codec:
    torch.manual_seed(0)
    codec = Codec(CodecConfig(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=64, lstm_layers=1,
                              target_bandwidths=[4.5, 9.0, 18.0], kmeans_init=True, kmeans_iters=2)).train()
    with torch.no_grad():
        codec(tone(4800)[None])
    return codec.eval()


@pytest.fixture(scope="module")
def model_dir(codec, tmp_path_factory) -> Path:
    return codec.save_pretrained(tmp_path_factory.mktemp("model") / "codec")


def tone(n: int, seed: int = 0, freq: float = 300.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    return (0.3 * torch.sin(2 * np.pi * freq * t) + 0.02 * torch.randn(n, generator=g))[None]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def env(**extra) -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    e.pop("CODECLM_CHECKPOINTS", None)
    return e


def parse(data: bytes):
    f = io.BytesIO(data)
    header = fmt.read_header(f)
    return header, list(fmt.read_chunks(f, header))


def as_version_1(data: bytes) -> bytes:
    """The same codes in a version-1 container (no file id, unbound CRCs, no trailer)."""
    header, chunks = parse(data)
    out = io.BytesIO()
    fmt.write_header(out, fmt.Header(**{**header.__dict__, "version": 1, "file_id": ""}))
    for c in chunks:
        fmt.write_chunk(out, c.frames, c.payload)
    return out.getvalue()


# -- 1. decompression bomb ----------------------------------------------------------------------
def bomb(codec, version: int, chunks: int = 2, payload: bytes = b"\0\0\0\0") -> bytes:
    """The issue's bomb: chunks of 16384 frames with 4-byte payloads, every CRC valid."""
    ident = codec.identity()
    header = fmt.Header(SR, 1, 4, 64, 32, 16384 * 32 * chunks, 18.0, 16384, 1, ident["name"], ident["sha256"],
                        file_id=bytes(range(16)).hex() if version == 2 else "", version=version)
    out = io.BytesIO()
    fmt.write_header(out, header)
    writer = fmt.ChunkWriter(out, header)
    for _ in range(chunks):
        writer.write(16384, payload)
    writer.finish(header.num_samples)
    return out.getvalue()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("payload", [b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x12\x34\x56\x78"])
def test_item1_bomb_is_refused_before_it_expands(codec, version, payload):
    data = bomb(codec, version, payload=payload)
    assert len(data) < 200
    with pytest.raises(BitstreamError, match="chunk 0: .*read past its data"):
        decompress_tensor(data, codec)
    with pytest.raises(BitstreamError, match="chunk 0: .*read past its data"):
        read_info(data)  # info --verify runs the range decoder too
    assert read_info(data, verify=False)["duration_s"] > 40  # what the header claims, not decoded


def test_item1_payload_with_extra_or_missing_words_is_refused(codec):
    data = compress_tensor(tone(2400), codec, 18.0, chunk_seconds=0.02)
    header, chunks = parse(data)
    for change in (lambda p: p + b"\0\0\0\0", lambda p: p + b"\x01\0\0\0", lambda p: p[:-4]):
        out = io.BytesIO()
        fmt.write_header(out, header)
        writer = fmt.ChunkWriter(out, header)
        for c in chunks:
            writer.write(c.frames, change(c.payload) if c.index == 2 else c.payload)
        writer.finish(header.num_samples)
        with pytest.raises(BitstreamError, match="chunk 2: .*(left unread|read past)"):
            decompress_tensor(out.getvalue(), codec)


def test_item1_silence_still_compresses_to_almost_nothing(codec):
    wav = torch.zeros(1, SR * 4)
    data = compress_tensor(wav, codec, 18.0)
    assert len(data) < 2000
    assert torch.equal(decompress_tensor(data, codec), codec.decode(codec.encode(wav[None], 18.0))[0, :, :SR * 4])


# -- 2. chunks reordered, dropped, duplicated, spliced -------------------------------------------
def rebuild(data: bytes, order) -> bytes:
    """``data`` with its chunk records (as stored, CRCs untouched) in ``order``; ``order`` may hold
    ``(other_data, index)`` to splice a chunk of another file."""
    pos = struct.unpack_from("<I", data, 8)[0]
    records, head = [], data[:pos]
    header, _ = parse(data)
    n = -(-header.num_frames // header.chunk_frames)
    for _ in range(n):
        size = struct.unpack_from("<I", data, pos + 4)[0]
        records.append(data[pos: pos + 12 + size])
        pos += 12 + size
    trailer = data[pos:]

    def record(item):
        if isinstance(item, tuple):
            return rebuild_records(*item)
        return records[item]

    return head + b"".join(record(i) for i in order) + trailer


def rebuild_records(data: bytes, index: int) -> bytes:
    pos = struct.unpack_from("<I", data, 8)[0]
    for _ in range(index):
        pos += 12 + struct.unpack_from("<I", data, pos + 4)[0]
    return data[pos: pos + 12 + struct.unpack_from("<I", data, pos + 4)[0]]


def test_item2_swapped_chunks_are_refused(codec):
    data = compress_tensor(tone(2400), codec, 18.0, chunk_seconds=0.02)  # 5 chunks of 15 frames
    swapped = rebuild(data, [1, 0, 2, 3, 4])
    assert len(swapped) == len(data) and swapped != data
    for call in (lambda d: read_info(d), lambda d: decompress_tensor(d, codec)):
        with pytest.raises(BitstreamError, match="chunk 0 .*CRC32.*another position or to another file"):
            call(swapped)


def test_item2_dropped_duplicated_and_spliced_chunks_are_refused(codec):
    data = compress_tensor(tone(2400), codec, 18.0, chunk_seconds=0.02)
    other = compress_tensor(tone(2400, seed=1, freq=500), codec, 18.0, chunk_seconds=0.02)  # same codec
    cases = {"duplicate": [0, 1, 1, 3, 4], "drop": [0, 2, 3, 4], "splice": [0, 1, (other, 2), 3, 4]}
    for name, order in cases.items():
        with pytest.raises(BitstreamError, match="chunk|truncated") as exc:
            read_info(rebuild(data, order))
        with pytest.raises(BitstreamError):
            decompress_tensor(rebuild(data, order), codec)
        assert "chunk 2" in str(exc.value) or name == "drop", (name, exc.value)
    # the last chunk dropped and the header "fixed" to the shorter length: the trailer disagrees
    header, chunks = parse(data)
    short = io.BytesIO()
    h = fmt.Header(**{**header.__dict__, "num_samples": 4 * 15 * 32})
    fmt.write_header(short, h)
    w = fmt.ChunkWriter(short, h)
    for c in chunks[:4]:
        w.write(c.frames, c.payload)
    short.write(data[-fmt._TRAILER.size:])  # the original trailer
    with pytest.raises(BitstreamError, match="trailer|checksum"):
        read_info(short.getvalue())


def test_item2_version_1_files_still_decode(codec):
    wav = tone(2400)
    v2 = compress_tensor(wav, codec, 18.0, chunk_seconds=0.02)
    v1 = as_version_1(v2)
    assert v1[4:6] == b"\x01\x00" and len(v1) == len(v2) - 16 - fmt._TRAILER.size
    assert torch.equal(decompress_tensor(v1, codec), decompress_tensor(v2, codec))
    assert read_info(v1)["version"] == 1 and read_info(v2)["version"] == 2
    # version 1 cannot bind chunks: a swap there is only caught if the codes do not decode
    assert read_info(v1)["chunks"] == 5


# -- 3. --force race ------------------------------------------------------------------------------
def test_item3_file_created_during_compress_is_not_clobbered(codec, model_dir, tmp_path, monkeypatch):
    from codeclm.compression import api

    src = save_audio(tmp_path / "in.wav", tone(6000)[0], SR)
    dst = tmp_path / "out.cclm"
    real = api._read_blocks

    def slow(*a, **k):
        for i, block in enumerate(real(*a, **k)):
            if i == 0:
                dst.write_bytes(b"the user's file")  # appears while compress runs
            yield block

    monkeypatch.setattr(api, "_read_blocks", slow)
    with pytest.raises(OutputExistsError, match="out.cclm: already exists"):
        compress_file(src, dst, model=model_dir, bandwidth=9.0, block_seconds=0.05)
    assert dst.read_bytes() == b"the user's file" and leftovers(tmp_path) == []
    dst.unlink()
    monkeypatch.setattr(api, "_read_blocks", slow)
    compress_file(src, dst, model=model_dir, bandwidth=9.0, block_seconds=0.05, force=True)  # --force replaces
    assert dst.read_bytes()[:4] == b"CCLM"


def test_item3_two_processes_racing_for_one_output(model_dir, tmp_path):
    """Both start, both pass the early 'exists' check (each is waiting on stdin), the first
    finishes: the second must fail, not replace the first one's file and report success."""
    wav = io.BytesIO()
    sf.write(wav, tone(4800)[0].numpy(), SR, format="WAV")
    dst = tmp_path / "out.cclm"
    procs, tmpdirs = [], []
    for i in range(2):
        tmpdirs.append(tmp_path / f"tmp{i}")
        tmpdirs[-1].mkdir()
        procs.append(subprocess.Popen([*CLI, "compress", "-", str(dst), "--model", str(model_dir), "-q"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=env(TMPDIR=str(tmpdirs[-1]))))
    deadline = time.time() + 120
    while not all(any(d.iterdir()) for d in tmpdirs):  # each is copying stdin: past the check
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    first = procs[0].communicate(wav.getvalue(), timeout=120)
    assert procs[0].returncode == 0, first
    published = dst.read_bytes()
    out, err = procs[1].communicate(wav.getvalue(), timeout=120)
    assert procs[1].returncode == 1
    assert err.decode().strip() == f"codeclm: error: {dst}: already exists (use --force to overwrite)"
    assert dst.read_bytes() == published and leftovers(tmp_path) == []
    assert all(not any(d.iterdir()) for d in tmpdirs)


# -- 6. signals, FIFOs, stdin copies ----------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_item6_signal_while_copying_stdin_removes_the_copy(model_dir, tmp_path, sig):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    # the child gets the default disposition even when this run inherited an ignored one (under
    # nohup): compress keeps an ignored SIGHUP ignored on purpose
    proc = subprocess.Popen([*CLI, "compress", "-", str(tmp_path / "out.cclm"), "--model", str(model_dir)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env(TMPDIR=str(tmpdir)),
                            preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    proc.stdin.write(b"RIFF" + bytes(1 << 20))  # a partial stdin: the copy is under way
    proc.stdin.flush()
    deadline = time.time() + 120
    while not any(tmpdir.iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    proc.stdin.close()
    assert proc.returncode == -sig  # it still dies of the signal, after cleaning up
    assert list(tmpdir.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


def test_item6_sigterm_while_writing_the_output_removes_the_temp_file(model_dir, tmp_path):
    src = tmp_path / "long.wav"
    sf.write(src, np.tile(tone(SR)[0].numpy(), 120), SR)  # 2 minutes: several seconds of work
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([*CLI, "compress", str(src), str(out_dir / "x.cclm"), "--model", str(model_dir), "-q"],
                            stderr=subprocess.PIPE, env=env())
    deadline = time.time() + 120
    while not leftovers(out_dir):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert list(out_dir.iterdir()) == []


def test_item6_fifo_input_is_read_once(codec, model_dir, tmp_path):
    wav = tone(4800)
    save_audio(tmp_path / "in.wav", wav[0], SR)
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as f:
            f.write((tmp_path / "in.wav").read_bytes())

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    proc = subprocess.run([*CLI, "compress", str(fifo), str(tmp_path / "x.cclm"), "--model", str(model_dir), "-q",
                           "-b", "9"], capture_output=True, env=env(), timeout=180)
    writer.join(5)
    assert proc.returncode == 0, proc.stderr
    compress_file(tmp_path / "in.wav", tmp_path / "y.cclm", model=model_dir, bandwidth=9.0)
    x, y = (decompress_tensor((tmp_path / n).read_bytes(), codec) for n in ("x.cclm", "y.cclm"))
    assert torch.equal(x, y)
    assert leftovers(tmp_path) == []


def test_item8_stdin_errors_name_stdin_not_a_temp_file(model_dir, tmp_path):
    proc = subprocess.run([*CLI, "compress", "-", str(tmp_path / "x.cclm"), "--model", str(model_dir)],
                          input=b"not audio at all", capture_output=True, env=env(TMPDIR=str(tmp_path)), timeout=120)
    err = proc.stderr.decode().strip()
    assert proc.returncode == 1 and err.startswith("codeclm: error: <stdin>: not a readable audio file"), err
    assert "codeclm-stdin" not in err and "\n" not in err and list(tmp_path.iterdir()) == []


# -- 7. one line instead of a traceback -----------------------------------------------------------------
def run_limited(args, limit: int, **kw):
    """The CLI with files limited to ``limit`` bytes: a write beyond fails like a full disk."""
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([*CLI, *map(str, args)], capture_output=True, preexec_fn=preexec, env=env(**kw.pop("env", {})),
                          timeout=180, **kw)


def test_item7_full_disk_is_one_line_and_leaves_nothing(codec, model_dir, tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, np.tile(tone(SR)[0].numpy(), 10), SR)
    good = tmp_path / "good.cclm"
    good.write_bytes(compress_tensor(torch.from_numpy(sf.read(src, dtype="float32")[0])[None], codec, 18.0))
    out = tmp_path / "out"
    out.mkdir()
    limit = 4096  # smaller than every output below, larger than nothing
    cases = [(["compress", src, out / "x.cclm", "-b", "18"], "x.cclm: cannot write .*file too large"),
             (["decompress", good, out / "x.wav"], "x.wav: (cannot|could not) write"),
             (["decompress", good, out / "x.flac"], "x.flac: (cannot|could not) write")]
    for args, message in cases:
        proc = run_limited([*args, "--model", model_dir, "-q"], limit)
        err = proc.stderr.decode().strip()
        assert proc.returncode == 1 and err.startswith("codeclm: error: ") and "\n" not in err, err
        assert __import__("re").search(message, err), err
        assert list(out.iterdir()) == [], args
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = run_limited(["compress", "-", out / "x.cclm", "--model", model_dir, "-q"], limit,
                       input=src.read_bytes(), env={"TMPDIR": str(tmpdir)})
    err = proc.stderr.decode().strip()
    assert proc.returncode == 1 and "<stdin>: cannot copy into a temporary file" in err and "\n" not in err, err
    assert list(tmpdir.iterdir()) == [] and list(out.iterdir()) == []


def test_item7_unwritable_folder_is_one_line(codec, model_dir, tmp_path, monkeypatch):
    import tempfile

    src = save_audio(tmp_path / "in.wav", tone(2400)[0], SR)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(CodecLMError, match=r"x.cclm: cannot create a file in folder .* \(read-only file system\)"):
        compress_file(src, tmp_path / "x.cclm", model=codec)
    if os.geteuid() != 0:  # root writes anyway
        monkeypatch.undo()
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(CodecLMError, match="permission denied"):
            compress_file(src, ro / "x.cclm", model=codec)


@pytest.mark.parametrize("command", ["info", "decompress"])
def test_item7_closed_pipe_exits_quietly(codec, model_dir, tmp_path, command):
    good = tmp_path / "good.cclm"
    good.write_bytes(compress_tensor(tone(SR * 2), codec, 18.0))
    args = [*CLI, "info", str(good)] if command == "info" else [*CLI, "decompress", str(good), "-", "--model",
                                                                   str(model_dir), "-q"]
    r, w = os.pipe()
    os.close(r)  # the reader (head) is gone before anything is written
    proc = subprocess.run(args, stdout=w, stderr=subprocess.PIPE, env=env(), timeout=120)
    os.close(w)
    assert proc.stderr.decode() == "" and proc.returncode == 141


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_item7_bad_chunk_seconds_is_one_line(model_dir, tmp_path, value, capsys):
    from codeclm.cli import main

    src = save_audio(tmp_path / "in.wav", tone(2400)[0], SR)
    assert main(["compress", str(src), str(tmp_path / "x.cclm"), "--model", str(model_dir),
                 f"--chunk-seconds={value}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("codeclm: error: --chunk-seconds must be a positive number") and "\n" not in err
    with pytest.raises(CodecLMError, match="chunk_seconds must be a positive number"):
        compress_tensor(tone(100), Codec.from_pretrained(model_dir), 9.0, chunk_seconds=float(value))
    assert list(tmp_path.iterdir()) == [src]


# -- 5. corrupt checkpoints ------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerator objects made here must not leave a process-wide state for later tests."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _save_steps(out_dir: Path, steps, keep_last: int = 10):
    from codeclm.training import checkpoint as ckpt

    acc = _accelerator()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    for step in steps:
        with torch.no_grad():
            model.weight.fill_(float(step))
        ckpt.save_checkpoint(acc, out_dir, ckpt.Position(step, 0, step), {"generator": model},
                             {"optimizers": {"g": opt.state_dict()}}, keep_last)
    return acc


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "generator.safetensors": lambda folder: _truncate(folder / "generator.safetensors"),
    "state.pt": lambda folder: _truncate(folder / "state.pt"),
    "rng_0.pt": lambda folder: _truncate(folder / "rng_0.pt"),
    "meta.json": lambda folder: (folder / "meta.json").write_text('{"step": 3, "epoch": '),
    "meta.json step": lambda folder: (folder / "meta.json").write_text('{"step": "3", "epoch": 0, "batch": 0}'),
    "bit flip": lambda folder: (folder / "generator.safetensors").write_bytes(
        (folder / "generator.safetensors").read_bytes()[:-1] + b"\x7f"),
}


@pytest.mark.parametrize("what", sorted(CORRUPTIONS))
def test_item5_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, capsys, what):
    from codeclm.training import checkpoint as ckpt

    acc = _save_steps(tmp_path, [1, 2, 3])
    root = tmp_path / "checkpoints"
    CORRUPTIONS[what](root / "step_000003")
    ckpt._VERIFIED.clear()
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000002"
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: warning: skipping a corrupt checkpoint: ") and "step_000003" in err
    assert err.endswith("using step_000002") and "\n" not in err
    with pytest.raises(ckpt.CorruptCheckpointError, match="step_000003") as exc:  # named by hand: one line
        ckpt.load_checkpoint(root / "step_000003", acc, {"generator": torch.nn.Linear(3, 2)})
    assert "\n" not in str(exc.value)
    model = torch.nn.Linear(3, 2)
    pos, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), acc, {"generator": model})
    assert pos.step == 2 and torch.all(model.weight == 2.0)


@pytest.mark.parametrize("what", ["generator.safetensors", "state.pt", "rng_0.pt"])
def test_item5_old_checkpoints_without_hashes_are_checked_structurally(tmp_path, capsys, what):
    from codeclm.training import checkpoint as ckpt

    _save_steps(tmp_path, [1, 2])
    root = tmp_path / "checkpoints"
    for step in ("step_000001", "step_000002"):
        meta = json.loads((root / step / "meta.json").read_text())
        del meta["files"]
        (root / step / "meta.json").write_text(json.dumps(meta))
    ckpt._VERIFIED.clear()
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000002"
    CORRUPTIONS[what](root / "step_000002")
    ckpt._VERIFIED.clear()
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000001"
    assert what in capsys.readouterr().err


def test_item5_the_checkpoint_resumed_from_is_never_pruned_for_a_corrupt_one(tmp_path):
    from codeclm.training import checkpoint as ckpt

    acc = _save_steps(tmp_path, [1, 2, 3], keep_last=3)
    root = tmp_path / "checkpoints"
    _truncate(root / "step_000003" / "state.pt")
    ckpt._VERIFIED.clear()
    folder = ckpt.latest_checkpoint(tmp_path)
    assert folder == root / "step_000002"
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    ckpt.load_checkpoint(folder, acc, {"generator": model})
    with torch.no_grad():
        model.weight.fill_(30.0)
    # the resumed run reaches step 3 again: the corrupt step is replaced, never kept over the new one
    ckpt.save_checkpoint(acc, tmp_path, ckpt.Position(3, 0, 3), {"generator": model},
                         {"optimizers": {"g": opt.state_dict()}}, keep_last=1)
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000003"
    fresh = torch.nn.Linear(3, 2)
    assert ckpt.load_checkpoint(root / "step_000003", acc, {"generator": fresh})[0].step == 3
    assert torch.all(fresh.weight == 30.0)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000003"]


def test_item5_resuming_by_hand_from_an_older_step_keeps_it(tmp_path):
    """Steps 1..3 exist, the user resumes from step 1 by hand: saving step 2 must not prune step 1
    in favour of the stale (here corrupt) step 3 of the abandoned run."""
    from codeclm.training import checkpoint as ckpt

    acc = _save_steps(tmp_path, [1, 2, 3], keep_last=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002", "step_000003"]
    _truncate(root / "step_000003" / "generator.safetensors")
    model = torch.nn.Linear(3, 2)
    ckpt.load_checkpoint(root / "step_000002", acc, {"generator": model})
    ckpt._RESUMED.clear()
    ckpt._RESUMED.add(root / "step_000002")
    ckpt.save_checkpoint(acc, tmp_path, ckpt.Position(2, 0, 2), {"generator": model}, {"optimizers": {}},
                         keep_last=1)  # the same step again: replaced, and it is the resumed one
    assert (root / "step_000002").is_dir()
    with torch.no_grad():
        model.weight.fill_(3.5)
    ckpt.save_checkpoint(acc, tmp_path, ckpt.Position(3, 0, 3), {"generator": model}, {"optimizers": {}},
                         keep_last=2)
    fresh = torch.nn.Linear(3, 2)
    ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), acc, {"generator": fresh})
    assert torch.all(fresh.weight == 3.5)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000002", "step_000003"]


def test_item5_training_resumes_past_a_truncated_checkpoint(tmp_path):
    """End to end: train.py with a truncated newest generator.safetensors resumes from the
    previous step with one warning line instead of a traceback."""
    repo = Path(__file__).resolve().parents[1]
    rng = np.random.default_rng(0)
    from codeclm.data.manifest import AudioRecord, write_manifest

    records = []
    for i in range(4):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, (0.3 * np.sin(np.arange(9600) * (0.05 + 0.01 * i)) + 0.01 * rng.standard_normal(9600))
                 .astype(np.float32), 16000)
        records.append(AudioRecord(str(path), 0.6, 16000, 1))
    train = write_manifest(records, tmp_path / "train.jsonl")
    out = tmp_path / "run"
    cmd = [sys.executable, str(repo / "train.py"), str(repo / "recipes" / "codec_tiny.yaml"), f"out_dir={out}",
           "seed=1", "data.segment_seconds=0.25", "data.batch_size=2", "data.valid_items=0", "ckpt_every=1",
           "valid_every=1000", "log_every=1", f"data.train_manifest={train}", "data.valid_manifest=null"]
    first = subprocess.run([*cmd, "max_steps=3"], capture_output=True, text=True, env=env(), timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    _truncate(out / "checkpoints" / "step_000003" / "generator.safetensors")
    again = subprocess.run([*cmd, "max_steps=4"], capture_output=True, text=True, env=env(), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "train: warning: skipping a corrupt checkpoint: " in again.stderr and "step_000003" in again.stderr
    assert "resuming from" in again.stderr and "step_000002" in again.stderr
    assert "Traceback" not in again.stderr


# -- 4, 7, 8. configs: sizes checked against the weights header and limits, strict types ---------------
@pytest.fixture
def saved_codec(codec, tmp_path) -> Path:
    return codec.save_pretrained(tmp_path / "m")


def _with_config(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("key,value,message", [
    ("dimension", 1 << 20, "dimension must be an integer in 1..8192"),
    ("n_filters", 1 << 20, "n_filters must be an integer in 1..4096"),
    ("bins", 1 << 30, "bins must be an integer in 2..65536"),
    ("lstm_layers", 10 ** 6, "lstm_layers must be an integer in 0..16"),
    ("ratios", [4, 4, 100000], "ratios must be at most 8 values"),
    ("dimension", 4096, "does not match the weights .*shape"),  # within limits, but not these weights
    ("lstm_layers", 3, "does not match the weights"),
])
def test_item4_huge_sizes_are_refused_before_building(saved_codec, monkeypatch, key, value, message):
    from codeclm.codec import model as codec_model

    built = []
    real_init = codec_model.Codec.__init__

    def spy(self, config, *a, **k):
        built.append(str(torch.get_default_device()) if hasattr(torch, "get_default_device") else "?")
        return real_init(self, config, *a, **k)

    monkeypatch.setattr(codec_model.Codec, "__init__", spy)
    with pytest.raises(CodecLMError, match=message) as exc:
        Codec.from_pretrained(_with_config(saved_codec, **{key: value}))
    assert "config.json" in str(exc.value) and "\n" not in str(exc.value)
    assert all(d == "meta" for d in built)  # nothing real was ever allocated


@pytest.mark.parametrize("key,value,message", [
    ("n_filters", "16", "n_filters must be an integer, got \"16\""),
    ("dimension", 128.0, "dimension must be an integer, got 128.0"),
    ("dimension", None, "dimension must be an integer, got null"),
    ("dimension", -5, "dimension must be an integer in 1..8192, got -5"),
    ("causal", "no", "causal must be true or false, got \"no\""),
    ("causal", 0, "causal must be true or false"),
    ("target_bandwidths", [float("nan")], "target_bandwidths must be a list of items that are each a finite number"),
    ("target_bandwidths", "6", "target_bandwidths must be a list"),
    ("ratios", [4, "4", 2], "ratios must be a list of items that are each an integer"),
    ("chunk_length_s", "1", "chunk_length_s must be a number or null"),
    ("ema_decay", float("inf"), "ema_decay must be a finite number"),
])
def test_item7_config_values_of_the_wrong_type_or_sign(saved_codec, key, value, message):
    with pytest.raises(CodecLMError, match=message) as exc:
        Codec.from_pretrained(_with_config(saved_codec, **{key: value}))
    assert str(exc.value).startswith(str(saved_codec / "config.json")) and "\n" not in str(exc.value)


def test_item7_config_that_is_not_an_object(saved_codec):
    (saved_codec / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(CodecLMError, match="expected a JSON object of codec settings, got a list"):
        Codec.from_pretrained(saved_codec)


def test_item7_codec_cli_with_a_bad_config_is_one_line(saved_codec, tmp_path):
    _with_config(saved_codec, n_filters="16")
    src = save_audio(tmp_path / "in.wav", tone(2400)[0], SR)
    proc = subprocess.run([*CLI, "compress", str(src), str(tmp_path / "x.cclm"), "--model", str(saved_codec)],
                          capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "n_filters must be an integer" in proc.stderr


# -- 4, 8. manifests: merge streams, missing files are counted ----------------------------------------
def _manifest(folder: Path, n: int, missing: int = 0) -> Path:
    from codeclm.data.manifest import AudioRecord, write_manifest

    records = []
    for i in range(n):
        path = folder / f"a{i}.wav"
        if n > 20:  # many records: no audio needed
            records.append(AudioRecord(str(path), 0.01, SR, 1, text="hello " * 5))
            continue
        if i >= missing:
            sf.write(path, np.zeros(240, np.float32), SR) if i < 3 + missing else path.write_bytes(b"")
        records.append(AudioRecord(str(path), 0.01, SR, 1, text="hello " * 5))
    return write_manifest(records, folder / "m.jsonl")


def test_item4_merge_streams_records(tmp_path, capsys, monkeypatch):
    from codeclm.cli import main
    from codeclm.data import manifest

    src = _manifest(tmp_path, 100)
    live, most = [0], [0]

    class Counted(manifest.AudioRecord):  # counts the records alive at any moment
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            live[0] += 1
            most[0] = max(most[0], live[0])

        def __del__(self):
            live[0] -= 1

    monkeypatch.setattr(manifest, "AudioRecord", Counted)
    assert main(["data", "merge", f"{src}*50", str(src), "-o", str(tmp_path / "big.jsonl")]) == 0
    assert sum(1 for _ in open(tmp_path / "big.jsonl")) == 5100
    assert most[0] <= 3, most  # one record at a time, not 5100 in a list
    assert "5100 records from 2 manifests" in capsys.readouterr().err
    assert main(["data", "merge", f"{src}*1000000000", "-o", str(tmp_path / "huge.jsonl")]) == 1
    assert "repeat count must be in 1..100000" in capsys.readouterr().err
    assert not (tmp_path / "huge.jsonl").exists()


def test_item8_missing_and_unreadable_manifest_files_are_counted(tmp_path, capsys):
    from codeclm.data import AudioSegmentDataset, read_manifest

    records = read_manifest(_manifest(tmp_path, 8, missing=2))  # 2 missing, 3 empty (unreadable), 3 good
    err = capsys.readouterr().err.strip()
    assert err == f"codeclm: warning: {tmp_path / 'm.jsonl'}: 2 of 8 entries name missing files (a0.wav, a1.wav)"
    ds = AudioSegmentDataset(records, SR, segment_seconds=0.005, seed=0)
    failed = sum(ds[i]["failed"] for i in range(len(ds)))
    err = capsys.readouterr().err.strip().splitlines()
    assert failed >= 5 and len(ds.errors) == 5
    assert len(err) == 5 and all(line.startswith("codeclm: warning: skipping an unreadable file: ") for line in err)
    assert err[-1].endswith("(5 unreadable file(s) so far, replaced by other records)")


# -- 8. pipelines: format, recorded codec identity, guidance, max_duration, NaN weights ----------------
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def music_copy(tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(REPO / "checkpoints" / "music", tmp_path / "music"))


def _edit_pipeline(folder: Path, **changes) -> None:
    info = json.loads((folder / "pipeline.json").read_text())
    info.update(changes)
    (folder / "pipeline.json").write_text(json.dumps(info))


@pytest.mark.parametrize("changes,message", [
    ({"format": 99}, "pipeline format 99 is not supported"),
    ({"format": "1"}, "pipeline format '1' is not supported"),
    ({"max_duration": "abc"}, "max_duration must be a positive number of seconds, got 'abc'"),
    ({"max_duration": float("nan")}, "max_duration must be a positive number"),
    ({"max_duration": -3}, "max_duration must be a positive number"),
])
def test_item8_pipeline_json_values_are_checked(music_copy, changes, message):
    from codeclm.pipelines import TextToMusic

    _edit_pipeline(music_copy, **changes)
    with pytest.raises(CodecLMError, match=message) as exc:
        TextToMusic.from_pretrained(music_copy)
    assert "\n" not in str(exc.value)


def _perturbed_codec(folder: Path, value: float | None = None) -> None:
    """Another codec of the same architecture in ``folder`` (one weight changed; NaN with value=nan)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    key = next(k for k in weights if k.endswith("conv.weight"))
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = weights[key].view(-1)[0] + 0.01 if value is None else value
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_item8_a_swapped_codec_is_refused(music_copy):
    from codeclm.pipelines import TextToMusic

    assert json.loads((music_copy / "pipeline.json").read_text())["codec_identity"]
    TextToMusic.from_pretrained(music_copy)  # as shipped: fine
    _perturbed_codec(music_copy / "codec")
    with pytest.raises(CodecLMError, match="codec/ holds .* but this model was made for .*the folder's codec was "
                                           "replaced"):
        TextToMusic.from_pretrained(music_copy)


def test_item8_saved_pipelines_record_their_codec(music_copy, tmp_path):
    from codeclm.pipelines import TextToMusic

    pipe = TextToMusic.from_pretrained(music_copy)
    pipe.save_pretrained(tmp_path / "again", torch.float16)
    assert json.loads((tmp_path / "again" / "pipeline.json").read_text())["codec_identity"] == pipe.codec.identity()
    TextToMusic.from_pretrained(tmp_path / "again")


def test_item8_nan_weights_are_refused(music_copy):
    _perturbed_codec(music_copy / "codec", float("nan"))
    from codeclm.codec import load_model

    with pytest.raises(CodecLMError, match=r"weight \S*conv.weight holds NaN or infinite values"):
        load_model(music_copy / "codec")  # whatever the shipped codec's class


@pytest.mark.parametrize("flag,value", [("--guidance", "nan"), ("--guidance", "inf"), ("--guidance", "-1"),
                                        ("--temperature", "nan"), ("--device", "nonsense"), ("--device", "cuda:7")])
def test_item7_item8_music_command_line_numbers_and_devices(flag, value, tmp_path, capsys):
    from codeclm.cli import main

    if value.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    code = main(["music", "calm piano", "--duration", "1", "-o", str(tmp_path / "x.wav"), f"{flag}={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("codeclm: error: ") and "\n" not in err, err
    assert not (tmp_path / "x.wav").exists()


def test_item7_device_names(monkeypatch):
    from codeclm.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("nonsense", "cuda:x", "gpu", ""):
        with pytest.raises(CodecLMError, match="is not a device|unsupported"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(CodecLMError, match="--device cuda: this torch build has no CUDA support"):
        resolve_device("cuda")


# -- issue 14 leftovers: empty and small-integer codes, non-finite recipe values -----------------------
def _small_codecs() -> dict:
    """One of each codec class in codeclm.codec, small, 1024 codes per codebook (more than uint8 holds)."""
    from codeclm.codec import DacCodec, DacConfig
    from codeclm.codec.frame import FrameCodec, FrameCodecConfig

    torch.manual_seed(0)
    small = dict(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=1024, lstm_layers=1, target_bandwidths=[10.0])
    return {
        "codec": Codec(CodecConfig(**small)),  # causal: decodes as one stream
        "codec_offline": Codec(CodecConfig(**small, causal=False)),  # non-causal: the offline path
        "codec_chunked": Codec(CodecConfig(**small, causal=False, normalize=True, chunk_length_s=0.01,
                                           overlap=0.5)),  # per-chunk scales
        "dac": DacCodec(DacConfig(sample_rate=16000, encoder_dim=4, ratios=[2, 4, 5, 8], decoder_dim=32, n_q=3,
                                  bins=1024, codebook_dim=4)),
        "frame": FrameCodec(FrameCodecConfig(encoder_dim=32, encoder_layers=2, decoder_dim=48, decoder_layers=2,
                                             dimension=16, bins=1024, target_bandwidths=[1.0])),
    }


@pytest.fixture(scope="module")
def small_codecs(one_thread) -> dict:
    return {name: codec.eval() for name, codec in _small_codecs().items()}


@pytest.mark.parametrize("name", ["codec", "codec_offline", "codec_chunked", "dac", "frame"])
def test_item14_codes_with_no_frames_decode_to_empty_audio(small_codecs, name):
    codec = small_codecs[name]
    for batch, n_q in ((1, 1), (3, codec.num_codebooks)):
        audio = codec.decode(torch.zeros(batch, n_q, 0, dtype=torch.long))
        assert audio.shape == (batch, codec.channels, 0) and audio.dtype == torch.float32
    # one frame still gives one hop of finite audio, and bad codes are still refused when empty
    one = codec.decode(torch.zeros(2, 1, 1, dtype=torch.long), **({"scales": torch.ones(2, 1)}
                                                                    if name == "codec_chunked" else {}))
    assert one.shape[0] == 2 and 0 < one.shape[-1] <= codec.hop_length and torch.isfinite(one).all()
    with pytest.raises(CodecLMError, match="codebooks"):
        codec.decode(torch.zeros(1, codec.num_codebooks + 1, 0, dtype=torch.long))
    with pytest.raises(CodecLMError, match="integer tensor"):
        codec.decode(torch.zeros(1, 1, 0))


def test_item14_empty_codes_while_streaming_give_empty_audio(small_codecs):
    for name in ("codec", "frame"):
        codec = small_codecs[name]
        with codec.streaming(batch_size=2):
            assert codec.decode(torch.zeros(2, 1, 0, dtype=torch.long)).shape == (2, 1, 0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("name", ["codec", "dac", "frame"])
def test_item14_codes_of_any_integer_dtype_decode_as_int64(small_codecs, name, dtype):
    codec = small_codecs[name]
    top = min(torch.iinfo(dtype).max, codec.cardinality - 1)
    codes = torch.tensor([[[0, 1, top // 2, top]]])  # 4 frames, 1 codebook, all in range
    assert torch.equal(codec.decode(codes.to(dtype)), codec.decode(codes))
    assert codec.check_codes(codes.to(dtype)).dtype == torch.int64


@pytest.mark.parametrize("name", ["codec", "dac", "frame"])
def test_item14_out_of_range_small_integer_codes_get_a_true_message(name, one_thread):
    # a codec with 64 codes: uint8 200 and int8 -3 are out of range, and the message says so truly
    from codeclm.codec import DacCodec, DacConfig
    from codeclm.codec.frame import FrameCodec, FrameCodecConfig

    codec = {"codec": lambda: Codec(CodecConfig(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=64, lstm_layers=1)),
             "dac": lambda: DacCodec(DacConfig(encoder_dim=4, ratios=[2, 4], decoder_dim=16, n_q=2, bins=64,
                                               codebook_dim=4)),
             "frame": lambda: FrameCodec(FrameCodecConfig(encoder_dim=16, encoder_layers=1, decoder_dim=16,
                                                          decoder_layers=1, dimension=8, bins=64))}[name]().eval()
    for codes, got in ((torch.tensor([[[3, 200]]], dtype=torch.uint8), "[3, 200]"),
                       (torch.tensor([[[-3, 5]]], dtype=torch.int8), "[-3, 5]"),
                       (torch.tensor([[[64]]], dtype=torch.int16), "[64, 64]")):
        with pytest.raises(CodecLMError) as exc:
            codec.decode(codes)
        assert str(exc.value) == f"codes out of range: values must be in [0, 63], got {got}"
    # the bug was a bound compared in the codes' own dtype (1024 wraps to 0 in uint8): in range is accepted
    codec.decode(torch.tensor([[[0, 63]]], dtype=torch.uint8))


@pytest.mark.parametrize("override,key", [
    ("optim.lr=nan", "optim.lr"), ("optim.lr=inf", "optim.lr"), ("optim.lr=-inf", "optim.lr"),
    ("optim.betas=[0.5,nan]", "optim.betas[1]"), ("optim.betas=[inf,0.9]", "optim.betas[0]"),
    ("optim.min_lr_ratio=nan", "optim.min_lr_ratio"), ("optim.grad_clip=nan", "optim.grad_clip"),
    ("optim.grad_clip=inf", "optim.grad_clip"), ("optim.weight_decay=nan", "optim.weight_decay"),
    ("ema_decay=nan", "ema_decay"), ("ema_decay=inf", "ema_decay"),
    ("data.segment_seconds=nan", "data.segment_seconds"), ("data.segment_seconds=inf", "data.segment_seconds"),
    ("data.valid_fraction=nan", "data.valid_fraction"),
    ("codec.mel_weight=nan", "codec.mel_weight"),  # a task's own section
])
def test_item14_non_finite_recipe_values_are_one_line_config_errors(override, key):
    from codeclm.errors import ConfigError
    from codeclm.training.config import load_recipe

    with pytest.raises(ConfigError) as exc:
        load_recipe("codec_tiny", [override])
    value = override.split("=", 1)[1]
    shown = {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(value) or ("nan" if "nan" in value else "inf")
    assert str(exc.value) == f"recipe: {key} must be a finite number, got {shown}"


def test_item14_finite_recipe_values_still_load():
    from codeclm.training.config import load_recipe

    cfg = load_recipe("codec_tiny", ["optim.lr=1e-3", "optim.betas=[0.8,0.99]", "ema_decay=0.99",
                                     "data.segment_seconds=0.5", "optim.grad_clip=1.0"])
    assert (cfg.optim.lr, cfg.optim.betas, cfg.ema_decay, cfg.data.segment_seconds) == (1e-3, [0.8, 0.99], 0.99, 0.5)
