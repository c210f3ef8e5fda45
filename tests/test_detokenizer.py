"""Incremental detokenization never emits half a character and adds up to the full decode."""
from transformers import AutoTokenizer

from engine.detokenizer import IncrementalDetokenizer

TEXT = "naïve café, 東京 😀 привет! Grüße 🎉🎉 done"


def test_deltas_never_split_utf8_and_add_up(checkpoint):
    tok = AutoTokenizer.from_pretrained(checkpoint("llama"))
    ids = tok.encode(TEXT, add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), "the test needs characters split across tokens"
    detok = IncrementalDetokenizer(tok, [1])
    deltas = [detok.add(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == TEXT
    assert "" in deltas


def test_prompt_context_does_not_leak_into_output(checkpoint):
    tok = AutoTokenizer.from_pretrained(checkpoint("llama"))
    prompt = tok.encode("Hello there", add_special_tokens=True)
    detok = IncrementalDetokenizer(tok, prompt)
    out = tok.encode(" world 😀", add_special_tokens=False)
    assert "".join(detok.add(i) for i in out) == " world 😀"
