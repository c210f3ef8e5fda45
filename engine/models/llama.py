"""Llama-family decoder (Llama, Mistral, Qwen2) with Hugging Face parameter names."""
import torch

from engine.layers.attention import Attention, AttentionMetadata
from engine.layers.mlp import GatedMLP
from engine.layers.norms import RMSNorm
from engine.layers.rotary import RotaryEmbedding
from engine.models.model_config import ModelConfig


class DecoderLayer(torch.nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        qwen2 = cfg.architecture == "Qwen2ForCausalLM"
        self.self_attn = Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                                   qkv_bias=cfg.attention_bias or qwen2,
                                   o_bias=cfg.attention_bias and not qwen2)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, cfg.mlp_bias)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos_sin, meta, kv_cache):
        x = x + self.self_attn(self.input_layernorm(x), cos_sin, meta, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(torch.nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary_emb = RotaryEmbedding(cfg, cfg.max_position_embeddings)
        self.layers = torch.nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.number_layers()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def number_layers(self):
        for i, layer in enumerate(self.layers):
            layer.self_attn.layer_idx = i

    def forward(self, input_ids, positions, meta, kv_caches):
        x = self.embed_tokens(input_ids)
        cos_sin = self.rotary_emb(positions)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x = layer(x, cos_sin, meta, kv_cache)
        return self.norm(x)


class LlamaForCausalLM(torch.nn.Module):
    """Also serves `MistralForCausalLM` and `Qwen2ForCausalLM`: they differ only in config fields."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Hidden states `[num_tokens, hidden]` for a flattened step."""
        return self.model(input_ids, positions, meta, kv_caches)

    def forward_dense(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [batch, T, vocab] with plain causal attention and no cache (training and reference path)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.model(input_ids, positions, None, [None] * len(self.model.layers))
        return self.lm_head(hidden)

    def prepare_for_inference(self):
        """For the engine, once loaded: each layer's q/k/v projections as one product, and its MLP's gate/up."""
        for layer in self.model.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
