"""MemoryLlama: the Llama block with an UltraMemV2-style memory layer in parallel with its FFN.

config.json carries the Llama fields plus `memory_layers` (block indices; default all), `memory_*` sizes (see
`MemoryConfig`) and `memory_value_rows`: when set, one value table of that many rows is shared by all memory
layers, layer j reading from offset j·rows/len(memory_layers); otherwise each layer owns num_keys² rows.
"""
import torch

from engine.layers.memory_layer import MemoryConfig, MemoryLayer, ValueTables
from engine.models.llama import DecoderLayer, LlamaForCausalLM
from engine.models.model_config import ModelConfig


class MemoryDecoderLayer(DecoderLayer):
    def __init__(self, cfg: ModelConfig, memory: MemoryLayer | None):
        super().__init__(cfg)
        self.memory = memory

    def forward(self, x, cos_sin, meta, kv_cache):
        x = x + self.self_attn(self.input_layernorm(x), cos_sin, meta, kv_cache)
        h = self.post_attention_layernorm(x)
        out = self.mlp(h)
        if self.memory is not None:
            flat = h.reshape(-1, h.shape[-1])
            mem = self.memory(flat) if torch.is_grad_enabled() else self.memory.forward_decode(flat)
            out = out + mem.view_as(out)
        return x + out


class MemoryLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        mem_cfg = MemoryConfig.from_dict(cfg.raw)
        layer_ids = cfg.raw.get("memory_layers")
        layer_ids = list(range(cfg.num_hidden_layers)) if layer_ids is None else list(layer_ids)
        shared_rows = cfg.raw.get("memory_value_rows")
        if shared_rows:
            self.model.memory_values = ValueTables(shared_rows, mem_cfg.value_dim, mem_cfg.pre_value_dim)
        layers = []
        for i in range(cfg.num_hidden_layers):
            memory = None
            if i in layer_ids:
                j = layer_ids.index(i)
                tables = self.model.memory_values if shared_rows else None
                offset = j * shared_rows // len(layer_ids) if shared_rows else 0
                memory = MemoryLayer(cfg.hidden_size, mem_cfg, tables, offset)
            layers.append(MemoryDecoderLayer(cfg, memory))
        self.model.layers = torch.nn.ModuleList(layers)
        self.model.number_layers()

    def prepare_for_inference(self):
        """The Llama fusions, and each memory layer's derived tensors computed once (`MemoryLayer.freeze`)."""
        super().prepare_for_inference()
        for memory in self.memory_layers():
            memory.freeze()

    def memory_layers(self) -> list[MemoryLayer]:
        return [layer.memory for layer in self.model.layers if layer.memory is not None]
