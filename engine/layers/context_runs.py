"""A sequence's cached keys and values read where they lie in the pool (CPU), not gathered first.

The pool is `[slots, Hkv, D]`, so the tokens of consecutive blocks are one strided view `[Hkv, S, D]` that flash
attention reads as it is. The plain paths used to gather every cached key and value into a buffer first: at 32k
tokens on the demo model that copy took as long as the attention over it. Here each long run of consecutive blocks
is one attention piece over a view of the pool; the tokens of the short runs are gathered into one more piece; the
pieces are merged by their log-sum-exp (engine.layers.attention_pieces). A lone sequence in a fresh pool is one run.
"""
from dataclasses import dataclass

import torch

from engine.layers.attention_pieces import flash_piece
from engine.layers.gather_buffers import GatherBuffers

# A run shorter than this is gathered with the other short runs: an extra piece (a flash call and a merge) costs
# about what gathering ~1k tokens does (demo shape, 1 thread), so runs below 2k tokens save nothing.
MIN_RUN_TOKENS = 2048


@dataclass
class ContextRuns:
    """Where a sequence's first `num_tokens` cached tokens lie: long runs read in place, the rest by slot."""
    runs: list[tuple[int, int]]       # (first slot, tokens) of each run of consecutive blocks read in place
    rest: torch.Tensor | None         # slots of the other tokens, in order; None if there are none


def context_runs(block_table: list[int], num_tokens: int, block_size: int) -> ContextRuns | None:
    """The runs of consecutive blocks holding at least MIN_RUN_TOKENS of the first `num_tokens` tokens, and the
    slots of the others; None if no run is that long (then a plain gather is as fast)."""
    min_tokens = MIN_RUN_TOKENS
    num_blocks = -(-num_tokens // block_size)
    if num_tokens < min_tokens or num_blocks == 0:
        return None
    blocks = torch.tensor(block_table[:num_blocks], dtype=torch.long)
    breaks = (torch.nonzero(blocks[1:] != blocks[:-1] + 1).flatten() + 1).tolist()
    runs, rest = [], []
    for first, end in zip([0] + breaks, breaks + [num_blocks]):
        tokens = min(end * block_size, num_tokens) - first * block_size
        if tokens >= min_tokens:
            runs.append((int(blocks[first]) * block_size, tokens))
        else:
            rest.append((blocks[first:end, None] * block_size + torch.arange(block_size)).flatten()[:tokens])
    if not runs:
        return None
    return ContextRuns(runs, torch.cat(rest) if rest else None)


def context_pieces(q_heads: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, context: ContextRuns,
                   buffers: GatherBuffers, scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Attention of q_heads [1, H, w, D] over every token of `context` (all visible), as (output, log-sum-exp)
    pieces in fp32 for merge_pieces."""
    pieces = []
    for first, tokens in context.runs:
        pieces.append(flash_piece(q_heads, k_flat[first:first + tokens].transpose(0, 1),
                                  v_flat[first:first + tokens].transpose(0, 1), scale)[:2])
    if context.rest is not None:
        keys, values = buffers.keys_values(k_flat, v_flat, context.rest)
        pieces.append(flash_piece(q_heads, keys.transpose(0, 1), values.transpose(0, 1), scale)[:2])
    return [(out.float(), lse.float()) for out, lse in pieces]
