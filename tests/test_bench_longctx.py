"""bench/longctx.py: the wrong-answer kinds, and a short run on the bundled model."""
import json

from bench import longctx
from engine.demo.tasks import TaskSample


def _multikey(prompt: str, value: str) -> TaskSample:
    return TaskSample("multikey", prompt, f" {value}.", [value], 0.5, 100, max_tokens=12)


def test_wrong_answer_kinds():
    sample = _multikey("One of the special magic numbers for red-fox is: 1234567. Also 7654321.", "1234567")
    assert longctx.wrong_answer(sample, " 1234567.") is None
    assert longctx.wrong_answer(sample, " 7654321.") == "in_prompt"
    assert longctx.wrong_answer(sample, " 765432.") == "not_in_prompt"   # a part of a number is not one
    assert longctx.wrong_answer(sample, " seven") == "no_number"
    words = TaskSample("common_words", "a b c", " a.", ["a"], 0.5, 100, max_tokens=4)
    assert longctx.wrong_answer(words, " b.") is None


def test_first_wrong_digit_is_where_a_wrong_number_leaves_the_answer():
    sample = _multikey("One of the special magic numbers for red-fox is: 1234567.", "1234567")
    assert longctx.first_wrong_digit(sample, " 1234567.") is None
    assert longctx.first_wrong_digit(sample, " 1299999.") == 3
    assert longctx.first_wrong_digit(sample, " 9234567.") == 1
    assert longctx.first_wrong_digit(sample, " 12345.") == 6       # stops short: its 6th digit is missing
    assert longctx.first_wrong_digit(sample, " none") is None
    row = {"task": "multikey", "accuracy": 0.5,
           "wrong_answers": {"not_in_prompt": 2, "first_wrong_digit": {"3": 1, "6": 1}}}
    assert longctx.wrong_cells(row) == "0 / 2 / 0; first wrong digit 3: 1, 6: 1"


def test_short_run_writes_one_row_per_policy(tmp_path):
    out = tmp_path / "longctx.json"
    longctx.main(["--tasks", "passkey", "--lengths", "1024", "--policies", "full,actqkv", "--budgets", "704",
                  "--samples", "2", "--no-timing", "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["policy"], r["budget"]) for r in rows] == [("full", None), ("actqkv", 704)]
    for r in rows:
        assert r["n"] == 2 and r["accuracy"] == sum(r["scores"]) / 2
        kinds = {k: n for k, n in r["wrong_answers"].items() if k != "first_wrong_digit"}
        assert sum(kinds.values()) == 2 - sum(r["scores"])
        assert r["kv_resident_bytes"] > 0 and r["prefill_s"] is None
