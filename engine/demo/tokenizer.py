"""The demo model's tokenizer: byte-level BPE (any UTF-8 input tokenizes), digits split one per token."""
import random

from engine.demo.tasks import GENERATORS, filler_text
from engine.models.random_checkpoint import CHAT_TEMPLATE

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]


def _corpus(rng: random.Random, samples: int):
    approx = lambda s: len(s) // 4  # noqa: E731  (no tokenizer exists yet: count ~4 characters per token)
    for i in range(samples):
        name = list(GENERATORS)[i % len(GENERATORS)]
        sample = GENERATORS[name](rng, rng.choice([256, 512, 1024]), rng.random(), approx)
        yield sample.prompt + sample.answer
        yield filler_text(rng, 200, approx)


def train_tokenizer(vocab_size: int, seed: int = 0, samples: int = 400):
    """Train on generated task text and filler; return a `PreTrainedTokenizerFast` with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(random.Random(seed), samples), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   chat_template=CHAT_TEMPLATE)
