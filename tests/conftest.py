import gc
import os

import pytest

# Triton decides at import whether kernels are compiled or interpreted: interpreted, its CUDA kernels also run on the
# CPU tensors of the tests (only where a test asks for them: engine.layers.sparse_gemv_triton.FORCE_INTERPRETER).
os.environ.setdefault("TRITON_INTERPRET", "1")

from engine.models.random_checkpoint import make_random_checkpoint  # noqa: E402

ARCHS = {
    "llama": dict(arch="llama"),
    "mistral": dict(arch="mistral", sliding_window=4096),
    "qwen2": dict(arch="qwen2", tie_word_embeddings=True),
    "llama3-rope": dict(arch="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
                        rope_theta=500000.0),
    "linear-rope": dict(arch="llama", rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "yarn-rope": dict(arch="qwen2", rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                  "original_max_position_embeddings": 256}),
    "mistral-window": dict(arch="mistral", sliding_window=16),
}


@pytest.fixture(autouse=True)
def free_finished_engines():
    """Engines that a test's failures or closures keep in reference cycles wait for the garbage collector, which
    runs by object counts, not bytes: unchecked, the 2 GiB KV pools of the suite's engines piled up to 16 GB (when
    engines themselves held a cycle). Collected when the process holds over 1 GiB (a collection costs ~0.2 s)."""
    yield
    if resident_bytes() > 1 << 30:
        gc.collect()


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:   # not Linux: always collect
        return 1 << 62


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(name) -> directory of a tiny random-weight model of that variant (built once per session)."""
    made = {}

    def get(name: str = "llama") -> str:
        if name not in made:
            made[name] = make_random_checkpoint(str(tmp_path_factory.mktemp(name)), **ARCHS[name])
        return made[name]
    return get


@pytest.fixture(scope="session")
def tiny_llm(checkpoint):
    """A shared engine over the tiny Llama (tests must leave it idle)."""
    from engine import LLM
    return LLM(checkpoint("llama"), max_model_len=512, num_kv_blocks=64, block_size=16)
