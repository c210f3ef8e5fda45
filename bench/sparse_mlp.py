"""Sparse-MLP decoding against dense, side by side in one run: MLP-block and end-to-end decode speedups.

    python -m bench.sparse_mlp --json bench/results/sparse_mlp.json

- `demo`: the bundled demo model with `relu` (exact), plus the task-accuracy change on passkey prompts.
- `tinyllama`: a random-weight 1.1B Llama shape (SiLU) with `teal` and `cats` thresholds calibrated for --target
  (random weights give Gaussian activations: enough for speed, not for quality).
Speedup = dense time ÷ sparse time. MLP-block times cycle through every layer's MLP (as a decode step does, so
weights come from memory, not cache); decode times are ms/token of batch-B greedy generation through the engine.
Batches above --mlp-sparse-max-batch (4) run dense by design: their speedup shows the fallback's cost.
"""
import argparse
import random
import time

import torch
from tqdm import tqdm

from bench.common import checkpoint, machine, write_json
from engine import LLM, SamplingParams
from engine.demo.tasks import passkey, score
from engine.layers.sparse_mlp import SparsePlan


ROUNDS = 3  # dense and sparse measured alternately this many times; the best of each is kept


def mlp_time(llm: LLM, plan: SparsePlan | None, batch: int, repeats: int = 5) -> float:
    """Seconds for one pass through every layer's MLP on `batch` random rows (best of `repeats`)."""
    runner = llm.engine.runner
    mlps = [layer.mlp for layer in runner.model.model.layers]
    x = torch.randn(batch, runner.model_config.hidden_size)  # RMS-normed hidden states: about unit scale
    torch.set_num_threads(runner.decode_threads)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 1):
            runner.sparsity.plan = plan
            start = time.perf_counter()
            for mlp in mlps:
                mlp(x)
            best = min(best, time.perf_counter() - start)
    runner.sparsity.plan = None
    return best


def decode_ms(llm: LLM, batch: int, sparsity: str, tokens: int = 16) -> float:
    prompts = [[5 + (i * 7 + j) % 200 for j in range(24)] for i in range(batch)]

    def run(n):
        start = time.perf_counter()
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), mlp_sparsity=sparsity)
        return time.perf_counter() - start
    run(2)
    return (run(tokens + 1) - run(1)) / tokens * 1e3


def passkey_accuracy(llm: LLM, sparsity: str, samples: int) -> float:
    tok = llm.get_tokenizer()
    rng = random.Random(77)
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    tasks = [passkey(rng, 512, rng.random(), count) for _ in range(samples)]
    outs = llm.generate([t.prompt for t in tasks], SamplingParams(temperature=0, max_tokens=8),
                        mlp_sparsity=sparsity)
    return sum(score(t, o.outputs[0].text) for t, o in zip(tasks, outs)) / samples


def plan_for(llm: LLM, spec: str, batch: int) -> SparsePlan:
    runner = llm.engine.runner
    mode, target = runner.check_sparsity(spec)
    thresholds = runner.calibration[mode][f"{target:g}"] if target is not None else None
    return SparsePlan(mode, thresholds, runner.mlp_max_density(mode, batch))


def measure(name: str, llm: LLM, specs: list[str], batches: list[int], bar, accuracy_samples: int) -> list[dict]:
    rows = []
    for spec in specs:
        mode, target = llm.engine.runner.check_sparsity(spec)
        delta = None
        if accuracy_samples:
            delta = passkey_accuracy(llm, spec, accuracy_samples) - passkey_accuracy(llm, "dense", accuracy_samples)
        for batch in batches:
            ctx = llm.engine.runner.sparsity
            ctx.zeros.clear()
            ctx.totals.clear()
            sparse_decode = decode_ms(llm, batch, spec)
            achieved = ctx.achieved()
            dense_decode = decode_ms(llm, batch, "dense")
            plan = plan_for(llm, spec, batch) if batch <= llm.engine.config.mlp_sparse_max_batch else None
            mlp_dense, mlp_sparse = mlp_time(llm, None, batch), mlp_time(llm, plan, batch)
            for _ in range(ROUNDS - 1):   # alternate, so that a burst of outside load hits both sides
                sparse_decode = min(sparse_decode, decode_ms(llm, batch, spec))
                dense_decode = min(dense_decode, decode_ms(llm, batch, "dense"))
                mlp_dense = min(mlp_dense, mlp_time(llm, None, batch))
                mlp_sparse = min(mlp_sparse, mlp_time(llm, plan, batch))
            rows.append({"model": name, "mode": mode, "target": target, "batch": batch,
                         "achieved_sparsity": sum(achieved) / len(achieved) if achieved else 0.0,
                         "achieved_per_layer": achieved, "mlp_speedup": mlp_dense / mlp_sparse,
                         "decode_speedup": dense_decode / sparse_decode, "dense_decode_ms": dense_decode,
                         "sparse_decode_ms": sparse_decode, "accuracy_delta": delta,
                         "max_density": llm.engine.runner.mlp_max_density(mode, batch)})
            bar.update(1)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,tinyllama")
    parser.add_argument("--demo-model", default=None, help="demo checkpoint directory (default: the bundled one)")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--accuracy-samples", type=int, default=20)
    parser.add_argument("--calibration-tokens", type=int, default=2000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    models = args.models.split(",")
    rows = []
    with tqdm(total=len(batches) * (("demo" in models) + 2 * ("tinyllama" in models)), desc="sparse_mlp") as bar:
        if "demo" in models:
            llm = LLM(args.demo_model, max_model_len=1024, enable_prefix_caching=False)
            rows += measure("demo", llm, ["relu"], batches, bar, args.accuracy_samples)
            del llm
        if "tinyllama" in models:
            from engine.calibrate import calibrate
            path = checkpoint("tinyllama")
            calibrate(path, args.target, tokens=args.calibration_tokens)
            llm = LLM(path, max_model_len=512, kv_cache_memory="512MiB", enable_prefix_caching=False)
            specs = [f"teal:{args.target:g}", f"cats:{args.target:g}"]
            rows += measure("tinyllama", llm, specs, batches, bar, 0)
    print("| model | mode | batch | achieved sparsity | sparse kernels up to density | MLP speedup | decode speedup "
          "| accuracy Δ |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        delta = "–" if r["accuracy_delta"] is None else f"{r['accuracy_delta']:+.2f}"
        mode = r["mode"] + (f":{r['target']:g}" if r["target"] is not None else "")
        print(f"| {r['model']} | {mode} | {r['batch']} | {r['achieved_sparsity']:.2f} | {r['max_density']:.2f} | "
              f"{r['mlp_speedup']:.2f}× | {r['decode_speedup']:.2f}× | {delta} |")
    write_json(args.json, {"machine": machine(), "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
