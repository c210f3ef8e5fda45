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
        self.reused: list = [None] * num_layers     # per layer, the decode selection kept for reuse (reselect_every)
        self.host_tables = None   # the model runner's (block count, last block, block ids, slots) of the sequence

    def reusable_selection(self, layer: int, last: int, decoding: bool):
        """The layer's kept selection if a decode step may use it: fewer than `reselect_every` steps old and chosen
        among the same candidates (no block has left the local window since). Else None, and nothing is kept."""
        kept = self.reused[layer]
        if not decoding or kept is None or kept[0] != last or kept[1] >= self.config.reselect_every:
            self.reused[layer] = None
            return None
        self.reused[layer] = (last, kept[1] + 1, kept[2])
        return kept[2]

    def keep_selection(self, layer: int, last: int, selection: tuple):
        """Keep a decode step's selection for the next `reselect_every` − 1 steps."""
        if self.config.reselect_every > 1:
            self.reused[layer] = (last, 1, selection)

    def attends_block(self, layer: int, block: int, block_size: int) -> bool:
        """Whether the last query of `layer` attended logical block `block` (as sink, retrieved or local)."""
        selected, sink_end, local_start = self.last_attended[layer]
        return block * block_size < sink_end or (block + 1) * block_size > local_start or block in selected
