"""KV retrieval: block summaries, selection policies (full, streaming, infllm, quest, actqkv), windowed attention."""
from engine.kv.config import KVConfig, POLICIES

__all__ = ["KVConfig", "POLICIES"]
