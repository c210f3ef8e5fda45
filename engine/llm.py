"""`LLM`: offline batch generation over the engine's step loop."""
import itertools

from tqdm import tqdm

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams


class LLM:
    """`LLM(model_dir, **engine_options).generate(prompts, params)` (vLLM's offline API)."""

    def __init__(self, model: str | None = None, config: EngineConfig | None = None, **kwargs):
        if config is not None and (model is not None or kwargs):
            raise TypeError("pass either an EngineConfig or model and keyword options, not both")
        self.engine = LLMEngine(config or EngineConfig.from_kwargs(model=model, **kwargs))
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | list[str] | list[list[int]],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False, kv: dict | None = None,
                 mlp_sparsity: str | None = None) -> list[RequestOutput]:
        """Generate for each prompt (a string or a list of token ids); outputs come back in prompt order.
        `kv` overrides the engine's KV retrieval settings for these requests, e.g. {"policy": "actqkv"}, and
        `mlp_sparsity` their MLP sparsity, e.g. "relu" or "teal:0.5"."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("sampling_params must be one SamplingParams or one per prompt")
        order = []
        try:
            for prompt, p in zip(prompts, params):
                order.append(str(next(self._ids)))
                self.engine.add_request(order[-1], prompt, p, kv=kv, mlp_sparsity=mlp_sparsity)
        except Exception:
            for rid in order:
                self.engine.abort_request(rid)
            raise
        finished: dict[str, RequestOutput] = {}
        with tqdm(total=len(order), desc="generate", disable=not use_tqdm) as bar:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished:
                        finished[out.request_id] = out
                        bar.update(1)
        return [finished[rid] for rid in order]
