"""Per-request retrieval state: which blocks are summarised, ActQKV statistics, densities, counters."""
import torch

from engine.kv.actqkv import QueryStats
from engine.kv.config import KVConfig
from engine.kv.summaries import SequenceSummaries


class SequenceKVState:
    def __init__(self, config: KVConfig, num_layers: int, device: torch.device):
        self.config = config
        self.finalized = [0] * num_layers            # logical blocks summarised so far, per layer
        self.summaries = SequenceSummaries(num_layers)
        self.stats = [QueryStats() for _ in range(num_layers)]
        self.density = torch.ones(num_layers, device=device)   # recent information density per layer
        self.tokens_attended = [0] * num_layers      # by the last query of the last step, per layer
        self.blocks_selected = [0] * num_layers
        self.last_attended: list[tuple] = [((), 0, 0)] * num_layers  # (selected logical blocks, sink end, local start)
        self.question: list[torch.Tensor] | None = None   # per layer, the question vector [H, D] (engine.kv.question)
        self.tiles: list = [None] * num_layers      # per layer, its TileCache (CPU; engine.kv.tile_cache)

    def attends_block(self, layer: int, block: int, block_size: int) -> bool:
        """Whether the last query of `layer` attended logical block `block` (as sink, retrieved or local)."""
        selected, sink_end, local_start = self.last_attended[layer]
        return block * block_size < sink_end or (block + 1) * block_size > local_start or block in selected
