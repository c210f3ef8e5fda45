"""Loads a model's tokenizer (and chat template) through `transformers`."""
import os

from engine.models.model_config import ModelLoadError


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging
    if not os.path.isdir(path):
        raise ModelLoadError(f"tokenizer directory not found: {path}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it warns about model types it does not know (memory_llama); irrelevant here
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many types for a bad or missing tokenizer
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
