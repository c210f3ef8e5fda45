"""Long-context accuracy and speed per KV policy and budget, on the synthetic tasks.

    python -m bench.longctx --tasks passkey,multikey --lengths 2048 --policies full,streaming,infllm,quest,actqkv \
        --budgets 1024 --samples 50 --json bench/results/longctx.json --plot bench/results/longctx.png

Fresh random instances (seeded by --seed, disjoint from the training seed) with needle depths spread evenly over
five buckets, greedy decoding through the engine. Per (task, length, policy, budget): accuracy (also by depth
bucket), the wrong number answers by kind (another number of the prompt, one not in it, none) and by the place of
their first wrong digit, batch-1 prefill seconds and decode ms/token on one instance, and the KV bytes resident per
request.
`full` ignores the budget. --long adds 64k to the default lengths. The policy `actqkv+question` is ActQKV with
the task's question given (its question term).
"""
import argparse
import random
import re
import time
from collections import Counter, defaultdict

from tqdm import tqdm

from bench.common import machine, write_json
from engine import LLM, SamplingParams
from engine.demo.tasks import GENERATORS, NUMBER_TASKS, first_int, score

BUCKETS = 5


def make_samples(tokenizer, task: str, length: int, n: int, seed: int):
    rng = random.Random(f"{seed}-{task}-{length}")
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    return [GENERATORS[task](rng, length, (i % BUCKETS + rng.random()) / BUCKETS, count) for i in range(n)]


def needle_block(tokenizer, prompt_ids: list[int], reference: str, block_size: int) -> int | None:
    """Logical KV block holding the first occurrence of the answer in the prompt (None if not found)."""
    for text in (reference, " " + reference):
        needle = tokenizer.encode(text, add_special_tokens=False)
        for i in range(len(prompt_ids) - len(needle) + 1):
            if prompt_ids[i:i + len(needle)] == needle:
                return i // block_size
    return None


def request_kv(kv: dict, sample, trace: bool = True) -> dict:
    """A run's KV settings for one sample: the `actqkv+question` label is ActQKV given the sample's question."""
    if kv["policy"] == "actqkv+question":
        return {**kv, "policy": "actqkv", "question": sample.question, "trace": trace}
    return {**kv, "trace": trace}


def wrong_answer(sample, output: str) -> str | None:
    """Why a number answer (passkey, multikey) is wrong: `in_prompt` (another number of the context, e.g. a
    distractor's value), `not_in_prompt` (made up or mixed from several) or `no_number`; None if right or not a
    number task."""
    if sample.task not in NUMBER_TASKS or score(sample, output):
        return None
    answer = first_int(output)
    if answer is None:
        return "no_number"
    return "in_prompt" if re.search(rf"(?<!\d){answer}(?!\d)", sample.prompt) else "not_in_prompt"


def first_wrong_digit(sample, output: str) -> int | None:
    """Where a wrong number answer (with a number) leaves the right one: the 1-based place of its first wrong
    digit (one past the shorter of the two if one starts the other). None if right, without a number, or not a
    number task."""
    if wrong_answer(sample, output) in (None, "no_number"):
        return None
    answer, right = first_int(output), sample.references[0]
    return next((i + 1 for i, (a, b) in enumerate(zip(answer, right)) if a != b), min(len(answer), len(right)) + 1)


def accuracy(llm: LLM, samples, kv: dict, batch: int, bar) -> tuple[float, list, list, list, dict]:
    """Accuracy, accuracy by depth bucket, needle-block recall per layer at the question (the last prefill
    window: did that layer attend the block holding the answer?), each sample's score (for paired tests) and the
    count of wrong number answers by kind (`wrong_answer`) and by the place of their first wrong digit
    (`first_wrong_digit`, under "first_wrong_digit")."""
    engine, tok = llm.engine, llm.get_tokenizer()
    by_id, hits, wrong, places = {}, [], Counter(), Counter()
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        requests = {f"acc-{start + i}": (s, engine.add_request(f"acc-{start + i}", s.prompt, SamplingParams(
            temperature=0, max_tokens=s.max_tokens), kv=request_kv(kv, s))) for i, s in enumerate(chunk)}
        recorded = set()
        while engine.has_unfinished_requests():
            outputs = engine.step()
            for rid, (sample, request) in requests.items():
                seq = request.seqs[0]
                state = engine.runner.kv_states.get(seq.seq_id)
                if rid in recorded or seq.num_output_tokens < 1:
                    continue
                recorded.add(rid)
                block = needle_block(tok, request.prompt_token_ids, sample.references[0], engine.config.block_size)
                if state is not None and block is not None:
                    hits.append([state.attends_block(layer, block, engine.config.block_size)
                                 for layer in range(len(state.last_attended))])
            for out in outputs:
                if out.finished:
                    sample, text = requests[out.request_id][0], out.outputs[0].text
                    by_id[out.request_id] = score(sample, text)
                    wrong.update(filter(None, [wrong_answer(sample, text)]))
                    places.update(filter(None, [first_wrong_digit(sample, text)]))
                    bar.update(1)
    scores = [by_id[f"acc-{i}"] for i in range(len(samples))]
    buckets = defaultdict(list)
    for s, sc in zip(samples, scores):
        buckets[min(BUCKETS - 1, int(s.depth * BUCKETS))].append(sc)
    recall = [sum(h[layer] for h in hits) / len(hits) for layer in range(len(hits[0]))] if hits else []
    by_depth = [sum(v) / len(v) if v else None for _, v in sorted(buckets.items())]
    if places:
        wrong["first_wrong_digit"] = {str(place): n for place, n in sorted(places.items())}
    return sum(scores) / len(scores), by_depth, recall, scores, dict(wrong)


