"""Synthetic long-context tasks: generators and scorers, sized in tokens of the model's tokenizer.

Formats follow InfiniteBench (passkey, kv_retrieval) and RULER (niah_multikey_2 in its single-answer form,
variable tracking, common-words extraction). Every generator takes a `random.Random`, a target context length in
tokens, a needle depth in [0, 1] and `count_tokens(text) -> int`, and returns a `TaskSample` whose prompt ends
where the model's answer begins.
"""
import functools
import random
import re
import string
from dataclasses import dataclass, field
from typing import Callable

from engine.demo.words import ADJECTIVES, NOUNS, VERBS

CountTokens = Callable[[str], int]

PASSKEY_TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                "I will quiz you about the important information there.\n")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
MULTIKEY_TASK = ("A special magic number is hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the number afterwards.\n")


@dataclass
class TaskSample:
    task: str
    prompt: str
    answer: str                          # the reference completion (what training teaches)
    references: list[str] = field(default_factory=list)   # what the scorer looks for
    depth: float = 0.0
    context_len: int = 0
    max_tokens: int = 16
    followups: list[tuple[str, str]] = field(default_factory=list)  # more (question, answer) pairs, for training
    question: str = ""                   # what is asked, without the context (ActQKV's question term)


def _fill(units: list[str], budget: int, count_tokens: CountTokens) -> int:
    """How many of `units` (cycled) fit in `budget` tokens."""
    per_unit = max(1, count_tokens("".join(units[:8])) / min(8, len(units)))
    return max(0, int(budget / per_unit))


PASSKEY_STYLES = ("exact", "drop", "cut", "filler")


def passkey(rng: random.Random, length: int, depth: float, count_tokens: CountTokens,
            style: str = "exact", drop: float = 0.3) -> TaskSample:
    """`style` (training, and the probes of bench/passkey_cuts.py) varies the haystack, so that the key can be
    found only by its content. The repeated noise lets a model find the key's digits by their distance from the
    question, or by the one place where the noise breaks, and such a model fails once retrieval moves blocks
    (bench/RESULTS.md, sessions 10-11). `drop` leaves out each noise sentence with a chance of up to `drop`; `cut`
    cuts spans of 1-40 characters out of the noise at random places, mid-word as retrieval's blocks do; `filler`
    uses varied sentences (`filler_text`) instead of the repeated noise."""
    if style not in PASSKEY_STYLES:
        raise ValueError(f"passkey style {style!r}: expected one of {', '.join(PASSKEY_STYLES)}")
    key = str(rng.randint(10000, 99999))
    needle = f"The pass key is {key}. Remember it. {key} is the pass key.\n"
    question = "What is the pass key? The pass key is"
    fixed = count_tokens(PASSKEY_TASK + needle + question)
    if style == "filler":
        before = round((length - fixed) * depth)
        hay = filler_text(rng, before, count_tokens), filler_text(rng, length - fixed - before, count_tokens)
    else:
        n = _fill([NOISE], length - fixed, count_tokens)
        before = round(n * depth)
        hay = NOISE * before, NOISE * (n - before)
        if style == "drop":
            rate = rng.uniform(0.0, drop)
            hay = tuple(_drop_sentences(rng, lines, rate) for lines in (before, n - before))
        elif style == "cut":
            hay = tuple(_cut_spans(rng, text) for text in hay)
    prompt = PASSKEY_TASK + hay[0] + needle + hay[1] + question
    return TaskSample("passkey", prompt, f" {key}.", [key], depth, length, max_tokens=8, question=question)


NOISE_SENTENCES = re.findall(r"[^.]+\.\s", NOISE)


def _drop_sentences(rng: random.Random, lines: int, rate: float) -> str:
    """`lines` lines of NOISE, each sentence left out with probability `rate`."""
    return "".join(s for _ in range(lines) for s in NOISE_SENTENCES if rng.random() >= rate)


