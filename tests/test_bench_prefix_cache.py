"""bench/prefix_cache.py: follow-up questions on one document, with and without prefix caching."""
import json

from bench import prefix_cache


def test_follow_ups_find_the_document_in_the_cache(tmp_path):
    out = tmp_path / "prefix.json"
    row = prefix_cache.main(["--length", "300", "--questions", "2", "--json", str(out)])
    assert row["cached_tokens"] == 288          # the document's 9 full blocks of 32
    assert set(row["ttft_s"]) == {"cached", "plain"} and all(t > 0 for t in row["ttft_s"].values())
    assert row["speedup"] == row["ttft_s"]["plain"] / row["ttft_s"]["cached"]
    assert json.loads(out.read_text())["rows"] == [row]
