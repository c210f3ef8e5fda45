"""The synchronous engine: requests in, one `step()` at a time, outputs out."""
import logging
import time
from dataclasses import replace

import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.model_runner import ModelRunner
from engine.models.model_config import ModelConfig, ModelLoadError
from engine.outputs import RequestOutput
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams, SamplingParamsError
from engine.scheduler import Scheduler
from engine.sequence import Request, Sequence
from engine.stop_checker import append_and_check_stop
from engine.tokenizer import load_tokenizer

log = logging.getLogger("actserve")


class ContextLengthError(SamplingParamsError):
    """The prompt plus the requested output does not fit in the model's context."""


def context_length_message(max_model_len: int, max_tokens: int, prompt_len: int) -> str:
    return (f"This model's maximum context length is {max_model_len} tokens. However, you requested {max_tokens} "
            f"output tokens and your prompt contains at least {prompt_len} input tokens, for a total of at least "
            f"{prompt_len + max_tokens} tokens. Please reduce the length of the input prompt or the number of "
            f"requested output tokens. (parameter=input_tokens, value={prompt_len})")


class LLMEngine:
    def __init__(self, config: EngineConfig):
        if config.model is None:
            from engine.demo import bundled_model_dir
            config.model = bundled_model_dir()
        self.config = config
        self.model_config = ModelConfig.from_dir(config.model)
        self.tokenizer = load_tokenizer(config.tokenizer or config.model)
        self.runner = ModelRunner(config, self.model_config)
        self.max_model_len = config.max_model_len or self.model_config.max_position_embeddings
        pool_tokens = self.runner.num_blocks * config.block_size
        if pool_tokens < self.max_model_len:
            raise ModelLoadError(
                f"the KV cache holds {pool_tokens} tokens, fewer than max_model_len={self.max_model_len}: "
                f"raise --kv-cache-memory or lower --max-model-len")
        log.info("KV cache: %d tokens, max concurrency %.2fx for %d-token requests",
                 pool_tokens, pool_tokens / self.max_model_len, self.max_model_len)
        self.runner.check_sparsity(config.mlp_sparsity)
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.eos_token_ids = self._eos_token_ids()
        self.vocab_size = self.model_config.vocab_size
        tokenizer = self.tokenizer   # not `self` in the lambda: no reference cycle, `del llm` frees the engine
        self.sampler = Sampler(self.vocab_size, self.eos_token_ids,
                               lambda t: tokenizer.decode([t], skip_special_tokens=False))
        self.requests: dict[str, Request] = {}
        self._next_seq_id = 0
        self._seed_source = torch.Generator().manual_seed(config.seed)
        self.last_step_tokens = 0

    def _eos_token_ids(self) -> list[int]:
        ids = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def tokenize(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    arrival_time: float | None = None, kv: dict | None = None,
                    mlp_sparsity: str | None = None) -> Request:
        """Validate and queue a request; raise `SamplingParamsError` (naming the parameter) if it cannot run.
        `kv` overrides the engine's KV retrieval settings for this request (e.g. {"policy": "actqkv"}; "question": text
        gives ActQKV's question term) and
        `mlp_sparsity` its MLP sparsity (e.g. "teal:0.5")."""
        if request_id in self.requests:
            raise SamplingParamsError("request_id", f"request id {request_id!r} is already in use")
        request = self.make_request(request_id, prompt, params, arrival_time, kv, mlp_sparsity)
        self.enqueue(request)
        return request

    def make_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                     arrival_time: float | None = None, kv: dict | None = None,
                     mlp_sparsity: str | None = None) -> Request:
        """Tokenize and validate without touching the queues (safe to call from another thread)."""
        sparsity = self.runner.check_sparsity(mlp_sparsity or self.config.mlp_sparsity)
        kv = dict(kv or {})
        question = kv.pop("question", None)
        if question:
            kv["question_ids"] = tuple(self.tokenizer.encode(question, add_special_tokens=False))
        try:
            kv_config = self.config.kv_config(**kv)
        except TypeError as exc:
            raise SamplingParamsError("kv", f"unknown KV retrieval option: {exc}") from exc
        kv_config.validate(self.config.block_size)
        problem = self.runner.offload_problem(kv_config)
        if problem:
            raise SamplingParamsError("kv_policy" if kv_config.policy == "full" else "kv_budget", problem)
        text = prompt if isinstance(prompt, str) else None
        ids = self.tokenize(prompt) if text is not None else list(prompt)
        if not ids:
            raise SamplingParamsError("prompt", "The prompt must be non-empty.")
        if any(not isinstance(t, int) or t < 0 or t >= self.vocab_size for t in ids):
            raise SamplingParamsError("prompt", f"Token ids must be integers in [0, {self.vocab_size}).")
        params.validate(self.vocab_size)
        room = self.max_model_len - len(ids)
        unset = params.max_tokens is None   # the rest of the context: there must be some
        if unset:
            params = replace(params, max_tokens=max(room, 0))
        if len(ids) + params.max_tokens > self.max_model_len or (unset and room <= 0):
            raise ContextLengthError("input_tokens",
                                     context_length_message(self.max_model_len, params.max_tokens, len(ids)))
        return Request(request_id, text, ids, params, arrival_time, kv_config, sparsity)

    def enqueue(self, request: Request):
        """Create the request's sequences and hand them to the scheduler."""
        params = request.params
        for index in range(params.n):
            seed = params.seed + index if params.seed is not None else \
                int(torch.randint(0, 2**62, (1,), generator=self._seed_source))
            detok = IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids, params.skip_special_tokens)
            seq = Sequence(self._next_seq_id, request, index, torch.Generator().manual_seed(seed), detok)
            self._next_seq_id += 1
            request.seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request.request_id] = request

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now: its blocks return to the pool and its sequences finish with "abort"."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq)
                self.runner.release(seq)
                seq.finish("abort")
        request.finished_time = time.monotonic()
        return request.to_output()

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, sample, apply stop rules; return outputs of the requests that moved."""
        batch = self.scheduler.schedule()
        self.last_step_tokens = batch.num_tokens
        if not batch.scheduled:
            return []
        now = time.monotonic()
        for item in batch.scheduled:
            if item.seq.request.scheduled_time is None:
                item.seq.request.scheduled_time = now
        logits, prompt_logits = self.runner.execute(batch.scheduled)
        completing = [s.seq for s in batch.scheduled if s.completes]
        for item in batch.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.register(item.seq)
        for seq, first, rows in prompt_logits:
            self.sampler.record_prompt_logprobs(rows, seq, first)
        sampling = [i for i, seq in enumerate(completing) if seq.params.max_tokens != 0]
        tokens = iter(self.sampler(logits[sampling], [completing[i] for i in sampling]) if sampling else [])
        now = time.monotonic()
        touched: dict[str, Request] = {}
        for seq in completing:
            if seq.params.max_tokens == 0:   # the prompt only (its logprobs): done once it is prefilled
                seq.finish("length")
            else:
                token = next(tokens)
                seq.token_ids.append(token)
                append_and_check_stop(seq, seq.detokenizer.add(token), self.eos_token_ids, self.max_model_len)
                seq.request.first_token_time = seq.request.first_token_time or now
                seq.request.last_token_time = now
            if seq.is_finished:
                self.scheduler.finish(seq)
                self.runner.release(seq)
            touched[seq.request.request_id] = seq.request
        outputs = []
        for request in touched.values():
            if request.finished:
                request.finished_time = now
                self.requests.pop(request.request_id, None)
            outputs.append(request.to_output())
        return outputs
