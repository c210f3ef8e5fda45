"""Attention pieces merged by log-sum-exp, the reused KV gather buffers, and glibc's malloc thresholds."""
import resource
import sys

import pytest
import torch
import torch.nn.functional as F

from engine.layers.attention import Attention
from engine.layers.attention_pieces import flash_piece, merge_pieces, softmax_with_lse
from engine.layers.gather_buffers import GatherBuffers
from engine.malloc_tuning import keep_freed_memory


def test_softmax_with_lse_matches_torch_and_hides_exactly():
    torch.manual_seed(0)
    scores = torch.randn(3, 5, 200) * 60   # spreads far past exp's normal range
    hidden = torch.rand(3, 5, 200) < 0.3
    hidden[..., 0] = False
    probs, lse = softmax_with_lse(scores, hidden)
    masked = scores.masked_fill(hidden, float("-inf"))
    assert torch.allclose(probs, torch.softmax(masked, -1), atol=1e-6)
    assert torch.allclose(lse, masked.logsumexp(-1), atol=1e-5)
    assert (probs[hidden] == 0).all()


@pytest.mark.parametrize("masked", [False, True])
def test_pieces_merge_to_attention_over_their_union(masked):
    torch.manual_seed(1)
    heads, kv_heads, w, dim, n = 8, 2, 5, 16, 70
    q = torch.randn(1, heads, w, dim)
    keys, values = torch.randn(kv_heads, n, dim), torch.randn(kv_heads, n, dim)
    keep = torch.rand(kv_heads, 40) < 0.5 if masked else None
    keep_all = torch.cat([keep, torch.ones(kv_heads, 30, dtype=torch.bool)], 1) if masked else None
    pieces = [flash_piece(q, keys[:, :40], values[:, :40], 0.25, mask=keep)[:2],
              flash_piece(q, keys[:, 40:], values[:, 40:], 0.25)[:2]]
    out, _ = merge_pieces(pieces)
    bias = None if keep_all is None else keep_all.repeat_interleave(heads // kv_heads, 0)[None, :, None, :]
    ref = F.scaled_dot_product_attention(q, keys[None], values[None], attn_mask=bias, scale=0.25, enable_gqa=True)
    assert (out - ref).abs().max() < 1e-5


def test_prefill_after_context_equals_the_masked_attention():
    torch.manual_seed(2)
    attn = Attention(hidden=64, heads=4, kv_heads=2, head_dim=16)
    ctx, t = 45, 12
    q = torch.randn(t, 4, 16)
    keys, values = torch.randn(ctx + t, 2, 16), torch.randn(ctx + t, 2, 16)
    got = attn._attend_after_context(q, keys[:ctx], values[:ctx], keys[ctx:], values[ctx:])
    visible = torch.ones(t, ctx + t, dtype=torch.bool).tril(ctx)
    ref = attn._attend(q[None], keys[None], values[None], visible)[0]
    assert (got - ref).abs().max() < 1e-5


def test_gather_buffers_reuse_one_buffer_per_name():
    source = torch.randn(100, 2, 4)
    buffers = GatherBuffers()
    first = buffers.index_select("k", source, torch.tensor([[3, 7, 9], [0, 1, 2]]))
    assert first.shape == (2, 3, 2, 4) and torch.equal(first, source[torch.tensor([[3, 7, 9], [0, 1, 2]])])
    second = buffers.index_select("k", source, torch.tensor([5, 6]))
    assert second.data_ptr() == first.data_ptr() and torch.equal(second, source[[5, 6]])
    grown = buffers.index_select("k", source, torch.arange(50))
    assert torch.equal(grown, source[:50])
    keys, values = buffers.keys_values(source, source + 1, torch.tensor([4]))
    assert keys.data_ptr() == grown.data_ptr() and torch.equal(values, source[[4]] + 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_blocks_are_reused_without_page_faults():
    assert keep_freed_memory()
    size = 16 << 20   # below glibc's 32 MiB mmap ceiling: mmapped afresh every time by default
    torch.empty(size, dtype=torch.uint8).fill_(1)   # first touch of the heap may fault
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.empty(size, dtype=torch.uint8).fill_(1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < size // 4096   # a fresh mapping would fault once per 4 KiB page, 4096 times per tensor
