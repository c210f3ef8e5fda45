"""Builds one of our model classes from a Hugging Face-style directory, reading safetensors by mmap."""
import glob
import os

import torch
from safetensors import safe_open

from engine.layers.mlp import ACTIVATIONS
from engine.models.llama import LlamaForCausalLM
from engine.models.memory_llama import MemoryLlamaForCausalLM
from engine.models.model_config import ModelConfig, ModelLoadError

MODEL_CLASSES = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "MemoryLlamaForCausalLM": MemoryLlamaForCausalLM,
}


def load_model(model_dir: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """Instantiate the architecture named in config.json and assign the checkpoint's tensors to it."""
    cfg = ModelConfig.from_dir(model_dir)
    if cfg.hidden_act not in ACTIVATIONS:
        raise ModelLoadError(f"unsupported hidden_act {cfg.hidden_act!r}")
    with torch.device("meta"):
        model = MODEL_CLASSES[cfg.architecture](cfg)
    weights = read_safetensors(model_dir)
    expected = model.state_dict(keep_vars=True)  # tied weights appear under both names
    if cfg.tie_word_embeddings or "lm_head.weight" not in weights:
        weights.setdefault("lm_head.weight", weights.get("model.embed_tokens.weight"))
    missing = sorted(k for k in expected if weights.get(k) is None)
    unexpected = sorted(k for k in weights if k not in expected and not k.endswith("rotary_emb.inv_freq"))
    if missing or unexpected:
        raise ModelLoadError(
            f"config.json does not match the weights in {model_dir}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    state = {}
    for name, param in expected.items():
        tensor = weights[name]
        if tuple(tensor.shape) != tuple(param.shape):
            raise ModelLoadError(f"config.json does not match the weights in {model_dir}: {name} has shape "
                                 f"{tuple(tensor.shape)}, config implies {tuple(param.shape)}")
        state[name] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval().requires_grad_(False)


def read_safetensors(model_dir: str) -> dict[str, torch.Tensor]:
    """All tensors of the directory's *.safetensors files, memory-mapped (no copy until converted)."""
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {model_dir}")
    tensors = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors
