"""Dia decoding speed: codeclm's DiaModel loop vs transformers' ``DiaForConditionalGeneration.generate``.

One small random Dia (same seed, same weights in both), greedy decoding with classifier-free
guidance (scale 3, transformers' default top-k 50 on the guided scores; batch 2B inside), text
only. Both are timed on the whole generate call (encoder, prefill, every decoder step), warmed up
once, the fastest of ``--repeats`` runs counting. The tokens must be identical (asserted).
The machine may be shared: ``*_cpu_time`` figures use the process CPU time.
``matmul_floor_steps_per_cpu_s``: the weight matmuls of one decoder step alone (every linear layer
of the decoder and the logits head on the 2B guided rows; the cross-attention keys/values are
computed once per generation), back to back: a bound for any fp32 implementation, and
``max_speedup_cpu_time`` that bound over transformers' CPU-time rate.

``int8_*``: the same loop on an int8 weight-only copy (:func:`codeclm.lm.quant.quantize_int8`: every
linear layer of the encoder, the decoder and the head; a quarter of the bytes per step). Its tokens
are not fp32's. This random model (scale-1 attention, wide weights) is chaotic: a relative weight
change of 1e-4 already moves its teacher-forced logits by ~8 %, so its tokens cannot tell what int8
costs a trained Dia; ``int8_linear_rel_err`` is the cost per layer (the mean over the quantised
layers of ``|int8(x) - linear(x)| / |linear(x)|`` on Gaussian inputs; tests/test_dia_parity.py
checks a calm model's teacher-forced logits). Prints one JSON line (with the machine) and appends it to
``benchmarks/results/dia_speed.jsonl``::

    python benchmarks/dia_speed.py [--steps 200] [--dim 512] [--layers 6] [--threads 1] [--repeats 3] [--no-int8]
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch
from timing import best_time, matmul_floor_seconds, write_result

from codeclm.threads import cpu_model


def build(dim: int, layers: int, seed: int = 0):
    from transformers import DiaConfig, DiaDecoderConfig, DiaEncoderConfig, DiaForConditionalGeneration

    torch.manual_seed(seed)
    enc = DiaEncoderConfig(hidden_size=dim // 2, num_hidden_layers=max(1, layers // 2), num_attention_heads=4,
                           num_key_value_heads=4, head_dim=dim // 8, intermediate_size=2 * dim,
                           max_position_embeddings=1024)
    dec = DiaDecoderConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                           head_dim=dim // 8, cross_num_attention_heads=8, cross_head_dim=dim // 8,
                           cross_num_key_value_heads=8, cross_hidden_size=dim // 2, intermediate_size=4 * dim,
                           max_position_embeddings=1024)
    model = DiaForConditionalGeneration(DiaConfig(encoder_config=enc.to_dict(), decoder_config=dec.to_dict())).eval()
    with torch.no_grad():  # wider than the 0.02 init: confident argmaxes, no float near-ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 / p.shape[1] ** 0.5)
    return model


def matmul_floor(model, rows: int, steps: int, repeats: int) -> float:
    """Best CPU seconds of ``steps`` decoder steps' weight matmuls alone (see the module docstring)."""
    weights = [m.weight for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and (".decoder." in name or name == "logits_dense")
               and not name.endswith(("cross_attention.k_proj", "cross_attention.v_proj"))]
    return matmul_floor_seconds(weights, rows, steps, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="max_new_tokens")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 weight-only variant")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "dia_speed.jsonl"),
                    help="JSON-lines file the result is appended to ('' for none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from codeclm.lm.dia import encode_text
    from codeclm.lm.dia_hf import dia_from_hf

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    model = build(args.dim, args.layers)
    ours = dia_from_hf(model)
    text = "[S1] Dia is an open weights text to dialogue model. [S2] You get full control over scripts and voices."
    ids = torch.tensor([encode_text(text)])
    dc = model.config.decoder_config
    delays = torch.tensor(model.config.delay_pattern)
    max_delay = int(delays.max())
    # what DiaProcessor gives for text only: the delayed BOS frame (BOS while step <= delay, then PAD)
    steps = torch.arange(1 + max_delay)[:, None]
    delayed = torch.where(steps <= delays[None, :], dc.bos_token_id, dc.pad_token_id)[None]
    hf_inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=delayed,
                     decoder_attention_mask=torch.ones(1, 1 + max_delay, dtype=torch.long))

    def run_hf():
        with torch.no_grad():
            return model.generate(**{k: v.clone() for k, v in hf_inputs.items()}, max_new_tokens=args.steps,
                                  do_sample=False, guidance_scale=3.0)

    def run_ours():
        return ours.generate_steps(ids, None, None, max_new_tokens=args.steps, guidance_scale=3.0, top_k=50)

    hf_wall, hf_cpu, hf_out = best_time(run_hf, args.repeats)
    our_wall, our_cpu, our_out = best_time(run_ours, args.repeats)
    theirs = hf_out.transpose(1, 2).long()
    same = bool(torch.equal(theirs, our_out.steps))
    assert same, "codeclm and transformers generated different tokens"
    steps = our_out.steps.shape[2] - our_out.prompt_steps
    result = {
        "benchmark": "dia_speed", "cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
        "config": {"dim": args.dim, "layers": args.layers, "enc_dim": args.dim // 2, "kv_heads": 2, "heads": 8,
                   "n_q": 9, "vocab": 1028, "params_m": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2)},
        "guidance_scale": 3.0, "steps": steps, "same_tokens": same,
        "transformers_steps_per_s": round(steps / hf_wall, 1),
        "codeclm_steps_per_s": round(steps / our_wall, 1),
        "speedup": round(hf_wall / our_wall, 2),
        "transformers_steps_per_cpu_s": round(steps / hf_cpu, 1),
        "codeclm_steps_per_cpu_s": round(steps / our_cpu, 1),
        "speedup_cpu_time": round(hf_cpu / our_cpu, 2),
    }
    floor = matmul_floor(model, 2 * ids.shape[0], steps, args.repeats)
    result["matmul_floor_steps_per_cpu_s"] = round(steps / floor, 1)
    result["max_speedup_cpu_time"] = round(hf_cpu / floor, 2)
    if not args.no_int8:
        from codeclm.lm.quant import int8_available, quantize_int8

        if int8_available():
            q = quantize_int8(ours)
            q_wall, q_cpu, _ = best_time(lambda: q.generate_steps(ids, None, None, max_new_tokens=args.steps,
                                                                  guidance_scale=3.0, top_k=50), args.repeats)
            errors = []
            with torch.no_grad():
                layers = dict(q.named_modules())
                for name, m in ours.named_modules():
                    if isinstance(m, torch.nn.Linear):
                        x = torch.randn(8, m.in_features, generator=torch.Generator().manual_seed(0))
                        y = m(x)
                        errors.append(float((layers[name](x) - y).norm() / y.norm()))
            result.update({
                "codeclm_int8_steps_per_s": round(steps / q_wall, 1),
                "int8_speedup": round(hf_wall / q_wall, 2),
                "int8_speedup_cpu_time": round(hf_cpu / q_cpu, 2),
                "int8_vs_fp32": round(our_wall / q_wall, 2),
                "int8_linear_rel_err": round(sum(errors) / len(errors), 4),
            })
    write_result(result, args.results)


if __name__ == "__main__":
    main()
