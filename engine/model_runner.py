"""Turns a scheduled batch into tensors, runs the model over the paged KV cache and returns logits.

It makes no policy decisions: the scheduler has already chosen the sequences and their token counts.
"""
import logging

import torch

from engine.config import EngineConfig
from engine.kv.question import question_vectors
from engine.kv.retrieval_attention import RetrievalContext, RetrievalSlice
from engine.kv.state import SequenceKVState
from engine.kv.summaries import received_attention
from engine.kv.tiers import DeviceBlockCache, blocks_needed, offload_problem
from engine import calibrate
from engine.layers.attention import AttentionMetadata, PrefillSlice, causal_mask
from engine.layers.context_runs import context_runs
from engine.layers.gather_buffers import GatherBuffers
from engine.layers.mlp import GatedMLP
from engine.layers.sparse_crossover import measure_crossover
from engine.layers.sparse_mlp import SparsePlan, SparsityContext, parse_sparsity
from engine.malloc_tuning import keep_freed_memory
from engine.sampling_params import SamplingParamsError
from engine.models.loader import load_model
from engine.models.model_config import ModelConfig
from engine.scheduler import ScheduledSeq

log = logging.getLogger("actserve")


def token_slots(block_table: list[int], block_size: int, num_tokens: int, start: int = 0) -> torch.Tensor:
    """Cache slots of the tokens at positions start .. num_tokens - 1."""
    bs, first = block_size, start // block_size
    blocks = torch.tensor(block_table[first:-(-num_tokens // bs)], dtype=torch.long)
    return (blocks[:, None] * bs + torch.arange(bs)).flatten()[start - first * bs:num_tokens - first * bs]


def retrieval_tables(state: SequenceKVState, block_table: list[int],
                     block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A retrieval sequence's block ids and the cache slots of every token of its blocks, on the host. Kept on its
    state and extended as the table grows (a table only grows while its state lives): rebuilt from the whole
    table, they cost ~0.3 ms a decode step at 32k."""
    count, last, block_ids, slots = state.host_tables or (0, None, None, None)
    if count > len(block_table) or (count and block_table[count - 1] != last):   # not the table they came from
        count = 0
    if count < len(block_table):
        new = torch.tensor(block_table[count:], dtype=torch.long)
        new_slots = token_slots(block_table, block_size, len(block_table) * block_size, count * block_size)
        block_ids = new if count == 0 else torch.cat([block_ids, new])
        slots = new_slots if count == 0 else torch.cat([slots, new_slots])
        state.host_tables = (len(block_table), block_table[-1], block_ids, slots)
    return block_ids, slots


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[name]


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig):
        self.config = config
        self.model_config = model_config
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self.model = load_model(config.model, self.dtype, self.device)
        self.model.prepare_for_inference()
        self.block_size = config.block_size
        self.num_blocks = config.num_kv_blocks or max(1, config.kv_cache_memory // self.bytes_per_block())
        shape = (self.num_blocks, self.block_size, model_config.num_key_value_heads, model_config.head_dim)
        pool = dict(dtype=self.dtype, device="cpu", pin_memory=self.device.type == "cuda") if config.kv_offload \
            else dict(dtype=self.dtype, device=self.device)
        self.kv_caches = [(torch.zeros(shape, **pool), torch.zeros(shape, **pool))
                          for _ in range(model_config.num_hidden_layers)]
        self.kv_tiers = self._make_tiers() if config.kv_offload else None
        self.received = received_attention(model_config.num_hidden_layers, self.num_blocks * self.block_size,
                                           model_config.num_key_value_heads, self.device)
        self.kv_states: dict[int, SequenceKVState] = {}
        self._retired_tiles = [0, 0]   # TileCache hits and misses of the sequences already released
        self.sparsity = SparsityContext()
        self.gather_buffers = GatherBuffers(reuse=self.device.type == "cpu")
        if self.device.type == "cpu":
            keep_freed_memory()
        self.calibration = calibrate.load(config.model)
        self.mlps = [m for m in self.model.modules() if isinstance(m, GatedMLP)]
        for i, mlp in enumerate(self.mlps):
            mlp.sparsity, mlp.layer_idx = self.sparsity, i
        self._crossover: dict[str, float] = {}   # measured sparse-kernel crossover density per kernel family
        cores = torch.get_num_threads()
        self.decode_threads = config.decode_threads or cores
        self.prefill_threads = config.prefill_threads or cores

    def _make_tiers(self) -> list[DeviceBlockCache]:
        bs, kv, kv_heads = self.block_size, self.config.kv_config(), self.model_config.num_key_value_heads
        step_blocks = -(-self.config.max_num_batched_tokens // bs) + self.config.max_num_seqs
        capacity = self.config.kv_device_cache_blocks
        if capacity is None:   # per-head selection needs up to kv_heads x the retrieved blocks
            capacity = max(512, step_blocks, blocks_needed(kv, bs, kv_heads))
        problem = offload_problem(kv, bs, capacity, kv_heads)
        if problem is None and step_blocks > capacity:
            problem = (f"a step writes into up to {step_blocks} blocks per layer (max_num_batched_tokens / block "
                       f"size + max_num_seqs) but the device cache holds {capacity}.")
        if problem:
            raise ValueError(f"--kv-offload: {problem}")
        log.info("KV tiers: pool in %s memory, device cache of %d blocks per layer", "pinned host" if
                 self.device.type == "cuda" else "host", capacity)
        return [DeviceBlockCache(k, v, capacity, self.device) for k, v in self.kv_caches]

    def offload_problem(self, kv) -> str | None:
        """Why a request's KV settings cannot run on this engine's KV tiers (None without tiers or if they can)."""
        if self.kv_tiers is None:
            return None
        return offload_problem(kv, self.block_size, self.kv_tiers[0].capacity, self.model_config.num_key_value_heads)

    def tile_cache_counts(self) -> tuple[int, int]:
        """TileCache (hits, misses) of every retrieval sequence since start (engine.kv.tile_cache; CPU)."""
        live = [t for state in self.kv_states.values() for t in state.tiles if t is not None]
        return (self._retired_tiles[0] + sum(t.hits for t in live),
                self._retired_tiles[1] + sum(t.misses for t in live))

    def _retire(self, state: SequenceKVState | None):
        """Keep the counts of a state that is dropped."""
        for tiles in state.tiles if state is not None else []:
            if tiles is not None:
                self._retired_tiles[0] += tiles.hits
                self._retired_tiles[1] += tiles.misses

    def device_cache_counts(self) -> tuple[int, int]:
        """Device KV cache (hits, misses) summed over layers, since start; (0, 0) without tiers."""
        tiers = self.kv_tiers or []
        return sum(t.hits for t in tiers), sum(t.misses for t in tiers)

    def bytes_per_block(self) -> int:
        c = self.model_config
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * c.num_hidden_layers * self.block_size * c.num_key_value_heads * c.head_dim * elem

    @torch.inference_mode()
    def execute(self, batch: list[ScheduledSeq], all_rows: bool = False):
        """Run one step; return logits [len(completing), vocab] for the sequences that complete in it, and for
        the sequences that asked for prompt logprobs, (sequence, first position, logits [m, vocab]) whose row j
        predicts the prompt token at first + 1 + j.

        With `all_rows`, return the logits of every token of the step instead (tests).
        """
        has_prefill = any(s.num_new_tokens > 1 for s in batch)
        torch.set_num_threads(self.prefill_threads if has_prefill else self.decode_threads)
        input_ids, positions, meta, sample_rows = self._prepare(batch)
        self.sparsity.plan = self._mlp_plan(batch)
        hidden = self.model(input_ids, positions, meta, self.kv_caches)
        if all_rows:
            return self.model.compute_logits(hidden)
        prompt_logits, row = [], 0
        for item in batch:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = min(start + item.num_new_tokens, seq.num_prompt_tokens - 1)   # the last row predicts no prompt token
            if seq.prompt_logprobs is not None and start < end:
                prompt_logits.append((seq, start, self.model.compute_logits(hidden[row:row + end - start])))
            row += item.num_new_tokens
        return self.model.compute_logits(hidden[sample_rows]), prompt_logits

    def check_sparsity(self, spec: str) -> tuple[str, float | None]:
        """Parse and validate an MLP sparsity spec against this model; raise SamplingParamsError if unusable."""
        try:
            mode, target = parse_sparsity(spec)
        except ValueError as exc:
            raise SamplingParamsError("mlp_sparsity", str(exc)) from exc
        if mode == "relu" and self.model_config.hidden_act != "relu":
            raise SamplingParamsError("mlp_sparsity", "mlp_sparsity relu needs a model with ReLU MLPs.")
        if mode in ("teal", "cats") and f"{target:g}" not in self.calibration.get(mode, {}):
            raise SamplingParamsError("mlp_sparsity", f"{mode}:{target:g} is not calibrated for this model: run "
                                      f"`actserve calibrate --model DIR --target {target:g}`.")
        return mode, target

    def _mlp_plan(self, batch: list[ScheduledSeq]) -> SparsePlan | None:
        """Sparse MLPs only for decode-only steps of few sequences that all ask for the same sparsity."""
        specs = {item.seq.request.mlp_sparsity for item in batch}
        if len(specs) != 1 or len(batch) > self.config.mlp_sparse_max_batch:
            return None
        if any(item.num_new_tokens != 1 for item in batch):
            return None
        mode, target = specs.pop()
        if mode == "dense":
            return None
        thresholds = self.calibration[mode][f"{target:g}"] if target is not None else None
        return SparsePlan(mode, thresholds, self.mlp_max_density(mode, len(batch)))

    def mlp_max_density(self, mode: str, rows: int = 1) -> float:
        """Union density of active MLP rows above which dense kernels run under `mode` for `rows` decode rows:
        configured, or measured once per kernel family on this model's MLP shape and this device at batch 1
        (engine.layers.sparse_crossover) and divided by `rows`: the sparse kernels read each active row once per
        batch row (one bag per row), the dense GEMM reads the weights once for all of them."""
        configured = self.config.mlp_sparse_max_density
        if configured is not None:
            return configured
        family = "teal" if mode == "teal" else "rows"   # relu and cats share their kernels
        if family not in self._crossover:
            self._crossover[family] = measure_crossover(self.mlps, mode)
            log.info("sparse MLP (%s): sparse kernels up to a union density of %.2f, measured on this model's "
                     "MLP shape on %s", mode, self._crossover[family], self.device.type)
        return self._crossover[family] / rows

    def release(self, seq):
        """Forget a finished or aborted sequence's retrieval state."""
        self._retire(self.kv_states.pop(seq.seq_id, None))

    def _retrieval_state(self, seq) -> SequenceKVState | None:
        kv = seq.request.kv_config
        if kv is None or kv.policy == "full":
            return None
        if seq.num_computed_tokens == 0 or seq.seq_id not in self.kv_states:  # new, or recomputed after preemption
            self._retire(self.kv_states.get(seq.seq_id))
            state = SequenceKVState(kv, self.model_config.num_hidden_layers, self.device)
            if kv.policy == "actqkv" and kv.question_ids and kv.question_weight > 0:
                state.question = question_vectors(self.model, list(kv.question_ids), kv.local,
                                                  self.model_config.bos_token_id)
            self.kv_states[seq.seq_id] = state
        return self.kv_states[seq.seq_id]

    def _prepare(self, batch: list[ScheduledSeq]):
        bs, dev = self.block_size, self.device
        window = self.model_config.sliding_window
        ids, positions, slots, sample_rows, prefills, retrieval = [], [], [], [], [], []
        decode_rows, decode_slots, decode_lens, decode_in_place = [], [], [], []
        on_cpu = dev.type == "cpu"
        for item in batch:
            seq, n = item.seq, item.num_new_tokens
            start, row = seq.num_computed_tokens, len(ids)
            ids.extend(seq.token_ids[start:start + n])
            positions.extend(range(start, start + n))
            if item.completes:
                sample_rows.append(row + n - 1)
            state = self._retrieval_state(seq)
            whole_context = window is None or window >= start + n
            if n == 1 and state is None and on_cpu and whole_context:
                context = context_runs(seq.block_table, start + 1, bs)
                if context is not None:   # read in place: the context's slots are not needed
                    slots.append(token_slots(seq.block_table, bs, start + n, start))
                    decode_in_place.append((row, context))
                    continue
            if state is not None:
                block_ids, all_slots = retrieval_tables(state, seq.block_table, bs)
                all_slots = all_slots[:start + n]
                slots.append(all_slots[start:])
                retrieval.append(RetrievalSlice(row, n, start, all_slots.to(dev), block_ids.to(dev), state,
                                                prefilling=start < seq.num_prompt_tokens,
                                                block_table=list(seq.block_table)))
                continue
            all_slots = token_slots(seq.block_table, bs, start + n)
            slots.append(all_slots[start:])
            # without a mask: causal over every cached key; on the CPU as [context | chunk] pieces, not a mask
            if n == 1:
                decode_rows.append(row)
                decode_slots.append(all_slots)
                decode_lens.append(start + 1)
                continue
            in_pieces = whole_context and (start == 0 or on_cpu)
            prefills.append(PrefillSlice(
                q_start=row, q_len=n, ctx_start=start,
                kv_slots=None if start == 0 else all_slots.to(dev),
                mask=None if in_pieces else causal_mask(start, n, window).to(dev),
                context=context_runs(seq.block_table, start, bs) if in_pieces and start else None))
        slot_mapping = torch.cat(slots)
        meta = AttentionMetadata(
            slot_mapping=slot_mapping.to(dev), prefills=prefills,
            decode_rows=torch.tensor(decode_rows, dtype=torch.long, device=dev),
            **self._decode_tensors(decode_slots, decode_lens, window), decode_in_place=decode_in_place,
            retrieval=retrieval,
            retrieval_context=RetrievalContext(self.received, self.model.model.rotary_emb, bs, self.kv_tiers)
            if retrieval else None,
            slot_mapping_host=slot_mapping.tolist() if self.kv_tiers is not None else None, kv_tiers=self.kv_tiers,
            gather_buffers=self.gather_buffers)
        return (torch.tensor(ids, dtype=torch.long, device=dev), torch.tensor(positions, dtype=torch.long, device=dev),
                meta, torch.tensor(sample_rows, dtype=torch.long, device=dev))

    def _decode_tensors(self, slots: list[torch.Tensor], lens: list[int], window: int | None) -> dict:
        longest = max(lens, default=0)
        padded = torch.zeros(len(lens), longest, dtype=torch.long)
        for i, s in enumerate(slots):
            padded[i, :len(s)] = s
        k_pos = torch.arange(longest)[None, :]
        length = torch.tensor(lens, dtype=torch.long)[:, None]
        mask = k_pos < length
        if window is not None:
            mask &= k_pos > length - 1 - window
        mask = None if bool(mask.all()) else mask[:, None, None, :].to(self.device)
        return {"decode_slots": padded.to(self.device), "decode_mask": mask}
