"""An engine holds no reference cycles: dropping the last reference frees it (and its KV pool) at once, without
waiting for the garbage collector."""
import gc
import weakref

from engine import LLM, AsyncLLM, EngineConfig, SamplingParams


def freed_without_gc(make_and_drop) -> bool:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        engine = make_and_drop()
        return engine() is None
    finally:
        if enabled:
            gc.enable()


def test_deleting_an_llm_frees_its_engine(checkpoint):
    def make_and_drop():
        llm = LLM(checkpoint("llama"), max_model_len=128, num_kv_blocks=20, block_size=8)
        llm.generate([[5, 6, 7]], SamplingParams(max_tokens=3))
        engine = weakref.ref(llm.engine)
        del llm
        return engine
    assert freed_without_gc(make_and_drop)


def test_a_shut_down_async_llm_frees_its_engine(checkpoint):
    def make_and_drop():
        llm = AsyncLLM(EngineConfig(model=checkpoint("llama"), max_model_len=128, num_kv_blocks=20, block_size=8))
        engine = weakref.ref(llm.engine)
        llm.shutdown()
        del llm
        return engine
    assert freed_without_gc(make_and_drop)
