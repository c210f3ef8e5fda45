"""Rotary position embeddings, including the `rope_scaling` variants of Llama 3 and YaRN."""
import math

import torch

from engine.models.model_config import ModelConfig, ModelLoadError


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: dict) -> torch.Tensor:
    factor = rope["factor"]
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_len = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_inv_freq(cfg: ModelConfig, dim: int, rope: dict) -> tuple[torch.Tensor, float]:
    base, factor = cfg.rope_theta, rope["factor"]
    old_len = rope.get("original_max_position_embeddings") or cfg.max_position_embeddings
    beta_fast, beta_slow = rope.get("beta_fast") or 32, rope.get("beta_slow") or 1

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn_factor = rope.get("attention_factor")
    if attn_factor is None:
        if rope.get("mscale") and rope.get("mscale_all_dim"):
            attn_factor = mscale(factor, rope["mscale"]) / mscale(factor, rope["mscale_all_dim"])
        else:
            attn_factor = mscale(factor)

    def correction_dim(rotations):
        return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
    extrapolation_weight = 1 - ramp
    inv_freq = (1 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1 / pos_freqs) * extrapolation_weight
    return inv_freq, attn_factor


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the attention scaling factor for this model's RoPE."""
    dim = cfg.head_dim
    rope = cfg.rope_scaling or {}
    kind = rope.get("rope_type", "default")
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / rope["factor"], 1.0
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, rope), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(cfg, dim, rope)
    raise ModelLoadError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3, yarn)")


class RotaryEmbedding(torch.nn.Module):
    """RoPE angle tables, looked up per step by position.

    The cos/sin tables are plain tensors computed in fp32 on the CPU (also when the model is built on the meta
    device) and moved to the positions' device on first use; they grow when a position passes their end.
    """

    def __init__(self, cfg: ModelConfig, max_positions: int):
        super().__init__()
        self.inv_freq, self.attention_scaling = rope_inv_freq(cfg)
        self._build(max_positions, torch.device("cpu"))

    def _build(self, n: int, device: torch.device):
        freqs = torch.outer(torch.arange(n, dtype=torch.float32, device="cpu"), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * self.attention_scaling).to(device)
        self.sin = (emb.sin() * self.attention_scaling).to(device)

    def lookup(self, positions: torch.Tensor, max_position: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for non-negative `positions` of any shape: positions.shape + (head_dim,). A caller that knows
        a bound on the positions passes it as `max_position`, which saves reading their maximum (a host sync)."""
        max_pos = max_position
        if max_pos is None:
            max_pos = int(positions.max()) if positions.numel() else 0
        if max_pos >= self.cos.shape[0] or self.cos.device != positions.device:
            size = self.cos.shape[0]
            while size <= max_pos:
                size *= 2  # grow geometrically: one rebuild per doubling of the context, not one per step
            self._build(size, positions.device)
        return self.cos[positions], self.sin[positions]

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables for `positions`, shaped [tokens, 1, head_dim]; computed once per step."""
        cos, sin = self.lookup(positions)
        return cos.unsqueeze(1), sin.unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate query or key vectors [tokens, heads, head_dim] by their positions' angles (rotate-half layout)."""
    cos, sin = cos_sin
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def rotate_by(x: torch.Tensor, delta: torch.Tensor, rotary: RotaryEmbedding, max_offset: int | None = None
              ) -> torch.Tensor:
    """Rotate vectors x [..., head_dim] by position offsets `delta` (possibly negative) whose shape is a prefix of
    x's leading dimensions. RoPE rotations compose, so a cached key of position p moves to p + delta this way.
    A pure rotation: YaRN's attention scaling, already in the cached vectors, is not applied again. `max_offset`,
    if given, bounds |delta| (no host sync to find it)."""
    cos, sin = rotary.lookup(delta.abs(), max_offset)
    if rotary.attention_scaling != 1.0:
        cos, sin = cos / rotary.attention_scaling, sin / rotary.attention_scaling
    sin = sin * torch.where(delta < 0, -1.0, 1.0).to(sin.dtype)[..., None]
    shape = delta.shape + (1,) * (x.dim() - 1 - delta.dim()) + (x.shape[-1],)
    return apply_rotary(x, (cos.view(shape), sin.view(shape)))