def _cut_spans(rng: random.Random, text: str) -> str:
    """`text` with one to len/150 spans of 1-40 characters cut out at random places."""
    if len(text) < 50:
        return text
    starts = sorted(rng.sample(range(len(text)), rng.randint(1, max(1, len(text) // 150))))
    kept, at = [], 0
    for start in starts:
        if start >= at:
            kept.append(text[at:start])
            at = start + rng.randint(1, 40)
    return "".join(kept) + text[at:]


def _word_key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _multikey_question(key: str) -> str:
    return (f"\nWhat is the special magic number for {key} mentioned in the provided text? "
            f"The special magic number for {key} mentioned in the provided text is")


def _similar_value(rng: random.Random, value: str, similar: float) -> str:
    """Another 7-digit number that has each digit of `value`, in its place, with chance `similar`."""
    while True:
        other = "".join(d if rng.random() < similar else rng.choice(string.digits) for d in value)
        if other != value and other[0] != "0":
            return other


def _trie_values(rng: random.Random, value: str, count: int = 3) -> list[str]:
    """`count` other 7-digit numbers that share the first k digits of `value` (one k from 1 to 6) and differ from
    it, and from each other, at the next digit: so the answer's digit there is no more common than theirs."""
    k = rng.randint(1, len(value) - 1)
    digits = rng.sample([d for d in string.digits if d != value[k]], count)
    return [value[:k] + d + "".join(rng.choice(string.digits) for _ in value[k + 1:]) for d in digits]


def multikey(rng: random.Random, length: int, depth: float, count_tokens: CountTokens,
             followups: int = 0, similar: float = 0.0, trie: float = 0.0) -> TaskSample:
    """RULER niah_multikey_2, one query: the haystack is made of needles with other keys. With `followups`, the
    sample also carries that many questions about other needles (multi-query training). With `similar` > 0 (for
    training), the other needles' values share each digit of the answer, in its place, with that chance: no digit
    and its place alone tells which needle a copy is reading. With chance `trie`, three of the other values begin
    like the answer and part from it at one digit: the digits written so far do not tell which needle to read."""
    query = _word_key(rng)
    question = _multikey_question(query)
    value = str(rng.randint(10**6, 10**7 - 1))
    target = f"One of the special magic numbers for {query} is: {value}.\n"
    budget = length - count_tokens(MULTIKEY_TASK + target + question)
    keys, needles, pairs, used = {query}, [], [], 0
    siblings = _trie_values(rng, value) if trie > 0 and rng.random() < trie else []
    spread = bool(siblings)   # the siblings come first below; they are then shuffled among the needles
    while True:
        key = _word_key(rng)
        if key in keys:
            continue
        if siblings:
            other = siblings.pop()
        else:
            other = _similar_value(rng, value, similar) if similar > 0 else str(rng.randint(10**6, 10**7 - 1))
        needle = f"One of the special magic numbers for {key} is: {other}.\n"
        cost = count_tokens(needle)
        if used + cost > budget:
            break
        keys.add(key)
        needles.append(needle)
        pairs.append((key, other))
        used += cost
    if spread:
        rng.shuffle(needles)
    at = round(len(needles) * depth)
    needles.insert(at, target)
    prompt = MULTIKEY_TASK + "".join(needles).rstrip("\n") + question
    extra = [(_multikey_question(k), f" {v}.") for k, v in rng.sample(pairs, min(followups, len(pairs)))]
    return TaskSample("multikey", prompt, f" {value}.", [value], depth, length, max_tokens=12, followups=extra,
                      question=question.strip())


def _short_id(rng: random.Random, n: int = 6) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def kv_retrieval(rng: random.Random, length: int, depth: float, count_tokens: CountTokens,
                 followups: int = 0) -> TaskSample:
    """InfiniteBench kv_retrieval with 6-character keys and values (`followups`: more questions, as in multikey)."""
    head = "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n{"
    pair_cost = count_tokens('"abc123": "def456", ')
    n = max(2, (length - count_tokens(head) - 30) // pair_cost)
    pairs = [(_short_id(rng), _short_id(rng)) for _ in range(n)]
    at = min(n - 1, round((n - 1) * depth))
    key, value = pairs[at]
    body = ", ".join(f'"{k}": "{v}"' for k, v in pairs)
    prompt = f'{head}{body}}}\nKey: "{key}"\nThe value associated with the specified key is:'
    extra = [(f'\nKey: "{k}"\nThe value associated with the specified key is:', f' "{v}"')
             for k, v in rng.sample(pairs, min(followups, len(pairs)))]
    return TaskSample("kv_retrieval", prompt, f' "{value}"', [value], depth, length, max_tokens=12, followups=extra,
                      question=f'Key: "{key}"')


def variable_tracking(rng: random.Random, length: int, depth: float, count_tokens: CountTokens,
                      hops: int = 4) -> TaskSample:
    """RULER vt: one chain of `hops` assignments hidden among noise lines; name every variable of the chain."""
    names = []
    while len(names) < hops + 1:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, hops + 1)]
    head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    question = (f"\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: "
                f"According to the chain(s) of variable assignment in the text above, {hops + 1} variables are "
                f"assigned the value {value}, they are:")
    fixed = count_tokens(head + " ".join(statements) + question)
    n = _fill([NOISE.strip() + " "], length - fixed, count_tokens)
    lines = [NOISE.strip()] * n
    start = round(n * depth * 0.5)
    slots = sorted(rng.sample(range(start, n + 1), min(len(statements), n + 1 - start))) if n else [0] * len(statements)
    for offset, (slot, stmt) in enumerate(zip(slots, statements)):
        lines.insert(slot + offset, stmt)
    prompt = head + " ".join(lines) + question
    return TaskSample("variable_tracking", prompt, " " + " ".join(names) + ".", names, depth, length, max_tokens=30)


def common_words(rng: random.Random, length: int, depth: float, count_tokens: CountTokens) -> TaskSample:
    """RULER cwe: a numbered word list where 10 words recur often; name them (an aggregation negative control)."""
    vocab = rng.sample(ADJECTIVES + NOUNS + VERBS, 10)
    common, rare_pool = vocab, [w for w in ADJECTIVES + NOUNS + VERBS if w not in vocab]
    freq_common, freq_rare = (30, 3) if length >= 4096 else (6, 1)
    head = ("Below is a numbered list of words. In these words, some appear more often than others. "
            "Memorize the ones that appear most often.\n")
    question = ("\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that "
                "appear most often in the list are:")
    budget = length - count_tokens(head + question)

    def build(total_words: int) -> str:
        n_rare = max(0, (total_words - 10 * freq_common) // freq_rare)
        words = common * freq_common + [w for w in rng.choices(rare_pool, k=n_rare) for _ in range(freq_rare)]
        rng.shuffle(words)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))

    total = max(10 * freq_common, budget // 4)
    listing = build(total)
    total = max(10 * freq_common, int(total * budget / max(1, count_tokens(listing))))  # one correction pass
    prompt = head + build(total) + question
    return TaskSample("common_words", prompt, " " + ", ".join(common) + ".", common, depth, length, max_tokens=60)


FACT_PLACES = """Paris London Tokyo Cairo Lima Oslo Rome Madrid Berlin Vienna Prague Dublin Lisbon Athens Moscow
Delhi Seoul Beijing Sydney Toronto Chicago Denver Boston Miami Quito Bogota Nairobi Accra Dakar Tunis Havana
Manila""".split()


@functools.lru_cache(maxsize=4)
def fact_world(size: int = 512, seed: int = 2024) -> dict[str, str]:
    """A fixed table of made-up people and the city each lives in, the same in every run: no prompt holds the
    answer, so only what the model stores in its weights (MLPs, memory layers) can give it. Cached: do not change
    the returned table."""
    rng = random.Random(seed)
    world: dict[str, str] = {}
    while len(world) < size:
        name = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)).capitalize()
        world.setdefault(name, rng.choice(FACT_PLACES))
    return world


def facts(rng: random.Random, length: int, depth: float, count_tokens: CountTokens) -> TaskSample:
    """Questions about `fact_world` with no context ("Where does Kavoru live? Kavoru lives in" -> " Paris."),
    about `length` tokens of them (16 at most): the first in the prompt, the others as follow-ups (training data
    for the memory layers; `depth` is unused)."""
    world = fact_world()
    names = rng.sample(sorted(world), max(1, min(16, length // 14)))   # at most 16: facts must not drown the rest
    ask = [(f"Where does {n} live? {n} lives in", f" {world[n]}.") for n in names]
    return TaskSample("facts", ask[0][0], ask[0][1], [world[names[0]]], depth, length, max_tokens=4,
                      followups=[("\n" + q, a) for q, a in ask[1:]], question=ask[0][0])


def filler_text(rng: random.Random, length: int, count_tokens: CountTokens) -> str:
    """Simple English sentences ("The brave fox carries a red lamp near the river."), about `length` tokens."""
    sentences, used = [], 0
    while used < length:
        s = (f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
             f"{rng.choice(['a', 'the', 'one', 'every'])} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
             f"{rng.choice(['', ' near the ' + rng.choice(NOUNS), ' in the ' + rng.choice(NOUNS)])}. ")
        sentences.append(s)
        used += count_tokens(s)
    return "".join(sentences)


def repeated_text(rng: random.Random, length: int, count_tokens: CountTokens) -> tuple[str, str]:
    """A training aid for copying (induction): random numbers and words, then the same again. Returns the first
    half (with a separator) and the repeat, about `length` tokens in all."""
    units, used = [], 0
    while used < length // 2:
        unit = str(rng.randint(10**4, 10**7 - 1)) if rng.random() < 0.5 else _word_key(rng)
        units.append(unit)
        used += count_tokens(" " + unit)
    text = " ".join(units)
    return text + "\nAgain:", " " + text


GENERATORS = {"passkey": passkey, "multikey": multikey, "kv_retrieval": kv_retrieval,
              "variable_tracking": variable_tracking, "common_words": common_words}


NUMBER_TASKS = ("passkey", "multikey")   # answered by one number: the first integer of the output is scored


def first_int(text: str) -> str | None:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


def score(sample: TaskSample, output: str) -> float:
    """1.0 for a correct answer, 0.0 for a wrong one; the fraction of references found for list answers."""
    if sample.task in NUMBER_TASKS:
        return float(first_int(output) == sample.references[0])
    if sample.task == "kv_retrieval":
        words = re.sub(r"[\n:\"'.,?!{}]", " ", output).split()
        return float(sample.references[0] in words)
    found = sum(ref.lower() in output.lower() for ref in sample.references)
    return found / len(sample.references)