def timing(llm: LLM, prompt: str, kv: dict, tokens: int = 16) -> tuple[float, float]:
    """Batch-1 prefill seconds (prompt to first token) and decode ms/token over the next `tokens` steps."""
    engine = llm.engine
    request = engine.add_request("timing", prompt, SamplingParams(temperature=0, max_tokens=tokens + 1,
                                                                  ignore_eos=True), kv=kv)
    seq = request.seqs[0]
    start = time.perf_counter()
    while seq.num_output_tokens < 1:
        engine.step()
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    return prefill, (time.perf_counter() - start) / tokens * 1e3


def resident_kv_bytes(llm: LLM, tokens: int) -> int:
    """KV bytes one request keeps: on the CPU every block stays in RAM (one tier), whatever the policy."""
    runner = llm.engine.runner
    return -(-tokens // runner.block_size) * runner.bytes_per_block()


def plot(rows: list[dict], path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for (task, policy, budget), group in _group(rows).items():
        xs = [r["context_len"] for r in group]
        label = f"{task} {policy}" + ("" if policy == "full" else f" {budget}")
        acc_ax.plot(xs, [r["accuracy"] for r in group], marker="o", label=label)
        if group[0].get("decode_ms_per_token") is not None:
            time_ax.plot(xs, [r["decode_ms_per_token"] for r in group], marker="o", label=label)
    for ax, title in ((acc_ax, "accuracy"), (time_ax, "decode ms/token")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context tokens")
        ax.set_title(title)
    acc_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def wrong_cells(row: dict) -> str:
    if row["task"] not in NUMBER_TASKS or row["accuracy"] is None:
        return "–"
    kinds = " / ".join(str(row["wrong_answers"].get(k, 0)) for k in ("in_prompt", "not_in_prompt", "no_number"))
    places = row["wrong_answers"].get("first_wrong_digit")
    return kinds + ("; first wrong digit " + ", ".join(f"{p}: {n}" for p, n in places.items()) if places else "")


def _group(rows):
    groups = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["context_len"]):
        groups[(r["task"], r["policy"], r["budget"])].append(r)
    return groups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    parser.add_argument("--tasks", default="passkey,multikey,kv_retrieval,variable_tracking,common_words")
    parser.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    parser.add_argument("--long", action="store_true", help="also 65536")
    parser.add_argument("--policies", default="full,streaming,infllm,quest,actqkv")
    parser.add_argument("--budgets", default="1024,2048,4096")
    parser.add_argument("--positions", default="original")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="requests submitted together")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--speed-only", action="store_true",
                        help="timing on one instance, no accuracy (random-weight models such as the 1.1B shape)")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    args = parser.parse_args(argv)
    tasks, policies = args.tasks.split(","), args.policies.split(",")
    lengths = [int(x) for x in args.lengths.split(",")] + ([65536] if args.long else [])
    budgets = [int(x) for x in args.budgets.split(",")]
    runs = [(p, b) for p in policies for b in ([budgets[0]] if p == "full" else budgets)]
    llm = LLM(args.model, max_model_len=max(lengths) + 256, max_num_batched_tokens=2048,
              kv_cache_memory="4GiB", prefill_threads=args.threads, decode_threads=args.threads,
              enable_prefix_caching=False)   # each policy times the same prompts
    tok = llm.get_tokenizer()
    rows = []
    with tqdm(total=len(tasks) * len(lengths) * len(runs) * args.samples, desc="longctx") as bar:
        for task in tasks:
            for length in lengths:
                samples = make_samples(tok, task, length, args.samples, args.seed)
                for policy, budget in runs:
                    kv = {"policy": policy, "budget": budget, "positions": args.positions}
                    acc, by_depth, recall, scores, wrong = (None, [], [], [], {}) if args.speed_only else \
                        accuracy(llm, samples, kv, args.batch, bar)
                    row = {"task": task, "context_len": length, "policy": policy,
                           "budget": None if policy == "full" else budget, "positions": args.positions,
                           "accuracy": acc, "n": 0 if args.speed_only else len(samples), "by_depth": by_depth,
                           "needle_recall_by_layer": recall, "scores": scores, "wrong_answers": wrong,
                           "kv_resident_bytes": resident_kv_bytes(llm, len(tok.encode(samples[0].prompt)))}
                    row["prefill_s"], row["decode_ms_per_token"] = (None, None) if args.no_timing else \
                        timing(llm, samples[0].prompt, request_kv(kv, samples[0], trace=False))
                    rows.append(row)
                    bar.update(args.samples if args.speed_only else 0)
    print("| task | context | policy | budget | accuracy | by depth (0-20% … 80-100%) | needle recall by layer | "
          "wrong: in prompt / not / no number | prefill s | decode ms/tok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        depths = ", ".join("–" if d is None else f"{d:.2f}" for d in r["by_depth"])
        timing_cells = ("– | –" if r["prefill_s"] is None
                        else f"{r['prefill_s']:.2f} | {r['decode_ms_per_token']:.1f}")
        recall = ", ".join(f"{x:.2f}" for x in r["needle_recall_by_layer"]) or "–"
        print(f"| {r['task']} | {r['context_len']} | {r['policy']} | {r['budget'] or '–'} | "
              f"{'–' if r['accuracy'] is None else format(r['accuracy'], '.3f')} | "
              f"{depths} | {recall} | {wrong_cells(r)} | {timing_cells} |")
    write_json(args.json, {"machine": machine(), "args": vars(args), "results": rows})
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
