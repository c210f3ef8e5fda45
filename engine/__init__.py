"""actserve's serving core: `LLM` for offline use, `AsyncLLM` for servers."""
from engine.config import EngineConfig
from engine.llm import LLM
from engine.outputs import CompletionOutput, Logprob, RequestOutput
from engine.sampling_params import SamplingParams, SamplingParamsError

__all__ = ["LLM", "AsyncLLM", "EngineConfig", "SamplingParams", "SamplingParamsError", "RequestOutput",
           "CompletionOutput", "Logprob"]


def __getattr__(name):
    if name == "AsyncLLM":
        from engine.async_engine import AsyncLLM
        return AsyncLLM
    raise AttributeError(name)
