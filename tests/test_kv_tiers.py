"""KV tiers (--kv-offload): the pool in host memory behind a device LRU cache gives the same outputs as one tier."""
import pytest
import torch

from engine import LLM, SamplingParams
from engine.kv.tiers import DeviceBlockCache
from engine.sampling_params import SamplingParamsError

SMALL = dict(kv_budget=192, kv_sink=32, kv_local=64, kv_window=48, block_size=16, max_model_len=1024,
             num_kv_blocks=160, max_num_batched_tokens=256, max_num_seqs=4)
PROMPTS = [[3 + (i * 37 + j * 11) % 370 for i in range(600 + 50 * j)] for j in range(2)]


def generate(llm, **kv):
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), kv=kv)
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def engines(checkpoint):
    path = checkpoint("llama")
    return (LLM(path, kv_policy="actqkv", **SMALL),
            LLM(path, kv_policy="actqkv", kv_offload=True, kv_device_cache_blocks=32, **SMALL))


@pytest.mark.parametrize("kv", [dict(policy="actqkv", positions="bounded"), dict(policy="actqkv", per_head=False),
                                dict(policy="quest"), dict(policy="infllm"), dict(policy="streaming")])
def test_offloaded_pool_gives_the_same_tokens_as_one_tier(engines, kv):
    one_tier, tiered = engines
    hits, misses = tiered.engine.runner.device_cache_counts()
    assert generate(tiered, **kv) == generate(one_tier, **kv)
    new_hits, new_misses = tiered.engine.runner.device_cache_counts()
    blocks = sum(-(-(len(p) + 10) // 16) for p in PROMPTS) * tiered.engine.runner.model_config.num_hidden_layers
    assert new_hits > hits
    if kv["policy"] != "streaming":   # retrieved blocks left the 32-block cache and came back (streaming reads only
        assert new_misses - misses > blocks   # sinks and recent blocks, which stay cached)
    cache = tiered.engine.runner.kv_tiers[0]
    assert cache.k.shape[0] == 32 and len(cache.lru) <= 32 and cache.k_host.device.type == "cpu"


def test_offload_refuses_what_it_cannot_hold(checkpoint, engines):
    _, tiered = engines
    with pytest.raises(ValueError, match="kv-offload"):
        LLM(checkpoint("llama"), kv_offload=True, **SMALL)             # the engine's default policy is full
    with pytest.raises(SamplingParamsError, match="full"):
        tiered.generate([PROMPTS[0]], SamplingParams(max_tokens=2), kv={"policy": "full"})
    with pytest.raises(SamplingParamsError, match="device cache"):
        tiered.generate([PROMPTS[0]], SamplingParams(max_tokens=2), kv={"policy": "actqkv", "budget": 1024})


def test_device_cache_writes_back_evicted_blocks():
    torch.manual_seed(0)
    k_host, v_host = torch.zeros(6, 4, 1, 2), torch.zeros(6, 4, 1, 2)
    cache = DeviceBlockCache(k_host, v_host, capacity=2, device=torch.device("cpu"))
    k, v = torch.randn(8, 1, 2), torch.randn(8, 1, 2)
    slots = torch.tensor([0, 1, 2, 3, 20, 21, 22, 23])          # blocks 0 and 5
    cache.write(slots, slots.tolist(), k, v)
    assert k_host.abs().sum() == 0                              # write-back: nothing reached the pool yet
    cache.resident([1, 2])                                      # evicts both dirty blocks
    assert torch.equal(k_host.view(-1, 1, 2)[slots], k) and torch.equal(v_host.view(-1, 1, 2)[slots], v)
    cache.resident([5])
    assert torch.equal(cache.k_flat[cache.translate(slots[4:])], k[4:])
    assert (cache.hits, cache.misses) == (0, 3)                # writes are not counted as lookups
    cache.k[cache.where[5]] += 1.0                              # changed in the cache but not written: clean
    cache.resident([5, 1])
    cache.resident([0, 2])                                      # evicts 5 (clean) and 1 (least recently used)
    assert torch.equal(k_host.view(-1, 1, 2)[slots[4:]], k[4:])  # the clean block was not copied back
    assert (cache.hits, cache.misses) == (1, 6)
    with pytest.raises(RuntimeError, match="kv-device-cache-blocks"):
        cache.resident([0, 1, 2])


def test_fetch_loads_both_groups_together_and_gives_their_waits():
    k_host = torch.arange(6 * 4 * 2, dtype=torch.float32).view(6, 4, 1, 2)
    cache = DeviceBlockCache(k_host, k_host.clone(), capacity=3, device=torch.device("cpu"))
    cache.resident([0, 1, 2])
    ready = cache.fetch([4], [2, 5])           # 2 is a hit; 0 and 1 (least recently used) make room
    ready(0), ready(1)
    assert sorted(cache.lru) == [2, 4, 5] and (cache.hits, cache.misses) == (1, 5)
    for block in (2, 4, 5):
        assert torch.equal(cache.k[cache.where[block]], k_host[block])
    cache.fetch([2], [4])                      # both resident: no copies, nothing to wait for
    assert (cache.hits, cache.misses) == (3, 5)
    with pytest.raises(RuntimeError, match="kv-device-cache-blocks"):
        cache.fetch([0, 1], [3, 4])            # four blocks at once cannot fit


def test_metrics_report_the_device_cache_hit_rate(engines):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from engine.metrics import EngineMetrics
    _, tiered = engines
    metrics = EngineMetrics("m", CollectorRegistry())
    generate(tiered, policy="actqkv")
    metrics.on_step(tiered.engine, [], 0.01)
    samples = {s.name: s.value for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
               for s in f.samples}
    hits, misses = tiered.engine.runner.device_cache_counts()
    assert samples["actserve:kv_device_cache_hits_total"] == hits > 0
    assert samples["actserve:kv_device_cache_misses_total"] == misses > 0
    assert samples["actserve:kv_device_cache_hit_rate"] == pytest.approx(hits / (hits + misses))


def test_metrics_report_the_tile_cache_hit_rate(engines):
    """The one-tier engine (CPU, 64-byte KV head rows) reads retrieved blocks through the requests' tile caches;
    their counts outlive the finished requests."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from engine.metrics import EngineMetrics
    one_tier, _ = engines
    metrics = EngineMetrics("m", CollectorRegistry())
    before = one_tier.engine.runner.tile_cache_counts()
    generate(one_tier, policy="actqkv")
    hits, misses = one_tier.engine.runner.tile_cache_counts()
    assert not one_tier.engine.runner.kv_states and hits > before[0] and misses > before[1]
    metrics.on_step(one_tier.engine, [], 0.01)
    samples = {s.name: s.value for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
               for s in f.samples}
    assert samples["actserve:kv_tile_cache_hits_total"] == hits
    assert samples["actserve:kv_tile_cache_misses_total"] == misses
    assert samples["actserve:kv_tile_cache_hit_rate"] == pytest.approx(hits / (hits + misses))
