"""The token LM's configuration: one dataclass, saved as ``config.json`` beside the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from codeclm.errors import ConfigError
from codeclm.lm.patterns import Pattern, get_pattern
from codeclm.pretrained import SavedConfig

MODEL_TYPE = "codeclm-lm"
POSITIONAL = ("sinusoidal", "rope")


@dataclass
class LMConfig(SavedConfig):
    """A decoder-only transformer over K parallel codebooks (MusicGen's LM shape).

    ``card`` is the codebook size; token id ``card`` is the special (start/pad) token, so each
    codebook embedding has ``card + 1`` rows. ``max_seq_len`` bounds streaming decoding (the KV
    cache is preallocated to that many steps); offline calls are not limited by it.
    ``pattern``/``delays`` name the codebook interleaving the model was trained with
    (:func:`codeclm.lm.patterns.get_pattern`). ``cond_dim`` is the width of the cross-attention
    conditioning; when it differs from ``dim`` the model owns a linear projection to ``dim``.
    """

    model_type: ClassVar[str] = MODEL_TYPE
    kind: ClassVar[str] = "LM"

    n_q: int = 4
    card: int = 1024
    dim: int = 512
    num_heads: int = 8
    num_layers: int = 8
    ffn_dim: int | None = None  # None: hidden_scale * dim
    hidden_scale: float = 4.0
    dropout: float = 0.0
    positional: str = "sinusoidal"  # added at the input (MusicGen) or "rope" inside attention
    max_period: float = 10_000.0  # of the sinusoidal / rotary frequencies
    max_seq_len: int = 2048
    cross_attention: bool = False
    causal: bool = True  # False: bidirectional self-attention (VALL-E's NAR stage; no streaming)
    cond_dim: int | None = None  # None: dim
    norm_first: bool = True  # pre-norm blocks (+ a final norm); False: post-norm
    norm_eps: float = 1e-5
    bias_attn: bool = False
    bias_ffn: bool = False
    bias_heads: bool = False
    pattern: str = "delay"
    delays: list[int] | None = None

    def __post_init__(self) -> None:
        if self.delays is not None:
            self.delays = [int(d) for d in self.delays]
        self.validate()

    # -- derived quantities --------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """Width of the feed-forward layer."""
        return int(self.ffn_dim) if self.ffn_dim is not None else int(self.hidden_scale * self.dim)

    @property
    def special_token(self) -> int:
        return self.card

    @property
    def condition_dim(self) -> int:
        return self.dim if self.cond_dim is None else int(self.cond_dim)

    def get_pattern(self) -> Pattern:
        """The codebook pattern this model reads and writes."""
        kwargs = {} if self.delays is None else {"delays": self.delays}
        return get_pattern(self.pattern, self.n_q, **kwargs)

    def validate(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"lm config: {msg}")

        for name in ("n_q", "card", "dim", "num_heads", "num_layers", "max_seq_len"):
            if int(getattr(self, name)) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise bad(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.positional not in POSITIONAL:
            raise bad(f"positional must be one of {POSITIONAL}, got {self.positional!r}")
        if self.positional == "rope" and self.head_dim % 2:
            raise bad(f"rope needs an even head_dim, got {self.head_dim}")
        if self.positional == "sinusoidal" and self.dim % 2:
            raise bad(f"sinusoidal positions need an even dim, got {self.dim}")
        if self.hidden_dim < 1:
            raise bad(f"feed-forward width must be >= 1 (ffn_dim={self.ffn_dim}, hidden_scale={self.hidden_scale})")
        if not 0.0 <= self.dropout < 1.0:
            raise bad(f"dropout must be in [0, 1), got {self.dropout}")
        if self.max_period <= 1 or self.norm_eps <= 0:
            raise bad(f"max_period must be > 1 and norm_eps > 0 (got {self.max_period}, {self.norm_eps})")
        if self.cond_dim is not None and self.cond_dim < 1:
            raise bad(f"cond_dim must be >= 1, got {self.cond_dim}")
        self.get_pattern()  # raises ConfigError for an unknown pattern or bad delays

