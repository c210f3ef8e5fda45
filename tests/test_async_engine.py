"""AsyncLLM: concurrent streams, abort on cancel, validation before the first yield."""
import asyncio

import pytest

from engine import AsyncLLM, EngineConfig, SamplingParams, SamplingParamsError


@pytest.fixture(scope="module")
def async_llm(checkpoint):
    llm = AsyncLLM(EngineConfig(model=checkpoint("llama"), max_model_len=256, num_kv_blocks=40, block_size=8))
    yield llm
    llm.shutdown()


async def collect(llm, prompt, params, rid):
    outs = [o async for o in llm.generate(prompt, params, rid)]
    return outs


def test_concurrent_requests_match_offline_results(async_llm, checkpoint):
    from engine import LLM
    params = [SamplingParams(max_tokens=12, seed=i, ignore_eos=True) for i in range(6)]

    async def main():
        return await asyncio.gather(*(collect(async_llm, f"prompt {i}", p, f"c{i}") for i, p in enumerate(params)))
    streams = asyncio.run(main())
    offline = LLM(checkpoint("llama"), max_model_len=256, num_kv_blocks=40, block_size=8)
    expected = offline.generate([f"prompt {i}" for i in range(6)], params)
    for outs, exp in zip(streams, expected):
        assert outs[-1].finished and outs[-1].outputs[0].token_ids == exp.outputs[0].token_ids
        lengths = [len(o.outputs[0].token_ids) for o in outs]
        assert lengths == sorted(lengths) and lengths[-1] == 12


def test_cancelling_a_stream_aborts_and_frees_blocks(async_llm):
    async def main():
        agen = async_llm.generate("abort me", SamplingParams(max_tokens=200, ignore_eos=True), "ab")
        async for _ in agen:
            break
        await agen.aclose()
        for _ in range(50):
            await asyncio.sleep(0.05)
            if async_llm.stats.num_running == 0 and not async_llm.engine.has_unfinished_requests():
                break
    asyncio.run(main())
    assert async_llm.engine.block_manager.num_free_blocks == 40
    assert async_llm.stats.kv_cache_usage == 0.0


def test_invalid_request_raises_before_streaming(async_llm):
    async def main():
        with pytest.raises(SamplingParamsError) as err:
            await collect(async_llm, [1] * 300, SamplingParams(max_tokens=10), "too-long")
        assert err.value.param == "input_tokens"
    asyncio.run(main())
    assert async_llm.is_healthy
