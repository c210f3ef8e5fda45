"""bench/passkey_cuts.py: the cut, the copy measure, and the three probes on the bundled model."""
import json

from bench import passkey_cuts


def test_cut_starts_at_the_first_noise_line_after_the_mark():
    line = [7, 8, 9]
    ids = [1, 7, 8, 9, 5, 7, 8, 9, 6, 7, 8, 9, 2]
    assert passkey_cuts.cut_noise(ids, line, 2, 0) == ids
    assert passkey_cuts.cut_noise(ids, line, 2, 1) == [1, 7, 8, 9, 5, 8, 9, 6, 7, 8, 9, 2]
    assert passkey_cuts.cut_noise(ids, line, 2, 4) == [1, 7, 8, 9, 5, 7, 8, 9, 2]


def test_copy_counts_tokens_before_the_first_error():
    assert passkey_cuts.copied_before_error([1, 2, 3, 4], [1, 2, 3, 4, 5]) == 1.0
    assert passkey_cuts.copied_before_error([1, 2, 3, 4], [1, 2, 9, 4]) == 0.5
    assert passkey_cuts.copied_before_error([1, 2, 3, 4], [9, 2, 3, 4]) == 0.0
    assert passkey_cuts.copied_before_error([1, 2, 3, 4], [1]) == 0.25   # stopped early


def test_probes_report_each_cut_style_and_the_copy(tmp_path):
    out = tmp_path / "probes.json"
    passkey_cuts.main(["--length", "256", "--samples", "4", "--cuts", "0,25", "--styles", "exact,filler", "--copy",
                       "--json", str(out)])
    result = json.loads(out.read_text())
    assert [r["cut"] for r in result["rows"]] == [0, 25]
    assert [r["style"] for r in result["styles"]] == ["exact", "filler"]
    for r in result["rows"] + result["styles"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and len(r["answers"]) == r["n"]
    assert result["styles"][0]["n"] == 4 and 0.0 <= result["copy"]["copied_before_first_error"] <= 1.0
