"""Token LM training (task: lm): loss goes down, the export folder loads back, kill + resume is exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from codeclm.data.tokens import FORMAT, INDEX, META, VERSION, TokenCache, shard_name
from codeclm.errors import ConfigError
from codeclm.lm import LMConfig, TokenLM
from codeclm.lm.text_encoder import BuiltinTextConditioner
from codeclm.pretrained import load_weights_into, read_config, read_weights
from codeclm.training import checkpoint as ckpt
from codeclm.training.config import load_recipe
from codeclm.training.trainer import train
from conftest import kill_after_step

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "lm_music_tiny.yaml"
STYLES = ["calm piano piece in c major", "fast rock track with drums", "sad jazz ballad with alto sax",
          "bright pop song with synth lead", "dark ambient drone"]


def make_cache(folder: Path, n: int = 40, frames: int = 24, n_q: int = 2, card: int = 16) -> Path:
    """A token cache in the tokenize_corpus format: each caption's style fixes a simple, learnable
    code sequence (a style-dependent alternation of two codes), so the loss falls fast."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "codec": {"name": "fake", "sha256": "0" * 64}, "n_q": n_q,
            "bandwidth": None, "frame_rate": 50, "bins": card, "sample_rate": 24000, "channels": 1,
            "hop_length": 480, "dtype": "int16"}
    (folder / META).write_text(json.dumps(meta))
    g = torch.Generator().manual_seed(0)
    chunks, lines, offset = [], [], 0
    for i in range(n):
        style = i % len(STYLES)
        length = frames - (i % 3) * 6  # some records shorter than a crop: padding is masked
        t = torch.arange(length) + int(torch.randint(0, 2, (1,), generator=g))
        codes = torch.stack([(2 * style + t % 2 + 5 * k) % card for k in range(n_q)]).to(torch.int16)
        chunks.append(codes)
        lines.append(json.dumps({"path": f"/fake/{i}.wav", "duration": length / 50, "text": None,
                                 "caption": STYLES[style], "speaker": None, "language": None, "shard": 0,
                                 "offset": offset, "n_frames": length}) + "\n")
        offset += length
    save_file({"codes": torch.cat(chunks, dim=1).contiguous()}, str(folder / shard_name(0)))
    (folder / INDEX).write_text("".join(lines))
    return folder


def make_chroma_cache(folder: Path, n: int = 12) -> Path:
    """:func:`make_cache` with a chroma track (pitch classes 0..12 cycling over the frames) and
    ``chroma`` set in its meta: a cache a melody LM trains on."""
    from safetensors.torch import load_file

    cache = make_cache(folder, n=n)
    meta = json.loads((cache / META).read_text())
    meta["chroma"] = True
    (cache / META).write_text(json.dumps(meta))
    shard = load_file(str(cache / shard_name(0)))
    shard["chroma"] = (torch.arange(shard["codes"].shape[1]) % 13).to(torch.uint8)[None]
    save_file(shard, str(cache / shard_name(0)))
    return cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("tokens") / "cache")


def _args(cache: Path, out_dir: Path, steps: int, *extra: str) -> list[str]:
    return [f"data.token_cache={cache}", f"out_dir={out_dir}", f"max_steps={steps}", "seed=1", *extra]


def _metrics(out_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("samples_per_s")} for r in rows]


