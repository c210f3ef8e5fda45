"""bench/decode_ratio.py: policies decoded side by side in rounds, on the bundled model."""
import json

from bench import decode_ratio
from engine.demo import bundled_model_dir


def test_rounds_time_every_policy_and_ratio_to_full(tmp_path):
    out = tmp_path / "ratio.json"
    rows = decode_ratio.main(["--length", "1024", "--policies", "full,streaming,actqkv", "--budget", "704",
                              "--rounds", "2", "--steps", "3", "--kv-cache-memory", "256MiB", "--json", str(out)])
    assert [r["policy"] for r in rows] == ["full", "streaming", "actqkv"]
    for r in rows:
        assert 0 < r["round_min_ms"] <= r["decode_ms_per_token"] <= r["round_max_ms"] and r["prefill_s"] > 0
        assert 0 < r["attention_ms_per_token"] < r["decode_ms_per_token"]
    assert rows[0]["speedup_vs_full"] == 1.0
    assert rows[2]["speedup_vs_full"] == rows[0]["decode_ms_per_token"] / rows[2]["decode_ms_per_token"]
    assert json.loads(out.read_text())["rows"] == rows


def test_batch_decodes_several_requests_per_step():
    rows = decode_ratio.main(["--length", "1024", "--policies", "full,actqkv", "--budget", "704", "--batch", "2",
                              "--rounds", "1", "--steps", "2", "--kv-cache-memory", "256MiB"])
    assert [r["batch"] for r in rows] == [2, 2] and all(r["decode_ms_per_token"] > 0 for r in rows)


def test_every_request_of_a_batch_is_still_decoding_after_the_rounds():
    engine, _ = decode_ratio.prefilled_engine(bundled_model_dir(), 4096, {"policy": "full"}, max_tokens=6,
                                              kv_cache_memory="256MiB", batch=3)
    for _ in range(6):
        engine.step()
    assert len(engine.scheduler.running) == 3


def test_tiles_false_reads_the_retrieved_blocks_without_the_tile_cache(monkeypatch):
    from engine.kv import retrieval_attention
    from engine.kv.tile_cache import TileCache
    calls = []
    gather = TileCache.gather
    monkeypatch.setattr(TileCache, "gather", lambda self, *a: calls.append(1) or gather(self, *a))
    for policy, used in (("actqkv:tiles=false", False), ("actqkv", True)):
        calls.clear()
        rows = decode_ratio.main(["--length", "1024", "--policies", policy, "--budget", "704", "--rounds", "1",
                                  "--steps", "2", "--kv-cache-memory", "256MiB"])
        assert rows[0]["policy"] == policy and bool(calls) == used
        assert retrieval_attention.TILE_CACHE   # restored


def test_lengths_side_by_side_report_growth_over_the_first():
    rows = decode_ratio.main(["--length", "768,1024", "--policies", "full,actqkv", "--budget", "704", "--rounds", "2",
                              "--steps", "2", "--kv-cache-memory", "256MiB"])
    assert [(r["context_len"], r["policy"]) for r in rows] == [(768, "full"), (768, "actqkv"), (1024, "full"),
                                                                (1024, "actqkv")]
    assert rows[0]["growth_vs_shortest"] == rows[1]["growth_vs_shortest"] == 1.0
    assert rows[3]["growth_vs_shortest"] == rows[3]["decode_ms_per_token"] / rows[1]["decode_ms_per_token"]
    assert rows[3]["speedup_vs_full"] == rows[2]["decode_ms_per_token"] / rows[3]["decode_ms_per_token"]
