"""Coverage-guided fuzzing of the .cclm parser and decoder with atheris (libFuzzer).

The hypothesis tests in ``tests/test_bitstream_fuzz.py`` run a few hundred mutations on every
test run; this script runs millions. It seeds the corpus with valid files made by a tiny codec
and checks that reading or decoding any input (as is, and with its CRCs recomputed so that
mutations get past the checksums into the field checks and the entropy decoder) raises nothing
but :class:`CodecLMError`.
Any other exception (or a crash) stops the run and leaves the input as ``crash-*``.

    pip install atheris
    python benchmarks/fuzz_atheris.py -atheris_runs=1000000 [-max_len=4096] [CORPUS_DIR]

Each time ``-max_total_time=SECONDS`` can replace ``-atheris_runs``; libFuzzer's other flags work too.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from codeclm.compression import compress_tensor, decompress_tensor, read_info  # + format, entropy, api
    from codeclm.errors import CodecLMError

import numpy as np
import torch

from codeclm.codec import Codec, CodecConfig


def tiny_codec() -> Codec:
    torch.manual_seed(0)
    codec = Codec(CodecConfig(n_filters=4, dimension=16, ratios=[4, 4, 2], bins=64, lstm_layers=1,
                              target_bandwidths=[4.5, 9.0, 18.0], kmeans_init=True, kmeans_iters=2)).train()
    with torch.no_grad():
        codec(0.3 * torch.sin(torch.arange(4800) * 0.08)[None, None] + 0.02 * torch.randn(1, 1, 4800))
    return codec.eval()


CODEC = tiny_codec()


def seeds() -> list[bytes]:
    t = torch.arange(2400) / 24000
    wav = (0.3 * torch.sin(2 * np.pi * 300 * t) + 0.02 * torch.randn(2400))[None]
    return [compress_tensor(wav[:, :n], CODEC, bw, chunk_seconds=cs)
            for n, bw, cs in ((2400, 18.0, 0.02), (700, 4.5, 1.0), (1, 9.0, 0.01))]


def fix_crcs(data: bytes) -> bytes:
    """``data`` with the header, chunk and trailer CRCs recomputed (for the chunks where they now
    stand), so mutations reach the deeper checks."""
    from codeclm.compression.format import recompute_crcs

    return recompute_crcs(data)


def test_one_input(data: bytes) -> None:
    for blob in (data, fix_crcs(data)):
        for call in (read_info, lambda b: decompress_tensor(b, CODEC)):
            try:
                call(blob)
            except CodecLMError:
                pass


def main() -> None:
    torch.set_num_threads(1)
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus folder given: seed a temporary one
        corpus = Path(tempfile.mkdtemp(prefix="cclm-corpus-"))
        for i, seed in enumerate(seeds()):
            (corpus / f"seed{i}.cclm").write_bytes(seed)
        args.append(str(corpus))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