def test_recipes_load_and_errors():
    cfg = load_recipe(REPO / "recipes" / "lm_music.yaml")
    assert cfg.task == "lm" and cfg.model.n_q == 4 and cfg.model.card == 1024 and cfg.model.dim == 256
    assert cfg.model.num_layers == 6 and cfg.model.pattern == "delay" and cfg.model.cross_attention
    cfg = load_recipe(TINY, ["data.token_cache=x", "lm.cond_dropout=0.3", "text.dim=16"])
    assert cfg.lm.cond_dropout == 0.3 and cfg.text.dim == 16 and cfg.data.segment_frames == 16
    for overrides, expected in [
        (["data.token_cache=x", "lm.bogus=1"], "unknown key 'lm.bogus' on the command line; valid keys under 'lm'"),
        (["data.token_cache=x", "model.filters=3"], "unknown key 'model.filters'"),
        (["data.token_cache=x", "text.vocab=3"], "unknown key 'text.vocab'"),
        ([], "data.token_cache is required"),
        (["data.token_cache=x", "lm.cond_dropout=2"], "cond_dropout"),
        (["data.token_cache=x", "model.cross_attention=false"], "cross_attention"),
        (["data.token_cache=x", "model.pattern=zigzag"], "pattern"),
        (["data.token_cache=x", "lm.window_seconds=0"], "lm.window_seconds must be a positive number"),
        (["data.token_cache=x", "lm.codebook_temperatures=[1]"], "codebook temperatures must be 2 numbers"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_recipe(TINY, overrides)
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_cache_mismatch_is_an_error(cache, tmp_path):
    cfg = load_recipe(TINY, _args(cache, tmp_path / "x", 1, "model.card=32"))
    with pytest.raises(ConfigError, match="bins"):
        train(cfg)


def test_train_reduces_loss_and_export_loads(cache, tmp_path):
    out = tmp_path / "run"
    train(load_recipe(TINY, _args(cache, out, 20, "ckpt_every=0", "valid_every=0", "log_every=1")))
    rows = _metrics(out)
    ce = [r["train/ce"] for r in rows if "train/ce" in r]
    assert len(ce) == 20 and all("train/ce_q0" in r and "train/ce_q1" in r for r in rows if "train/ce" in r)
    assert sum(ce[-5:]) / 5 < 0.8 * sum(ce[:3]) / 3, ce
    assert any("valid/ppl" in r for r in rows)
    assert (out / "text_tokenizer" / "tokenizer.model").is_file()

    # the export folder: lm/ + text/ + pipeline.json, loads back and gives the same logits
    folder = out / "model"
    pipeline = json.loads((folder / "pipeline.json").read_text())
    assert pipeline["pattern"] == "delay" and pipeline["codec"] is None and pipeline["n_q"] == 2
    assert read_config(folder / "lm")["model_type"] == "codeclm-lm"
    config = LMConfig.from_dict(read_config(folder / "lm"), str(folder))
    lm = TokenLM(config).eval()
    load_weights_into(lm, read_weights(folder / "lm"), str(folder))
    text = BuiltinTextConditioner.load(folder / "text")
    from codeclm.lm.conditioners import load_conditioner

    assert isinstance(load_conditioner(folder / "text"), BuiltinTextConditioner)
    from safetensors.torch import load_file

    lm_ref = TokenLM(config).eval()
    lm_ref.load_state_dict(load_file(str(ckpt.latest_checkpoint(out) / "lm.safetensors")))
    text_ref = BuiltinTextConditioner.load(folder / "text")
    text_ref.load_state_dict(load_file(str(ckpt.latest_checkpoint(out) / "text.safetensors")))
    codes = TokenCache(cache)[0]["codes"][:2, :16][None]
    pattern = config.get_pattern()
    with torch.no_grad():
        cond, mask = text(text.tokenize([STYLES[0], ""]))
        seq, _ = pattern.build(codes.expand(2, -1, -1), config.special_token)
        a = lm(seq, cond, mask)
        cond_r, mask_r = text_ref(text_ref.tokenize([STYLES[0], ""]))
        b = lm_ref(seq, cond_r, mask_r)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    valid = [r["valid/ce"] for r in rows if "valid/ce" in r]
    assert valid and valid[-1] < float(torch.log(torch.tensor(16.0)))  # better than uniform on held-out crops


def _cmd(cache: Path, out_dir: Path, steps: int) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), str(TINY), *_args(cache, out_dir, steps),
            "log_every=1", "valid_every=3", "ckpt_every=2", "keep_last=2", "optim.schedule=cosine",
            "optim.warmup_steps=2", "ema_decay=0.9", "lm.cond_dropout=0.3", "model.dim=64", "model.num_layers=3"]


