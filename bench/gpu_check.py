"""One prepared check for a session that has the GPU machine: correctness against the CPU path, then timings.

    python -m bench.gpu_check --json bench/results/gpu_check.json            # on the GPU machine (about 5 minutes)
    python -m bench.gpu_check --device cpu --small                           # a dry run of the same code here
    python -m bench.gpu_check --sections kernels,policies --json F           # a subset (the JSON is rewritten
                                                                             # after each section)

1. Sparse-MLP Triton kernels on the device against the CPU kernels (max abs diff), and their time against a dense
   `F.linear` at 50% density (batch 1/2/4) and 10% (batch 1/4), on the 1.1B shape's MLP matrices; and the union
   density up to which the engine takes the sparse kernels there, as it measures it (teal, cats).
2. Every KV policy through the engine on the device against the CPU engine (fp32 both): greedy tokens equal; the
   retrieval policies also with KV tiers (`kv_offload`, a device cache small enough to evict); then prompts whose
   blocks come from the prefix cache, and prompt logprobs, against the CPU.
3. Prefill seconds and decode ms/token on the device, `full` vs `actqkv` (budget 2048, bounded) at the given
   contexts, random demo-shape weights (`decode`) and the ~1.1B TinyLlama shape (`decode_1b`; speed only); and
   `actqkv` with the pool offloaded to pinned host memory.
4. Host synchronisations inside ActQKV's windowed attention on the device (prefill windows and a decode step,
   counted by CUDA's sync debug mode): the aim is none.
5. `profile`: where a decode step's time goes (Python functions, host and device ops), full and actqkv, at the
   largest `decode` context (on an H200 a demo-shape step took ~40 ms, nearly all of it host work).
"""
import argparse
import gc
import time
import traceback
import warnings

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench.common import machine, write_json
from engine import LLM, SamplingParams
from engine.layers import sparse_gemv_triton
from engine.layers.mlp import GatedMLP
from engine.layers.sparse_crossover import measure_crossover
from engine.layers.sparse_mlp import SparsityContext, bag_sum


def synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 20) -> float:
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def check_kernels(device: str, hidden: int, inter: int) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    w_down = torch.randn(hidden, inter)                              # down_proj [out, in]
    w_up = torch.randn(inter, hidden)
    for batch, density in ((1, 0.5), (2, 0.5), (4, 0.5), (1, 0.1), (4, 0.1)):
        x = torch.randn(batch, inter)
        idx = torch.randperm(inter)[: int(inter * density)].sort().values
        row = {"batch": batch, "density": density, "device": device}
        if sparse_gemv_triton.available(torch.empty(0, device=device)):
            ref_sum = bag_sum(idx, w_down.t().contiguous(), x[:, idx].contiguous())
            d_idx, d_wt, d_x = idx.to(device), w_down.t().contiguous().to(device), x[:, idx].contiguous().to(device)
            got = sparse_gemv_triton.gather_rows_sum(d_idx, d_wt, d_x)
            row["rows_sum_max_diff"] = (got.cpu() - ref_sum).abs().max().item()
            torch.manual_seed(1)
            h = torch.randn(batch, hidden)
            row["rows_dot_max_diff"] = (sparse_gemv_triton.gather_rows_dot(d_idx, w_up.to(device), h.to(device))
                                        .cpu() - h @ w_up[idx].T).abs().max().item()
            d_dense, d_xfull = w_down.to(device), x.to(device)
            row["dense_ms"] = timed(lambda: F.linear(d_xfull, d_dense), device) * 1e3
            row["sparse_ms"] = timed(lambda: sparse_gemv_triton.gather_rows_sum(d_idx, d_wt, d_x), device) * 1e3
        else:
            row["skipped"] = "Triton kernels do not serve this device"
        rows.append(row)
    return rows + measured_crossovers(device, hidden, inter)


