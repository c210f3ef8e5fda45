"""Sampling on fixed logits: distributions, filters, penalties, seeds, logprobs."""
import math

import pytest
import torch

from engine import SamplingParams
from engine.sampler import Sampler, filtered_probs
from engine.sequence import Request, Sequence

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


def make_seq(params, prompt=(0,), outputs=(), seed=0):
    seq = Sequence(0, Request("r", None, list(prompt), params), 0, torch.Generator().manual_seed(seed), None)
    seq.token_ids += list(outputs)
    return seq


def draw_histogram(params, n=20000, logits=LOGITS):
    sampler = Sampler(len(logits), [], str)
    seq = make_seq(params)
    counts = torch.zeros(len(logits))
    for _ in range(n // 500):
        batch = [seq] * 500
        for t in sampler(logits.repeat(500, 1), batch):
            counts[t] += 1
    return counts / counts.sum()


def test_temperature_distribution_matches_softmax():
    for temperature in (0.5, 1.0, 2.0):
        freq = draw_histogram(SamplingParams(temperature=temperature))
        expected = torch.softmax(LOGITS / temperature, -1)
        assert (freq - expected).abs().max() < 0.015


def test_top_k_keeps_only_k_tokens():
    freq = draw_histogram(SamplingParams(temperature=1.0, top_k=2))
    expected = torch.softmax(LOGITS[:2], -1)
    assert freq[2:].sum() == 0
    assert (freq[:2] - expected).abs().max() < 0.015


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.softmax(LOGITS, -1)  # ~ [0.57, 0.21, 0.13, 0.08, 0.03, 0.004]
    freq = draw_histogram(SamplingParams(temperature=1.0, top_p=0.8))
    kept = probs[:3] / probs[:3].sum()
    assert freq[3:].sum() == 0
    assert (freq[:3] - kept).abs().max() < 0.015


def test_min_p_drops_tokens_below_fraction_of_max():
    probs = filtered_probs(LOGITS, 1.0, 0, 1.0, 0.2)
    full = torch.softmax(LOGITS, -1)
    keep = full >= 0.2 * full.max()
    assert torch.equal(probs > 0, keep)
    assert math.isclose(probs.sum().item(), 1.0, rel_tol=1e-6)


def test_greedy_is_argmax():
    sampler = Sampler(6, [], str)
    assert sampler(LOGITS[None], [make_seq(SamplingParams(temperature=0))]) == [0]


def test_logit_bias_moves_the_argmax():
    sampler = Sampler(6, [], str)
    seq = make_seq(SamplingParams(temperature=0, logit_bias={4: 100}))
    assert sampler(LOGITS[None], [seq]) == [4]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    sampler = Sampler(6, [], str)
    seq = make_seq(SamplingParams(temperature=0, repetition_penalty=2.0), prompt=(0, 4))
    out = sampler._apply_bias_and_penalties(LOGITS[None].clone(), [seq])[0]
    assert out[0] == 1.0 and out[4] == -2.0 and out[1] == 1.0


def test_presence_and_frequency_penalties_count_output_tokens_only():
    sampler = Sampler(6, [], str)
    seq = make_seq(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prompt=(1,), outputs=(0, 0, 2))
    out = sampler._apply_bias_and_penalties(LOGITS[None].clone(), [seq])[0]
    assert out[0] == pytest.approx(2.0 - 0.5 - 0.5)
    assert out[2] == pytest.approx(0.5 - 0.5 - 0.25)
    assert out[1] == 1.0


def test_min_tokens_blocks_eos_and_stop_ids():
    sampler = Sampler(6, [0], str)
    seq = make_seq(SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[1]))
    assert sampler(LOGITS[None], [seq]) == [2]


def test_seed_gives_same_tokens_whatever_the_batch():
    sampler = Sampler(6, [], str)
    alone = make_seq(SamplingParams(seed=7), seed=7)
    solo = [sampler(LOGITS[None], [alone])[0] for _ in range(30)]
    paired = make_seq(SamplingParams(seed=7), seed=7)
    others = [make_seq(SamplingParams(), seed=s) for s in (1, 2)]
    together = [sampler(LOGITS.repeat(3, 1), [others[0], paired, others[1]])[1] for _ in range(30)]
    assert solo == together
    assert len(set(solo)) > 1


def test_logprobs_are_raw_log_softmax_with_ranks():
    sampler = Sampler(6, [], lambda t: f"<{t}>")
    seq = make_seq(SamplingParams(temperature=0, logprobs=2))
    sampler(LOGITS[None], [seq])
    entry = seq.logprobs[0]
    expected = torch.log_softmax(LOGITS, -1)
    assert set(entry) == {0, 1}
    assert entry[0].rank == 1 and entry[1].rank == 2
    assert entry[0].logprob == pytest.approx(expected[0].item())
    assert entry[1].decoded_token == "<1>"
    assert seq.cumulative_logprob == pytest.approx(expected[0].item())
