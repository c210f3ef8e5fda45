"""Per-request retrieval state: which blocks are summarised, ActQKV statistics, densities, counters."""
import torch

from engine.kv.actqkv import QueryStats
from engine.kv.config import KVConfig


class SequenceKVState:
    def __init__(self, config: KVConfig, num_layers: int, device: torch.device):
        self.config = config
        self.finalized = [0] * num_layers            # logical blocks summarised so far, per layer
        self.stats = [QueryStats() for _ in range(num_layers)]
        self.density = torch.ones(num_layers, device=device)   # recent information density per layer
        self.tokens_attended = [0] * num_layers      # by the last query of the last step, per layer
        self.blocks_selected = [0] * num_layers
