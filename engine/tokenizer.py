"""Loads a model's tokenizer (and chat template) through `transformers`."""
import os

from engine.models.model_config import ModelLoadError


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    if not os.path.isdir(path):
        raise ModelLoadError(f"tokenizer directory not found: {path}")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many types for a bad or missing tokenizer
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {exc}") from exc