def measured_crossovers(device: str, hidden: int, inter: int) -> list[dict]:
    """The union density up to which the engine takes the sparse kernels, as the model runner measures it on this
    device (8 MLPs of the given shape, random weights)."""
    torch.manual_seed(0)
    mlps = [GatedMLP(hidden, inter, "silu").requires_grad_(False).to(device) for _ in range(8)]
    for mlp in mlps:
        mlp.sparsity = SparsityContext()
    return [{"mode": mode, "device": device, "hidden": hidden, "intermediate": inter,
             "crossover_density": measure_crossover(mlps, mode)} for mode in ("teal", "cats")]


def check_policies(device: str, path: str) -> list[dict]:
    prompts = [[3 + (i * 37 + j * 11) % 370 for i in range(600 + 50 * j)] for j in range(2)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    small = dict(kv_budget=192, kv_sink=32, kv_local=64, kv_window=48, block_size=16, max_model_len=1024,
                 num_kv_blocks=160, max_num_batched_tokens=256, dtype="float32")
    engines = {d: LLM(path, device=d, **small) for d in ("cpu", device)}
    # 56 blocks: one per-head window needs 50 here, two ~40-block prompts overflow it
    engines["offload"] = LLM(path, device=device, kv_offload=True, kv_device_cache_blocks=56, kv_policy="actqkv",
                             **{**small, "max_num_seqs": 4})
    rows = []
    runs = [("full", {}), ("streaming", {}), ("infllm", {}), ("quest", {}), ("actqkv", {"per_head": True}),
            ("actqkv", {"per_head": False}), ("actqkv", {"positions": "bounded"}),
            ("actqkv", {"positions": "compressed"})]
    for policy, knobs in runs:
        outs = {d: [o.outputs[0].token_ids for o in llm.generate(prompts, params, kv={"policy": policy, **knobs})]
                for d, llm in engines.items() if d != "offload" or policy != "full"}
        rows.append({"policy": policy, **knobs, "device": device, "tokens_equal_cpu": outs["cpu"] == outs[device],
                     "offloaded_tokens_equal_cpu": outs["cpu"] == outs["offload"] if "offload" in outs else None})
    hits, misses = engines["offload"].engine.runner.device_cache_counts()
    rows.append({"device_cache_hits": hits, "device_cache_misses": misses})
    rows.append(check_prefix_cache_and_prompt_logprobs(engines["cpu"], engines[device], prompts, params))
    return rows


def check_prefix_cache_and_prompt_logprobs(cpu: LLM, dev: LLM, prompts, params) -> dict:
    """The prompts twice under full attention (the second time their blocks come from the prefix cache, on both
    devices: the policy sweep before has reused the blocks that the first `full` run cached), and their prompt
    logprobs, on the device against the CPU."""
    for llm in (cpu, dev):
        llm.generate(prompts, params, kv={"policy": "full"})
    before = dev.engine.scheduler.prefix_hit_tokens
    again = {name: [o.outputs[0].token_ids for o in llm.generate(prompts, params, kv={"policy": "full"})]
             for name, llm in (("cpu", cpu), ("device", dev))}
    scoring = SamplingParams(max_tokens=0, prompt_logprobs=2)
    scored = {name: llm.generate(prompts[:1], scoring)[0].prompt_logprobs
              for name, llm in (("cpu", cpu), ("device", dev))}
    diff = max(abs(a[t].logprob - b[t].logprob) for a, b, t in zip(scored["cpu"][1:], scored["device"][1:],
                                                                  prompts[0][1:]))
    return {"prefix_cache_tokens_equal_cpu": again["cpu"] == again["device"],
            "prefix_cache_hit_tokens": dev.engine.scheduler.prefix_hit_tokens - before,
            "prompt_logprobs_max_abs_diff": diff}


def _add_request(engine, request_id: str, n: int, policy: str, max_tokens: int):
    """A synthetic n-token prompt under `policy` (budget 2048, bounded positions), greedy, never stopping early."""
    prompt = [5 + (i * 7) % 3000 for i in range(n)]
    return engine.add_request(request_id, prompt, SamplingParams(temperature=0, max_tokens=max_tokens,
                                                                  ignore_eos=True),
                              kv={"policy": policy, "budget": 2048, "positions": "bounded"})


def _run_until(engine, request, tokens: int):
    """Step the engine until `request` has generated `tokens` tokens."""
    while request.seqs[0].num_output_tokens < tokens:
        engine.step()


def decode_times(device: str, path: str, contexts: list[int], shape: str) -> list[dict]:
    llm = LLM(path, device=device, max_model_len=max(contexts) + 64, kv_cache_memory="8GiB",
              max_num_batched_tokens=4096, enable_prefix_caching=False)
    offloaded = LLM(path, device=device, max_model_len=max(contexts) + 64, kv_cache_memory="8GiB",
                    max_num_batched_tokens=4096, max_num_seqs=8, kv_policy="actqkv", kv_offload=True)
    rows = []
    for n in contexts:
        row = {"shape": shape, "context_len": n, "device": device}
        for label in ("full", "actqkv", "actqkv_offload"):
            engine = (offloaded if label == "actqkv_offload" else llm).engine
            policy = label.removesuffix("_offload")
            request = _add_request(engine, f"{policy}-{n}", n, policy, max_tokens=33)
            synchronize(device)
            start = time.perf_counter()
            _run_until(engine, request, 1)
            synchronize(device)
            row[f"{label}_prefill_s"] = time.perf_counter() - start
            start = time.perf_counter()
            while engine.has_unfinished_requests():
                engine.step()
            synchronize(device)
            row[f"{label}_decode_ms"] = (time.perf_counter() - start) / 32 * 1e3
        row["actqkv_speedup"] = row["full_decode_ms"] / row["actqkv_decode_ms"]
        row["actqkv_prefill_speedup"] = row["full_prefill_s"] / row["actqkv_prefill_s"]
        rows.append(row)
    return rows


def profile_decode(device: str, path: str, context: int, steps: int = 8) -> list[dict]:
    """Where a batch-1 decode step's time goes at `context` tokens, full and actqkv: the Python functions with the
    most cumulative time (cProfile) and the torch ops with the most self time on the host and on the device."""
    import cProfile
    import pstats
    from torch.profiler import ProfilerActivity, profile
    llm = LLM(path, device=device, max_model_len=context + 64, kv_cache_memory="8GiB", max_num_batched_tokens=4096,
              enable_prefix_caching=False)
    engine, rows = llm.engine, []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    for policy in ("full", "actqkv"):
        request = _add_request(engine, f"profile-{policy}", context, policy, max_tokens=2 * steps + 4)
        _run_until(engine, request, 4)
        synchronize(device)
        python = cProfile.Profile()
        python.enable()
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        synchronize(device)
        step_ms = (time.perf_counter() - start) / steps * 1e3
        python.disable()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                engine.step()
            synchronize(device)
        while engine.has_unfinished_requests():
            engine.step()
        stats = pstats.Stats(python)
        top_python = sorted(((v[3] / steps * 1e3, f"{k[0].split('/')[-1]}:{k[1]}({k[2]})")
                             for k, v in stats.stats.items()), reverse=True)[:25]
        ops = prof.key_averages()
        by_host = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        by_device = sorted(ops, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)[:10]
        rows.append({"policy": policy, "context_len": context, "step_ms": step_ms,
                     "python_cumulative_ms_per_step": [[round(ms, 3), name] for ms, name in top_python],
                     "ops_host_self_ms_per_step": [[round(e.self_cpu_time_total / steps / 1e3, 3), e.key,
                                                    e.count // steps] for e in by_host],
                     "ops_device_self_ms_per_step": [[round(getattr(e, "self_device_time_total", 0) / steps / 1e3, 3),
                                                      e.key] for e in by_device]})
    return rows


def count_host_syncs(device: str) -> list[dict]:
    from engine.kv.config import KVConfig
    from engine.kv.retrieval_attention import RetrievalContext, RetrievalSlice, retrieval_attention
    from engine.kv.state import SequenceKVState
    from engine.kv.summaries import received_attention
    from engine.layers.rotary import RotaryEmbedding
    from engine.models.model_config import ModelConfig
    if not device.startswith("cuda"):
        return [{"skipped": "sync debug mode needs CUDA"}]
    torch.manual_seed(0)
    bs, n, heads, kv_heads, dim, pool = 32, 4096, 8, 4, 64, 160
    blocks = torch.randperm(pool, device=device)[: n // bs]
    slots = (blocks[:, None] * bs + torch.arange(bs, device=device)).flatten()
    k_flat, v_flat = (torch.randn(pool * bs, kv_heads, dim, device=device) for _ in range(2))
    q = torch.randn(n, heads, dim, device=device)
    cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": heads * dim,
                                 "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": heads,
                                 "num_key_value_heads": kv_heads})
    rows = []
    for positions in ("original", "bounded", "compressed"):
        kv = KVConfig(policy="actqkv", budget=1024, positions=positions)
        ctx = RetrievalContext(received_attention(1, pool * bs, kv_heads, device), RotaryEmbedding(cfg, 2 * n), bs)
        state = SequenceKVState(kv, 1, torch.device(device))
        retrieval_attention(q[:2048], k_flat, v_flat, RetrievalSlice(0, 2048, 0, slots[:2048], blocks, state), 0,
                            ctx, dim ** -0.5)   # warm-up: statistics, summaries
        synchronize(device)
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            retrieval_attention(q[2048:-1], k_flat, v_flat, RetrievalSlice(2048, n - 2049, 2048, slots[:-1], blocks,
                                                                            state), 0, ctx, dim ** -0.5)
            retrieval_attention(q[-1:], k_flat, v_flat, RetrievalSlice(n - 1, 1, n - 1, slots, blocks, state), 0,
                                ctx, dim ** -0.5)
        torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        torch.cuda.set_sync_debug_mode("error")   # again, stopping at the first sync to see where it is
        try:
            retrieval_attention(q[-1:], k_flat, v_flat, RetrievalSlice(n - 1, 1, n - 1, slots, blocks, state), 0,
                                ctx, dim ** -0.5)
            where = None
        except RuntimeError:
            where = [line.strip() for line in traceback.format_exc().splitlines() if "engine/" in line][-3:]
        torch.cuda.set_sync_debug_mode(0)
        rows.append({"positions": positions, "host_syncs": len(syncs), "first_decode_sync_at": where})
    return rows


SECTIONS = ("kernels", "policies", "host_syncs", "decode", "decode_1b", "profile")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small sizes: a dry run on the CPU")
    parser.add_argument("--contexts", default="8192,32768", help="contexts of `decode` (demo shape)")
    parser.add_argument("--contexts-1b", default="32768", help="contexts of `decode_1b` (TinyLlama shape)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a subset of {','.join(SECTIONS)}")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from bench.common import SHAPES, checkpoint
    hidden, inter = (256, 512) if args.small else (SHAPES["tinyllama"]["hidden_size"],
                                                   SHAPES["tinyllama"]["intermediate_size"])
    contexts = [1024] if args.small else [int(c) for c in args.contexts.split(",")]
    contexts_1b = [int(c) for c in args.contexts_1b.split(",")]
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    runs = {"kernels": lambda: check_kernels(args.device, hidden, inter),
            "policies": lambda: check_policies(args.device, checkpoint("tiny")),
            "host_syncs": lambda: count_host_syncs(args.device),
            "decode": lambda: decode_times(args.device, checkpoint("tiny"), contexts, "tiny"),
            "decode_1b": lambda: decode_times(args.device, checkpoint("tinyllama"), contexts_1b, "tinyllama"),
            "profile": lambda: profile_decode(args.device, checkpoint("tiny"), contexts[-1])}
    results = {"machine": machine(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    for section in tqdm(sections, desc="gpu check"):
        start = time.perf_counter()
        results[section] = runs[section]()
        results[f"{section}_s"] = round(time.perf_counter() - start, 1)
        for row in results[section]:
            print(section, row, flush=True)
        write_json(args.json, results)   # after each section: a run cut short keeps what it measured
        gc.collect()   # each section's engines hold their KV pools (GiBs) until collected
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
