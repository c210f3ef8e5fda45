"""Synthetic task generators and scorers."""
import random

import pytest

from engine.demo.tasks import GENERATORS, MULTIKEY_TASK, NOISE, PASSKEY_TASK, first_int, score
from engine.demo.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def count():
    tok = train_tokenizer(1024, samples=40)
    return lambda text: len(tok.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("task", list(GENERATORS))
@pytest.mark.parametrize("length", [512, 2048])
def test_prompt_length_is_close_to_target_and_answer_scores(task, length, count):
    rng = random.Random(3)
    sample = GENERATORS[task](rng, length, 0.5, count)
    n = count(sample.prompt)
    assert 0.85 * length <= n <= 1.1 * length
    assert score(sample, sample.answer) == 1.0
    assert score(sample, " 0000000 nothing") == 0.0


def test_passkey_layout_and_depth(count):
    rng = random.Random(0)
    shallow = GENERATORS["passkey"](rng, 1024, 0.1, count)
    deep = GENERATORS["passkey"](rng, 1024, 0.9, count)
    for s in (shallow, deep):
        assert s.prompt.startswith(PASSKEY_TASK) and NOISE in s.prompt
        assert s.prompt.endswith("What is the pass key? The pass key is")
        assert f"The pass key is {s.references[0]}. Remember it. {s.references[0]} is the pass key." in s.prompt
        assert len(s.references[0]) == 5
    at = lambda s: s.prompt.index("The pass key is") / len(s.prompt)  # noqa: E731
    assert at(shallow) < 0.2 < 0.8 < at(deep)


def _haystack(sample):
    """The noise of a passkey prompt before and after its needle."""
    body = sample.prompt[len(PASSKEY_TASK):-len("What is the pass key? The pass key is")]
    needle = f"The pass key is {sample.references[0]}. Remember it. {sample.references[0]} is the pass key.\n"
    return body.split(needle)


def test_passkey_training_styles_break_the_repeated_noise(count):
    """style="exact" is the default and draws nothing more; the training styles keep the needle, the question and
    about the length, but the noise before and after the needle is no longer whole noise lines."""
    exact = GENERATORS["passkey"](random.Random(4), 1024, 0.3, count)
    assert GENERATORS["passkey"](random.Random(4), 1024, 0.3, count, style="exact") == exact
    assert all(len(part) % len(NOISE) == 0 for part in _haystack(exact))
    for style in ("drop", "cut", "filler"):
        varied = GENERATORS["passkey"](random.Random(4), 1024, 0.3, count, style=style)
        assert varied.references == exact.references and varied.answer == exact.answer
        assert varied.prompt.endswith("What is the pass key? The pass key is")
        before, after = _haystack(varied)
        assert len(before) % len(NOISE) != 0 or len(after) % len(NOISE) != 0, style
        assert 0.75 * len(exact.prompt) < len(varied.prompt) <= 1.1 * len(exact.prompt), style
        assert 0.2 < len(before) / (len(before) + len(after)) < 0.4, style     # the needle stays at its depth
    assert NOISE not in GENERATORS["passkey"](random.Random(4), 1024, 0.3, count, style="filler").prompt
    with pytest.raises(ValueError, match="style"):
        GENERATORS["passkey"](random.Random(4), 1024, 0.3, count, style="shuffled")


def test_multikey_has_distractors_and_one_answer(count):
    s = GENERATORS["multikey"](random.Random(1), 1024, 0.5, count)
    query = s.prompt.rsplit("for ", 1)[1].split(" mentioned")[0]
    assert s.prompt.startswith(MULTIKEY_TASK)
    assert s.prompt.count(f"for {query} is:") == 1
    assert s.prompt.count("One of the special magic numbers for") > 20
    assert f"for {query} is: {s.references[0]}." in s.prompt and len(s.references[0]) == 7


def test_multikey_similar_distractors_share_the_answers_digits_in_place(count):
    """`similar` draws each distractor digit from the answer's, in its place, with that chance; 0 leaves the
    evaluated prompts as they were."""
    import re
    assert GENERATORS["multikey"](random.Random(1), 1024, 0.5, count, similar=0.0) == \
        GENERATORS["multikey"](random.Random(1), 1024, 0.5, count)
    for similar, low, high in ((0.0, 0.0, 0.2), (0.6, 0.55, 0.8)):
        s = GENERATORS["multikey"](random.Random(1), 1024, 0.5, count, similar=similar)
        answer = s.references[0]
        others = [v for v in re.findall(r"is: (\d+)\.", s.prompt) if v != answer]
        assert len(others) > 20 and all(len(v) == 7 and v[0] != "0" for v in others)
        shared = sum(a == b for v in others for a, b in zip(v, answer)) / (7 * len(others))
        assert low < shared < high, (similar, shared)   # random digits share 0.1; similar 0.6: 0.6 + 0.4·0.1


def test_multikey_trie_distractors_part_from_the_answer_at_one_digit(count):
    """With `trie` = 1, three other values share the answer's first k digits and differ from it and from each other
    at the next one; `trie` = 0 leaves the evaluated prompts as they were."""
    import re

    def groups(s):   # the places k ≥ 2 where ≥ 3 other values part from the answer, each with its own digit
        answer = s.references[0]
        others = [v for v in re.findall(r"is: (\d+)\.", s.prompt) if v != answer]
        return {k for k in range(2, 7) if len({v[k] for v in others if v[:k] == answer[:k]}) >= 3}

    assert GENERATORS["multikey"](random.Random(1), 1024, 0.5, count, trie=0.0) == \
        GENERATORS["multikey"](random.Random(1), 1024, 0.5, count)
    plain = [groups(GENERATORS["multikey"](random.Random(seed), 1024, 0.5, count)) for seed in range(30)]
    tries = [groups(GENERATORS["multikey"](random.Random(seed), 1024, 0.5, count, trie=1.0)) for seed in range(30)]
    assert sum(map(bool, plain)) <= 2 and sum(map(bool, tries)) >= 22   # k = 1 (1 in 6) is not counted
    assert len(set().union(*tries)) == 5   # the place where they part is drawn


def test_scorers():
    assert first_int("The answer is 12345, maybe 6") == "12345"
    assert first_int("none") is None
    s = GENERATORS["variable_tracking"](random.Random(2), 512, 0.3, lambda t: len(t) // 4)
    assert score(s, " ".join(s.references[:2])) == pytest.approx(2 / len(s.references))


def test_tokenizer_splits_numbers_into_whole_three_digit_chunks():
    tok = train_tokenizer(4096, samples=40, digit_group=3)   # raises if any chunk of 1-3 digits is not one token
    pieces = [tok.decode([i]) for i in tok.encode("is: 1234567.", add_special_tokens=False)]
    assert pieces[-4:] == ["123", "456", "7", "."]
    text = "héllo wörld 😀 0042"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_fact_table_is_fixed_and_questions_need_no_context(count):
    from engine.demo.tasks import fact_world, facts
    world = fact_world()
    assert world == fact_world() and len(world) == 512
    sample = facts(random.Random(1), 256, 0.0, count)
    assert sample.prompt.startswith("Where does ") and sample.prompt.endswith(" lives in")
    name = sample.prompt.split()[2].rstrip("?")
    assert sample.answer == f" {world[name]}." and score(sample, sample.answer) == 1.0
    assert 10 <= len(sample.followups) + 1 <= 256 // 14
    assert all(world[q.split()[2].rstrip("?")] in a for q, a in sample.followups)