def test_kill_and_resume_equals_uninterrupted(cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps, kill_after = 8, 5
    straight = tmp_path / "straight"
    subprocess.run(_cmd(cache, straight, steps), check=True, env=env, capture_output=True, timeout=300)

    for attempt in range(3):  # a tiny run can finish before the kill lands: try again in a new folder
        killed = tmp_path / f"killed{attempt}"
        kill_after_step(_cmd(cache, killed, steps), killed, kill_after, env)
        latest = ckpt.latest_checkpoint(killed)
        if latest is not None and json.loads((latest / "meta.json").read_text())["step"] < steps:
            break
    else:
        pytest.fail("the training run finished three times before it could be killed")
    resumed = subprocess.run(_cmd(cache, killed, steps), env=env, capture_output=True, text=True, timeout=300,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    a, b = _metrics(straight), _metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b] and a[-1]["step"] == steps
    assert any("valid/ce" in r for r in a) and any(0 < r.get("train/cond_dropped", 0) for r in a)
    assert a == b  # every loss, learning rate and validation metric, bit for bit
    assert (straight / "state_hash.rank0.txt").read_text() == (killed / "state_hash.rank0.txt").read_text()


def test_init_from_an_export_starts_at_its_weights_and_tokenizer(cache, tmp_path):
    """``init_from`` on the LM task: every exported part (lm/ and the text conditioner) is loaded
    and the export's caption tokenizer is reused (no new one is trained)."""
    first = tmp_path / "first"
    train(load_recipe(TINY, _args(cache, first, 6, "ckpt_every=0", "valid_every=0", "lm.window_seconds=10",
                                  "lm.codebook_temperatures=[1,0.5]")))
    start = first / "model"
    info = json.loads((start / "pipeline.json").read_text())  # the recipe's generation defaults travel with it
    assert info["window_seconds"] == 10.0 and info["codebook_temperatures"] == [1.0, 0.5]
    tuned = tmp_path / "tuned"
    train(load_recipe(TINY, _args(cache, tuned, 1, "ckpt_every=0", "valid_every=0", "optim.lr=1e-12",
                                  "optim.warmup_steps=0", "optim.weight_decay=0", "seed=3", f"init_from={start}")))
    assert not (tuned / "text_tokenizer").exists()
    for part in ("lm", "text"):
        a, b = read_weights(start / part), read_weights(tuned / "model" / part)
        assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a), part
    assert (tuned / "model" / "text" / "tokenizer.model").read_bytes() == (start / "text" / "tokenizer.model").read_bytes()
    with pytest.raises(ConfigError, match="init_from") as err:
        train(load_recipe(TINY, _args(cache, tmp_path / "wide", 1, "model.num_layers=3", f"init_from={start}")))
    assert "\n" not in str(err.value)

    # lm.init_codebooks: codebook k starts from the export's codebook init_codebooks[k] (null: fresh)
    moved = tmp_path / "moved"
    train(load_recipe(TINY, _args(cache, moved, 1, "ckpt_every=0", "valid_every=0", "optim.lr=1e-12",
                                  "optim.warmup_steps=0", "optim.weight_decay=0", "seed=3", f"init_from={start}",
                                  "lm.init_codebooks=[null,0]")))
    a, b = read_weights(start / "lm"), read_weights(moved / "model" / "lm")
    for kind in ("emb", "heads"):
        assert torch.allclose(b[f"{kind}.1.weight"].float(), a[f"{kind}.0.weight"].float(), atol=1e-6)
        assert not torch.allclose(b[f"{kind}.0.weight"].float(), a[f"{kind}.0.weight"].float(), atol=1e-3)
    assert torch.allclose(b["out_norm.weight"].float(), a["out_norm.weight"].float(), atol=1e-6)
    for rows, msg in (("[0]", "must give each of the 2 codebooks"), ("[0,2]", "must give each"),
                      ("[0,1]", None)):
        overrides = _args(cache, tmp_path / f"r{len(rows)}{rows[-2]}", 1, "valid_every=0", f"init_from={start}",
                          f"lm.init_codebooks={rows}")
        if msg is None:
            train(load_recipe(TINY, overrides))  # the identity map is the default's result
            continue
        with pytest.raises(ConfigError, match=msg):
            train(load_recipe(TINY, overrides))
    with pytest.raises(ConfigError, match="init_codebooks maps the codebooks of init_from"):
        load_recipe(TINY, _args(cache, tmp_path / "x", 1, "lm.init_codebooks=[0,1]"))
