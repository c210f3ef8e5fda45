"""Block summaries kept beside the paged KV pool, per layer and physical block.

- `repr`: the representative key (pre-RoPE): per KV head, the mean of the `repr_topk` keys of the block that
  received the most attention while they were in the local window (InfLLM / ActQKV).
- `kmin`, `kmax`: channel-wise min and max of the block's keys as cached (Quest).
- `received`: per cached token and KV head, the attention it has received from local-window queries so far.
"""
import torch

from engine.layers.rotary import RotaryEmbedding, rotate_by


class BlockSummaries:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 device: torch.device):
        def make(*shape):
            return [torch.zeros(*shape, device=device) for _ in range(num_layers)]
        self.block_size = block_size
        self.repr = make(num_blocks, kv_heads, head_dim)
        self.kmin = make(num_blocks, kv_heads, head_dim)
        self.kmax = make(num_blocks, kv_heads, head_dim)
        self.received = make(num_blocks * block_size, kv_heads)

    def finalize(self, layer: int, block_ids: torch.Tensor, first_position: torch.Tensor, keys: torch.Tensor,
                 rotary: RotaryEmbedding, repr_topk: int, last_position: int | None = None):
        """Summarise blocks `block_ids` [nb] whose cached (post-RoPE) keys are `keys` [nb, bs, Hkv, D] and whose
        first token sits at `first_position` [nb] (`last_position`: a bound on their last token's, if known)."""
        bs = self.block_size
        positions = (first_position[:, None] + torch.arange(bs, device=keys.device)).flatten()
        pre = rotate_by(keys.flatten(0, 1).float(), -positions, rotary, last_position).view_as(keys)
        received = self.received[layer].view(-1, bs, keys.shape[2])[block_ids]            # [nb, bs, Hkv]
        top = received.topk(min(repr_topk, bs), dim=1).indices                              # [nb, r, Hkv]
        chosen = pre.gather(1, top[..., None].expand(-1, -1, -1, keys.shape[-1]))
        self.repr[layer][block_ids] = chosen.mean(1)
        self.kmin[layer][block_ids] = keys.float().amin(1)
        self.kmax[layer][block_ids] = keys.float().amax(1)
