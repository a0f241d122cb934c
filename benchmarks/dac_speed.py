"""DAC speed: codeclm's DacCodec vs transformers' DacModel on the same random weights, in one run.

Builds a random DAC with the descript/dac_44khz layout (transformers' DacConfig with 44.1 kHz,
strides 2-4-8-8, 9 codebooks: 76.6 M parameters), imports the very same weights, asserts both
give identical codes (and reports the audio difference), then times encode + decode of
``--seconds`` of audio (best of ``--repeats`` interleaved rounds, inference mode for both). Also measures what
decoding in overlapping windows costs against one whole-signal pass (time and difference), and,
with ``--compile``, codeclm's encoder and decoder under ``torch.compile`` (inductor, weight
freezing; compile time reported, shapes fixed), and, with ``--bf16-decode``, the option of a
bf16 decoder (``DacCodec.set_decoder_dtype``; encoder and codes unchanged) against transformers in
the same interleaved rounds, with the SNR of its audio against codeclm's fp32 decode. Prints one
JSON line (with the machine) and appends it to ``benchmarks/results/dac_speed.jsonl``.

    python benchmarks/dac_speed.py [--seconds 3] [--repeats 3] [--threads N] [--compile] [--bf16-decode]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from timing import interleaved, write_result

from codeclm.threads import cpu_model


def main() -> None:
    from transformers import DacConfig, DacModel

    from codeclm.codec import Codec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best of)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--windows", type=int, nargs="*", default=[22, 43, 86], help="decode window sizes in frames")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd encoder/decoder")
    parser.add_argument("--bf16-decode", action="store_true", help="also time the bf16-decoder option")
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "dac_speed.jsonl"),
                        help="JSON-lines file the result is appended to ('' for none)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    hf = DacModel(DacConfig(sampling_rate=44100, downsampling_ratios=[2, 4, 8, 8], n_codebooks=9)).eval()
    with torch.no_grad():  # vary the Snake alphas (transformers initialises them to 1)
        for name, p in hf.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 2.0)
    ours = Codec.from_hf(hf)
    sr, hop = ours.sample_rate, ours.hop_length
    length = int(args.seconds * sr) // hop * hop  # whole frames: no padding question on either side
    g = torch.Generator().manual_seed(1)
    wav = 0.1 * torch.randn(1, 1, length, generator=g)
    result = {"benchmark": "dac_speed", "model": "DAC 44.1 kHz layout (transformers DacConfig, random weights), "
              "9 codebooks", "parameters_M": round(sum(p.numel() for p in hf.parameters()) / 1e6, 1),
              "audio_seconds": length / sr, "cpu": cpu_model(), "threads": torch.get_num_threads(),
              "torch": torch.__version__}

    with torch.inference_mode():
        ref_codes = hf.encode(wav).audio_codes
        ref_audio = hf.decode(audio_codes=ref_codes).audio_values[:, None]
        codes = ours.encode(wav)
        assert torch.equal(codes, ref_codes), "codeclm and transformers codes differ"
        out = ours.decode(codes)
        result["identical_codes"] = True
        result["max_abs_audio_diff"] = float((out - ref_audio).abs().max())

        def hf_roundtrip():
            hf.decode(audio_codes=hf.encode(wav).audio_codes)

        def ours_roundtrip():
            ours.decode(ours.encode(wav))

        t, _ = interleaved({"hf": hf_roundtrip, "ours": ours_roundtrip,
                         "hf_dec": lambda: hf.decode(audio_codes=codes), "ours_dec": lambda: ours.decode(codes)},
                        args.repeats)
        t_hf, t_ours, t_hf_dec, t_ours_dec = t["hf"], t["ours"], t["hf_dec"], t["ours_dec"]
        seconds = length / sr
        result.update({
            "transformers_seconds": round(t_hf, 3), "codeclm_seconds": round(t_ours, 3),
            "transformers_x_realtime": round(seconds / t_hf, 3), "codeclm_x_realtime": round(seconds / t_ours, 3),
            "speedup_vs_transformers": round(t_hf / t_ours, 3),
            "decode_only_speedup": round(t_hf_dec / t_ours_dec, 3),
        })

        # overlapping-window decoding (what long inputs use) vs one whole-signal pass
        whole = ours.decode(codes)
        ctx = ours.context_frames()[1]
        saved = ours.config.window_frames
        windows = {}
        def windowed(window):
            def run():
                ours.config.window_frames = window
                try:
                    return ours.decode(codes)
                finally:
                    ours.config.window_frames = saved
            return run

        fns = {"whole": windowed(saved), **{str(w): windowed(w) for w in args.windows}}
        t, _ = interleaved(fns, args.repeats)
        for window in args.windows:
            diff = float((fns[str(window)]() - whole).abs().max())
            windows[str(window)] = {"time_ratio_vs_whole": round(t[str(window)] / t["whole"], 3),
                                    "ideal_ratio": round((window + 2 * ctx) / window, 3), "max_abs_diff": diff}
        result["decode_context_frames"] = ctx
        result["chunked_decode"] = windows

        if args.compile:
            import torch._inductor.config as inductor_config

            with inductor_config.patch(freezing=True):
                enc, dec = torch.compile(ours.encoder, dynamic=False), torch.compile(ours.decoder, dynamic=False)
                start = time.perf_counter()
                latent = enc(wav)
                q = ours.quantizer.decode(ours.quantizer.encode(latent, ours.num_codebooks))
                dec(q)
                result["compile_seconds"] = round(time.perf_counter() - start, 1)

                def compiled_roundtrip():
                    c = ours.quantizer.encode(enc(wav), ours.num_codebooks)
                    return c, dec(ours.quantizer.decode(c))

                c, audio = compiled_roundtrip()
                result["compiled_identical_codes"] = bool(torch.equal(c, ref_codes))
                result["compiled_max_abs_audio_diff"] = float((audio - ref_audio).abs().max())
                t, _ = interleaved({"hf": hf_roundtrip, "compiled": compiled_roundtrip}, args.repeats)
            result["compiled_x_realtime"] = round(seconds / t["compiled"], 3)
            result["compiled_speedup_vs_transformers"] = round(t["hf"] / t["compiled"], 3)

        if args.bf16_decode:  # the fast-decoder option: the encoder (and so the codes) stay fp32
            ours.set_decoder_dtype(torch.bfloat16)  # last: the cast rounds the decoder's weights
            assert torch.equal(ours.encode(wav), ref_codes), "bf16 decoder changed the codes"
            fast = ours.decode(codes)
            err = (fast.float() - out.float()).pow(2).mean().clamp(min=1e-20)
            result["bf16_decode_snr_db"] = round(float(10 * torch.log10(out.float().pow(2).mean() / err)), 1)
            result["bf16_decode_max_abs_diff"] = float((fast.float() - out.float()).abs().max())
            t, c = interleaved({"hf": hf_roundtrip, "bf16": ours_roundtrip,
                                "hf_dec": lambda: hf.decode(audio_codes=codes), "bf16_dec": lambda: ours.decode(codes)},
                               args.repeats)
            result.update({
                "bf16_decode_x_realtime": round(seconds / t["bf16"], 3),
                "bf16_decode_speedup_vs_transformers": round(t["hf"] / t["bf16"], 3),
                "bf16_decode_speedup_vs_transformers_cpu": round(c["hf"] / c["bf16"], 3),
                "bf16_decode_only_speedup": round(t["hf_dec"] / t["bf16_dec"], 3),
            })
    write_result(result, args.results)


if __name__ == "__main__":
    main()
