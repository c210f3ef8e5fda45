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

    The cos/sin tables hold one entry per frequency (head_dim / 2 columns: the rotate-half layout uses each twice).
    They are plain tensors computed in fp32 on the CPU (also when the model is built on the meta device) and moved
    to the positions' device on first use; they grow when a position passes their end.
    """

    def __init__(self, cfg: ModelConfig, max_positions: int):
        super().__init__()
        self.inv_freq, self.attention_scaling = rope_inv_freq(cfg)
        self._build(max_positions, torch.device("cpu"))

    def _build(self, n: int, device: torch.device):
        freqs = torch.outer(torch.arange(n, dtype=torch.float32, device="cpu"), self.inv_freq)
        self.cos = (freqs.cos() * self.attention_scaling).to(device)
        self.sin = (freqs.sin() * self.attention_scaling).to(device)

    def lookup(self, positions: torch.Tensor, max_position: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for non-negative `positions` of any shape: positions.shape + (head_dim / 2,). A caller that
        knows a bound on the positions passes it as `max_position`, which saves reading their maximum (a host
        sync)."""
        max_pos = max_position
        if max_pos is None:
            max_pos = int(positions.max()) if positions.numel() else 0
        self._cover(max_pos + 1, positions.device)
        flat = positions.reshape(-1)
        shape = positions.shape + (self.cos.shape[1],)
        return self.cos.index_select(0, flat).view(shape), self.sin.index_select(0, flat).view(shape)

    def lookup_blocks(self, blocks: torch.Tensor, block_size: int, max_position: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for whole blocks of positions (block b holds b·block_size ..): blocks [..., n] ->
        [..., n·block_size, head_dim / 2], one table row read per block instead of one per position.
        `max_position` bounds the positions."""
        self._cover(max_position + 1, blocks.device)
        rows = self.cos.shape[0] // block_size * block_size
        shape = blocks.shape[:-1] + (blocks.shape[-1] * block_size, self.cos.shape[1])
        flat = blocks.reshape(-1)
        return tuple(table[:rows].view(rows // block_size, -1).index_select(0, flat).view(shape)
                     for table in (self.cos, self.sin))

    def range(self, start: int, end: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions start..end-1 (0 <= start): slices of the tables, no lookup."""
        self._cover(end, device)
        return self.cos[start:end], self.sin[start:end]

    def _cover(self, end: int, device: torch.device):
        """Tables on `device` holding positions 0..end-1."""
        if end > self.cos.shape[0] or self.cos.device != device:
            size = self.cos.shape[0]
            while size < end:
                size *= 2  # grow geometrically: one rebuild per doubling of the context, not one per step
            self._build(size, device)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables for `positions`, shaped [tokens, 1, head_dim / 2]; computed once per step."""
        cos, sin = self.lookup(positions)
        return cos.unsqueeze(1), sin.unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], inverse: bool = False
                 ) -> torch.Tensor:
    """Rotate query or key vectors [..., head_dim] (rotate-half layout) by the angles whose cos and sin
    [..., head_dim / 2] broadcast against them; `inverse` rotates by the opposite angles."""
    cos, sin = (t.to(x.dtype) for t in cos_sin)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    beyond = cos.dim() > x.dim() or any(c > n for c, n in zip(cos.shape[-2::-1], x.shape[-2::-1]))
    if torch.is_grad_enabled() or beyond:   # autograd: out= and in-place ops are not differentiable
        sin = -sin if inverse else sin
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    sign = -1 if inverse else 1   # the same, without temporaries
    out = torch.empty_like(x)
    first, second = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=first).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=second).addcmul_(x1, sin, value=sign)
    return out


def _unscaled(rotary: RotaryEmbedding, cos_sin):
    """A pure rotation: YaRN's attention scaling, already in the cached vectors, is not applied again."""
    if rotary.attention_scaling == 1.0:
        return cos_sin
    return tuple(t / rotary.attention_scaling for t in cos_sin)


def rotate_by(x: torch.Tensor, delta: torch.Tensor, rotary: RotaryEmbedding, max_offset: int | None = None
              ) -> torch.Tensor:
    """Rotate vectors x [..., head_dim] by position offsets `delta` (possibly negative) whose shape is a prefix of
    x's leading dimensions. RoPE rotations compose, so a cached key of position p moves to p + delta this way.
    `max_offset`, if given, bounds |delta| (no host sync to find it)."""
    cos, sin = _unscaled(rotary, rotary.lookup(delta.abs(), max_offset))
    sin = sin * torch.where(delta < 0, -1.0, 1.0).to(sin.dtype)[..., None]
    return _rotate_leading(x, cos, sin)


def unrotate(x: torch.Tensor, positions: torch.Tensor, rotary: RotaryEmbedding, max_position: int | None = None
             ) -> torch.Tensor:
    """Cached (post-RoPE) vectors x [..., head_dim] at non-negative `positions` (a prefix of x's leading shape)
    back to position 0: `rotate_by(x, -positions)` without the sign tensor."""
    return _rotate_leading(x, *_unscaled(rotary, rotary.lookup(positions, max_position)), inverse=True)


def unrotate_blocks(x: torch.Tensor, blocks: torch.Tensor, block_size: int, rotary: RotaryEmbedding,
                    max_position: int) -> torch.Tensor:
    """`unrotate` for vectors x [..., n·block_size, head_dim] that fill the whole position blocks [..., n]."""
    return _rotate_leading(x, *_unscaled(rotary, rotary.lookup_blocks(blocks, block_size, max_position)),
                           inverse=True)


def unrotate_range(x: torch.Tensor, first: int, rotary: RotaryEmbedding) -> torch.Tensor:
    """Vectors x [T, ...] at the consecutive positions first..first+T-1 back to position 0."""
    return _rotate_leading(x, *_unscaled(rotary, rotary.range(first, first + x.shape[0], x.device)), inverse=True)


def unrotation_matrix(position: int, rotary: RotaryEmbedding, device: torch.device, dtype: torch.dtype
                      ) -> torch.Tensor:
    """M [head_dim, head_dim] with x @ M = unrotate_range(x, position) for vectors x [..., head_dim] at `position`:
    moves a decode step's query back by one product in each layer instead of the half-by-half updates."""
    cos, sin = (t[0].to(dtype) for t in _unscaled(rotary, rotary.range(position, position + 1, device)))
    half = cos.shape[0]
    eye = torch.eye(2 * half, dtype=dtype, device=device)
    # (x @ M)_j = x_j cos_j + x_(j+half mod head_dim) s_j, with s = [sin, −sin]: the rotate-half rotation backwards
    return eye * torch.cat([cos, cos]) + eye.roll(half, dims=0) * torch.cat([sin, -sin])


def _rotate_leading(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """apply_rotary with angles [*lead, head_dim / 2] whose leading shape is a prefix of x's."""
    shape = cos.shape[:-1] + (1,) * (x.dim() - cos.dim()) + cos.shape[-1:]
    return apply_rotary(x, (cos.view(shape), sin.view(shape)), inverse=inverse)
