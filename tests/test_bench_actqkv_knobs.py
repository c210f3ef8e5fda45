"""bench/actqkv_knobs.py: knob parsing, and a short sweep on the bundled model."""
import json

from bench import actqkv_knobs


def test_parse_knobs_types_each_value():
    assert actqkv_knobs.parse_knobs("tau=0.03,1.0;cutoff=top_p;warmup=0;per_head=true,false") == [
        ("tau", 0.03), ("tau", 1.0), ("cutoff", "top_p"), ("warmup", 0), ("per_head", True), ("per_head", False)]


def test_paired_sign_test():
    assert actqkv_knobs.paired([1, 1, 0, 1], [1, 0, 0, 1]) == (1, 0, 1.0)
    wins, losses, p = actqkv_knobs.paired([1] * 10 + [0] * 5, [0] * 10 + [0] * 5)
    assert (wins, losses) == (10, 0) and p == 2 / 2 ** 10
    assert actqkv_knobs.paired([0, 1], [1, 0])[2] == 1.0


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
        assert len(r["scores"]) == 2 and r["accuracy"] == sum(r["scores"]) / 2
        assert set(r["vs_defaults"]) == {"only_here", "only_defaults", "p"}
