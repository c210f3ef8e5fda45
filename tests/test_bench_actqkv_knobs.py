"""bench/actqkv_knobs.py: knob parsing, and a short sweep on the bundled model."""
import json

from bench import actqkv_knobs


def test_parse_knobs_types_each_value():
    assert actqkv_knobs.parse_knobs("tau=0.03,1.0;cutoff=top_p;warmup=0;per_head=true,false") == [
        ("tau", 0.03), ("tau", 1.0), ("cutoff", "top_p"), ("warmup", 0), ("per_head", True), ("per_head", False)]


def test_sweep_reports_accuracy_and_recall_per_layer(tmp_path):
    out = tmp_path / "knobs.json"
    actqkv_knobs.main(["--length", "1024", "--budget", "704", "--samples", "2", "--knobs", "per_head=false",
                       "--base", "tau=0.3", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = result["results"]
    assert [(r["policy"], r["knob"], r["value"]) for r in rows] == [
        ("quest", None, None), ("infllm", None, None), ("actqkv", "defaults", None), ("actqkv", "per_head", False)]
    assert result["actqkv_base"] == {"tau": 0.3}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and len(r["recall_by_layer"]) == 4
        assert all(0.0 <= x <= 1.0 for x in r["recall_by_layer"])
