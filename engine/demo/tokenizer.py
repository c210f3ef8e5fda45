"""The demo model's tokenizer: byte-level BPE (any UTF-8 input tokenizes), numbers split into chunks of up to
`digit_group` digits from the left (GPT-4 style), every such chunk one token.

Chunks of three digits make a 7-digit value three nearly unique tokens instead of seven tokens from an alphabet of
ten: copying a value then needs only the plain induction pattern (find the current token earlier, copy what
followed), which a small model learns far sooner than telling repeated digits apart by their neighbours.
"""
import itertools
import random

from engine.demo.tasks import GENERATORS, facts, filler_text
from engine.models.random_checkpoint import CHAT_TEMPLATE

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]


def digit_chunks(group: int) -> list[str]:
    """Every string of 1..group digits."""
    return ["".join(p) for n in range(1, group + 1) for p in itertools.product("0123456789", repeat=n)]


def _corpus(rng: random.Random, samples: int, digit_group: int):
    approx = lambda s: len(s) // 4  # noqa: E731  (no tokenizer exists yet: count ~4 characters per token)
    for i in range(samples):
        name = list(GENERATORS)[i % len(GENERATORS)]
        sample = GENERATORS[name](rng, rng.choice([256, 512, 1024]), rng.random(), approx)
        yield sample.prompt + sample.answer
        yield filler_text(rng, 200, approx)
        fact = facts(rng, 200, 0.0, approx)
        yield fact.prompt + fact.answer + "".join(q + a for q, a in fact.followups)
    if digit_group > 1:   # every chunk often enough that BPE merges it into one token
        yield " ".join(digit_chunks(digit_group) * 50)


def train_tokenizer(vocab_size: int, seed: int = 0, samples: int = 400, digit_group: int = 1):
    """Train on generated task text and filler; return a `PreTrainedTokenizerFast` with the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    digits = (pre_tokenizers.Digits(individual_digits=True) if digit_group == 1
              else pre_tokenizers.Split(Regex(f"\\d{{1,{digit_group}}}"), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(random.Random(seed), samples, digit_group), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    missing = [c for c in digit_chunks(digit_group) if len(tok.encode(c, add_special_tokens=False).ids) != 1]
    if missing:
        raise ValueError(f"vocab_size {vocab_size} leaves {len(missing)} digit chunks split (e.g. {missing[:3]})")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   chat_template=CHAT_TEMPLATE)
