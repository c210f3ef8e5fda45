"""Random-weight checkpoints of real architectures, written in the Hugging Face layout.

Tests and benchmarks use them as the yardstick for correctness and speed: the weights come from `transformers`
(so the reference implementation and ours read the same files) and the tokenizer is a small byte-level BPE.
"""
import json
import os

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

_TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "A long context serving engine keeps its key value cache in blocks of thirty two tokens. "
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 42 1234 and punctuation: , . ; ! ? ( ) [ ] { } \" ' - _ / \\ "
    "Unicode: café naïve Grüße 東京 😀 привет, and newlines\nlike this one.\n"
)

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, vocab_size=384)
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, vocab_size=32000, rms_norm_eps=1e-5)


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer with exactly `vocab_size` ids (padded with unreachable `<xN>` tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, 400), special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TRAINING_TEXT] * 20, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(len(vocab), vocab_size):
        vocab[f"<x{i}>"] = i
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   chat_template=CHAT_TEMPLATE)


def make_random_checkpoint(out_dir: str, arch: str = "llama", seed: int = 0, init_std: float = 0.2,
                           dtype: torch.dtype = torch.float32, **overrides) -> str:
    """Write config.json, model.safetensors and the tokenizer of a random `arch` model to `out_dir`.

    `init_std` is larger than the usual 0.02 so that logits are peaked and greedy decoding is well defined.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config
    config_cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    settings = {**TINY, "bos_token_id": 1, "eos_token_id": 2, "initializer_range": init_std, **overrides}
    config = config_cls(**settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    build_tokenizer(config.vocab_size).save_pretrained(out_dir)
    return out_dir
