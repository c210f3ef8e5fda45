"""Attention pieces merged by log-sum-exp, the reused KV gather buffers, and glibc's malloc thresholds."""
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from engine.layers.attention import Attention
from engine.layers.attention_pieces import flash_piece, merge_pieces, softmax_with_lse
from engine.layers.context_runs import ContextRuns, context_pieces
from engine.layers.gather_buffers import GatherBuffers


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
              flash_piece(q, keys[:, 40:55], values[:, 40:55], 0.25)[:2],
              flash_piece(q, keys[:, 55:], values[:, 55:], 0.25)[:2]]
    out, lse = merge_pieces(pieces)
    bias = None if keep_all is None else keep_all.repeat_interleave(heads // kv_heads, 0)[None, :, None, :]
    ref = F.scaled_dot_product_attention(q, keys[None], values[None], attn_mask=bias, scale=0.25, enable_gqa=True)
    assert (out - ref).abs().max() < 1e-5
    scores = q @ keys.repeat_interleave(heads // kv_heads, 0)[None].transpose(-1, -2) * 0.25
    if bias is not None:
        scores = scores.masked_fill(~bias, float("-inf"))
    assert (lse - scores.logsumexp(-1)).abs().max() < 1e-5
    out_only, no_lse = merge_pieces(pieces, with_lse=False)
    assert no_lse is None and torch.equal(out_only, out)


@pytest.mark.parametrize("context", [ContextRuns([(0, 45)], None), ContextRuns([(20, 25)], torch.arange(20))],
                         ids=["one-run", "run-and-gathered"])
def test_prefill_after_context_equals_the_masked_attention(context):
    torch.manual_seed(2)
    attn = Attention(hidden=64, heads=4, kv_heads=2, head_dim=16)
    ctx, t = 45, 12
    q = torch.randn(t, 4, 16)
    keys, values = torch.randn(ctx + t, 2, 16), torch.randn(ctx + t, 2, 16)
    pieces = context_pieces(q.transpose(0, 1)[None], keys, values, context, GatherBuffers(), attn.scale)
    got = attn._attend_after_context(q, pieces, keys[ctx:], values[ctx:])
    visible = torch.ones(t, ctx + t, dtype=torch.bool).tril(ctx)
    ref = attn._attend(q[None], keys[None], values[None], visible)[0]
    assert (got - ref).abs().max() < 1e-5


def test_fully_hidden_rows_get_no_weight_and_merge_away():
    scores = torch.randn(2, 6)
    hidden = torch.zeros(2, 6, dtype=torch.bool)
    hidden[1] = True
    probs, lse = softmax_with_lse(scores, hidden)
    assert (probs[1] == 0).all() and lse[1] == float("-inf")
    other = (torch.randn(1, 1, 2, 3), torch.randn(1, 1, 2))
    merged, merged_lse = merge_pieces([other, (torch.zeros(1, 1, 2, 3), torch.full((1, 1, 2), float("-inf")))])
    assert torch.equal(merged, other[0]) and torch.equal(merged_lse, other[1])


def test_prefill_after_context_in_bf16():
    torch.manual_seed(3)
    attn = Attention(hidden=64, heads=4, kv_heads=2, head_dim=16)
    q, keys, values = (torch.randn(n, h, 16, dtype=torch.bfloat16) for n, h in ((8, 4), (40, 2), (40, 2)))
    pieces = context_pieces(q.transpose(0, 1)[None], keys, values, ContextRuns([(0, 32)], None), GatherBuffers(),
                            attn.scale)
    got = attn._attend_after_context(q, pieces, keys[32:], values[32:])
    ref = attn._attend(q[None].float(), keys[None].float(), values[None].float(),
                       torch.ones(8, 40, dtype=torch.bool).tril(32))[0]
    assert got.dtype == torch.bfloat16 and (got.float() - ref).abs().max() < 2e-2


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


MMAPPED_BYTES = """
import ctypes, sys, torch
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    from engine.malloc_tuning import keep_freed_memory
    assert keep_freed_memory()
before = mallinfo2().hblkhd
tensor = torch.empty(24 << 20, dtype=torch.uint8)
print(mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in platform.libc_ver()[0],
                    reason="glibc's mallopt")
def test_large_temporaries_come_from_the_heap_not_fresh_mmaps():
    def mmapped(mode):
        run = subprocess.run([sys.executable, "-c", MMAPPED_BYTES, mode], capture_output=True, text=True, check=True)
        return int(run.stdout)
    assert mmapped("default") >= 24 << 20   # glibc's default: a fresh mapping, whose every page faults when touched
    assert mmapped("tuned") == 0


def test_gather_buffers_without_reuse_allocate_each_time():
    source = torch.randn(10, 3)
    buffers = GatherBuffers(reuse=False)
    first = buffers.index_select("k", source, torch.tensor([[1, 2]]))
    second = buffers.index_select("k", source, torch.tensor([[1, 2]]))
    assert torch.equal(first, source[torch.tensor([[1, 2]])]) and first.data_ptr() != second.data_ptr()
