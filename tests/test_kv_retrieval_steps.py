"""retrieval_attention step by step on one sequence of random keys (one layer): the device path's static selection,
the TileCache, compressed positions against plain attention, and reusing a decode step's choice of blocks."""
import pytest
import torch
import torch.nn.functional as F

from engine.kv.config import KVConfig
from engine.kv.retrieval_attention import RetrievalContext, RetrievalSlice, retrieval_attention
from engine.kv.state import SequenceKVState
from engine.kv.summaries import received_attention
from engine.layers.rotary import RotaryEmbedding
from engine.models.model_config import ModelConfig

TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 64, "intermediate_size": 8,
               "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}


def one_sequence(kv: KVConfig, n: int, prompt: int, pool: int, seed: int, after_step=None):
    """retrieval_attention (one layer) of a sequence of n random queries, keys and values in a random block pool
    (block size 16, 4 query heads, 2 KV heads, head_dim 16): the first `prompt` tokens prefilled in one slice,
    then one token per decode step (`after_step(state)` after each) -> (outputs [n, 4, 16], the sequence's state)."""
    torch.manual_seed(seed)
    bs, heads, kv_heads, dim = 16, 4, 2, 16
    blocks = torch.randperm(pool)[: -(-n // bs)]
    slots = (blocks[:, None] * bs + torch.arange(bs)).flatten()[:n]
    k_flat, v_flat = torch.randn(pool * bs, kv_heads, dim), torch.randn(pool * bs, kv_heads, dim)
    q = torch.randn(n, heads, dim)
    cfg = ModelConfig.from_dict(TINY_CONFIG)
    ctx = RetrievalContext(received_attention(1, pool * bs, kv_heads, q.device), RotaryEmbedding(cfg, 1024), bs)
    state = SequenceKVState(kv, 1, q.device)
    out = [retrieval_attention(q[:prompt], k_flat, v_flat, RetrievalSlice(0, prompt, 0, slots[:prompt], blocks, state),
                               0, ctx, dim ** -0.5)]
    for t in range(prompt, n):
        out.append(retrieval_attention(q[t:t + 1], k_flat, v_flat, RetrievalSlice(t, 1, t, slots[:t + 1], blocks,
                                                                                  state), 0, ctx, dim ** -0.5))
        if after_step is not None:
            after_step(state)
    return torch.cat(out), state


@pytest.mark.parametrize("positions,per_head,cutoff", [("original", False, "entropy"), ("bounded", True, "entropy"),
                                                       ("original", True, "top_p"), ("bounded", False, "top_p"),
                                                       ("compressed", True, "entropy"), ("compressed", False, "top_p")])
def test_static_selection_with_mask_equals_sliced_selection(monkeypatch, positions, per_head, cutoff):
    """The device path (static top-2k blocks, the dynamic count applied as a mask: no host sync) attends exactly
    the blocks the CPU path slices out."""
    from engine.kv import policies
    kv = KVConfig(policy="actqkv", budget=160, sink=16, local=64, window=32, positions=positions, per_head=per_head,
                  cutoff=cutoff, warmup=32)
    outputs, counts = [], []
    for static in (False, True):
        monkeypatch.setattr(policies, "STATIC_SELECTION", static)
        out, state = one_sequence(kv, n=400, prompt=399, pool=32, seed=0)
        outputs.append(out)
        counts.append(int(state.blocks_selected[0]))
    assert isinstance(state.blocks_selected[0], torch.Tensor)   # the static path kept the count on the device
    mean_k = kv.blocks_per_layer(16)
    assert counts[0] == counts[1] and 0 < counts[0] <= 2 * mean_k
    assert counts[0] < 2 * mean_k or cutoff == "top_p"   # the mask removed some of the static top-2k
    assert (outputs[0] - outputs[1]).abs().max() < 1e-5


@pytest.mark.parametrize("positions,per_head", [("original", True), ("bounded", True), ("bounded", False),
                                               ("compressed", False)])
def test_tile_cache_attends_exactly_what_the_pool_gathers(monkeypatch, positions, per_head):
    """Reading the sinks and retrieved blocks through the TileCache (kept across steps, un-rotated once) gives the
    same outputs as gathering them from the pool each window; later decode steps hit the cache."""
    from engine.kv import retrieval_attention as ra
    kv = KVConfig(policy="actqkv", budget=160, sink=16, local=64, window=32, positions=positions, per_head=per_head,
                  warmup=32)
    outputs = []
    for cached in (False, True):
        monkeypatch.setattr(ra, "TILE_CACHE", cached)
        out, state = one_sequence(kv, n=480, prompt=472, pool=40, seed=1)
        outputs.append(out)
        tiles = state.tiles[0]
        assert (tiles is not None) == cached
    assert torch.equal(outputs[0], outputs[1])
    assert tiles.hits > tiles.misses > 0


def test_local_keys_record_the_attention_they_receive():
    """Where a run of tokens is longer than repr_topk, each local key records the attention it receives, per KV
    head, summed over the queries and the query heads of its group (a prefill of two windows, every key local)."""
    torch.manual_seed(4)
    bs, n, heads, kv_heads, dim = 16, 48, 4, 2, 16
    kv = KVConfig(policy="actqkv", budget=160, sink=16, local=64, window=32, repr_count=1, repr_topk=4)
    assert kv.needs_received(bs)
    slots = torch.randperm(8 * bs)[:n]
    k_flat, v_flat = torch.randn(8 * bs, kv_heads, dim), torch.randn(8 * bs, kv_heads, dim)
    q = torch.randn(n, heads, dim)
    ctx = RetrievalContext(received_attention(1, 8 * bs, kv_heads, q.device),
                           RotaryEmbedding(ModelConfig.from_dict(TINY_CONFIG), 256), bs)
    ctx.received[0].fill_(7.0)   # left from an earlier sequence in these slots: cleared
    state = SequenceKVState(kv, 1, q.device)
    retrieval_attention(q, k_flat, v_flat, RetrievalSlice(0, n, 0, slots, torch.arange(3), state), 0, ctx,
                        dim ** -0.5)
    keys = k_flat[slots].repeat_interleave(heads // kv_heads, dim=1)                          # [n, H, D]
    scores = torch.einsum("qhd,khd->hqk", q, keys) * dim ** -0.5
    probs = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    expected = probs.sum(1).view(kv_heads, heads // kv_heads, n).sum(1).T                    # [n, Hkv]
    assert torch.allclose(ctx.received[0][slots], expected, atol=1e-5)


def test_tile_cache_is_not_used_for_rows_larger_than_its_limit(monkeypatch):
    from engine.kv import retrieval_attention as ra
    kv = KVConfig(policy="actqkv", budget=160, sink=16, local=64, window=32, positions="bounded", warmup=32)
    monkeypatch.setattr(ra, "TILE_MAX_ROW_BYTES", 32)   # a row here: head_dim 16 × 4 bytes
    _, state = one_sequence(kv, n=480, prompt=472, pool=40, seed=1)
    assert state.tiles == [None]


def test_tile_cache_keeps_the_recently_used_tiles():
    from engine.kv.tile_cache import TileCache
    loads = []

    def load(heads, blocks):
        loads.append(sorted(zip(blocks.tolist(), heads.tolist())))
        value = (blocks * 10 + heads).float()[:, None, None].expand(-1, 2, 3)
        return value, -value
    cache = TileCache(capacity=6, block_size=2, head_dim=3, device=torch.device("cpu"))
    k, v = cache.gather(torch.tensor([[0, 5], [0, 7]]), 8, load)                # 4 tiles, all missing
    assert k.shape == (2, 4, 3) and k[1, 2:, 0].tolist() == [71.0, 71.0] and torch.equal(v, -k)
    cache.gather(torch.tensor([[0, 6], [0, 6]]), 8, load)                       # (6, h) new: slots 5, 6 filled
    assert loads[-1] == [(6, 0), (6, 1)]
    k, _ = cache.gather(torch.tensor([[3, 6], [0, 7]]), 8, load)                # evicts (5, 0), least recent
    assert loads[-1] == [(3, 0)] and k[:, ::2, 0].tolist() == [[30.0, 60.0], [1.0, 71.0]]
    cache.gather(torch.tensor([[5], [7]]), 8, load)
    assert loads[-1] == [(5, 0)] and (cache.hits, cache.misses) == (6, 8)
    with pytest.raises(ValueError, match="needs 8 tiles"):
        cache.gather(torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]]), 8, load)


def test_compressed_positions_attend_the_kept_keys_side_by_side():
    """A decode step with compressed positions equals plain attention over the attended keys alone, placed at
    positions 0, 1, .. in their order (the sinks, the retrieved blocks, then the local region up to the query)."""
    from engine.layers.rotary import rotate_by
    kv = KVConfig(policy="quest", budget=160, sink=16, local=64, window=32, positions="compressed", trace=True)
    n, bs = 400, 16
    out, state = one_sequence(kv, n=n, prompt=n - 1, pool=32, seed=2)
    torch.manual_seed(2)   # one_sequence's draws again
    blocks = torch.randperm(32)[: -(-n // bs)]
    slots = (blocks[:, None] * bs + torch.arange(bs)).flatten()[:n]
    k_flat, v_flat = torch.randn(32 * bs, 2, 16), torch.randn(32 * bs, 2, 16)
    q = torch.randn(n, 4, 16)
    selected, sink_end, local_start = state.last_attended[0]
    assert 0 < len(selected) and local_start > sink_end + len(selected) * bs   # some blocks were left out
    kept = [t for t in range(n) if t < sink_end or t >= local_start or t // bs in selected]
    rotary = RotaryEmbedding(ModelConfig.from_dict(TINY_CONFIG), 1024)
    where = torch.arange(len(kept))
    keys = rotate_by(k_flat[slots[kept]], where - torch.tensor(kept), rotary, n)      # [S, Hkv, D] at 0, 1, ..
    query = rotate_by(q[-1:], torch.tensor([len(kept) - n]), rotary, n)
    ref = F.scaled_dot_product_attention(query.transpose(0, 1)[None], keys.transpose(0, 1)[None],
                                         v_flat[slots[kept]].transpose(0, 1)[None], enable_gqa=True)
    assert (out[-1] - ref[0, :, 0]).abs().max() < 1e-5


def test_reselect_every_n_reuses_a_decode_selection_until_a_block_leaves_the_local_window():
    """With reselect_every=4 a decode step chooses blocks afresh (as every step does with 1) only every 4th step, or
    when the local window has moved past a block (new candidates); the steps in between attend the kept choice."""
    attended, outputs = {}, {}
    for every in (1, 4):
        kv = KVConfig(policy="quest", budget=160, sink=16, local=64, window=32, reselect_every=every, trace=True)
        seen = []
        outputs[every], _ = one_sequence(kv, n=430, prompt=399, pool=32, seed=3,
                                         after_step=lambda state: seen.append(state.last_attended[0]))
        attended[every] = seen
    fresh, reused = attended[1], attended[4]
    assert any(fresh[t][0] != fresh[t - 1][0] for t in range(1, len(fresh)))   # choices move: reuse is visible
    since = 0
    for t, ((chosen, _, local), (kept, _, local_kept)) in enumerate(zip(fresh, reused)):
        assert local == local_kept
        if t > 0 and local != fresh[t - 1][2]:   # a block left the local window: choose again
            since = 0
        if since % 4 == 0:
            assert kept == chosen
            assert torch.equal(outputs[1][399 + t], outputs[4][399 + t])
        else:
            assert kept == reused[t - 1][0]
        since += 1
    assert any(fresh[t][2] != fresh[t - 1][2] for t in range(1, len(fresh)))   # the window moved in this run


def test_reselect_every_must_be_positive():
    from engine.sampling_params import SamplingParamsError
    with pytest.raises(SamplingParamsError, match="kv_reselect_every"):
        KVConfig(policy="actqkv", reselect_every=0).validate(32)
