"""bench/answer_attention.py: the captured attention is the model's own, and places are named as documented."""
import torch

from bench.answer_attention import captured_attention, needle_spans, where
from engine.layers.attention import Attention
from engine.models.loader import load_model
from tests.test_memory_layer import write_memory_llama


def test_captured_attention_leaves_the_logits_and_keeps_causal_probabilities(tmp_path):
    write_memory_llama(str(tmp_path))
    model = load_model(str(tmp_path), torch.float32, torch.device("cpu"))
    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100]])
    plain = Attention._attend
    probs = []
    with torch.no_grad():
        expected = model.forward_dense(ids)
        with captured_attention(probs):
            got = model.forward_dense(ids)
    assert Attention._attend is plain
    assert torch.allclose(got, expected, atol=1e-5)
    assert len(probs) == 3 and probs[0].shape == (4, 8, 8)
    assert torch.allclose(probs[1].sum(-1), torch.ones(4, 8)) and probs[1].triu(1).abs().sum() == 0


def test_places_are_named_from_the_needles_final_dot():
    tokens = ["A", ".", "One", "Ġkey", ":", "1", "2", ".", "One", "Ġother", ":", "3", "4", ".", "ĠWhat", "Ġ"]
    spans = needle_spans(tokens)
    assert spans == [(2, 7, "12"), (8, 13, "34")]
    target = spans[0]
    assert [where(j, spans, target) for j in (0, 5, 6, 12, 15)] == ["other", "T-2", "T-1", "N-1", "question"]
