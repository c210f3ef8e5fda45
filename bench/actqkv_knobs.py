"""ActQKV's knobs one at a time around their defaults, on one task: accuracy and needle recall per layer.

    python -m bench.actqkv_knobs --task passkey --length 2048 --budget 1024 --samples 20 \
        --json bench/results/actqkv_knobs.json

Recall is the fraction of samples in which a layer attended the block holding the answer at the question (the last
prefill window): it measures the selection itself, also where the model fails to answer. The baselines at the same
budget (`--references`, default `quest,infllm`) are the reference rows. `top_p=X` runs use `cutoff=top_p`; `--base`
sets knobs for every actqkv run (e.g. `--base per_head=false` for the shared selection).

Every run sees the same prompts, so each row is also compared with actqkv's defaults prompt by prompt: the prompts
only it answers (+), only the defaults answer (−), and the two-sided sign test's p-value on those (McNemar's exact
test), which says whether a difference in accuracy is more than the draw of the prompts.
"""
import argparse
import math

from tqdm import tqdm

from bench.common import machine, write_json
from bench.longctx import accuracy, make_samples
from engine import LLM

KNOBS = "tau=0.03,0.3,1.0;top_p=0.5,0.8,0.9,0.95;warmup=0,64,1024;per_head=true;repr_topk=1,2,8,16;repr_count=1,2,4"


def parse_knobs(spec: str) -> list[tuple[str, object]]:
    """"tau=0.1,0.3;per_head=true" -> [("tau", 0.1), ("tau", 0.3), ("per_head", True)]."""
    runs = []
    for part in filter(None, spec.split(";")):
        name, _, values = part.partition("=")
        for value in values.split(","):
            parsed = {"true": True, "false": False}.get(value.lower(), value)
            if isinstance(parsed, str) and name != "cutoff":
                parsed = float(parsed) if "." in parsed else int(parsed)
            runs.append((name, parsed))
    return runs


def paired(scores: list[float], base: list[float]) -> tuple[int, int, float]:
    """(prompts answered here only, by `base` only, two-sided exact sign-test p-value of those discordant pairs)."""
    wins = sum(s > b for s, b in zip(scores, base))
    losses = sum(s < b for s, b in zip(scores, base))
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n if n else 1.0
    return wins, losses, min(1.0, 2 * tail)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    parser.add_argument("--task", default="passkey")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--positions", default="original")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--knobs", default=KNOBS, help="NAME=V1,V2;NAME=V... (each run changes one knob)")
    parser.add_argument("--base", default="", help="NAME=V;... applied to every actqkv run (e.g. per_head=false)")
    parser.add_argument("--references", default="quest,infllm", help="baseline policies run beside (may be empty)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    llm = LLM(args.model, max_model_len=args.length + 256, max_num_batched_tokens=2048,
              enable_prefix_caching=False)
    samples = make_samples(llm.get_tokenizer(), args.task, args.length, args.samples, args.seed)
    base = {"budget": args.budget, "positions": args.positions}
    actqkv_base = dict(parse_knobs(args.base))
    runs = [(policy, None, None) for policy in filter(None, args.references.split(","))]
    runs.append(("actqkv", "defaults", None))
    runs += [("actqkv", name, value) for name, value in parse_knobs(args.knobs)]
    rows = []
    with tqdm(total=len(runs) * len(samples), desc="knobs") as bar:
        for policy, name, value in runs:
            kv = {**base, "policy": policy, **(actqkv_base if policy == "actqkv" else {}),
                  **({name: value} if value is not None else {})}
            if name == "top_p":
                kv["cutoff"] = "top_p"   # top_p acts only with that cut-off
            acc, _, recall, scores, _ = accuracy(llm, samples, kv, 4, bar)
            rows.append({"policy": policy, "knob": name, "value": value, "accuracy": acc,
                         "mean_recall": sum(recall) / len(recall) if recall else None, "recall_by_layer": recall,
                         "scores": scores})
    base = next(r["scores"] for r in rows if r["knob"] == "defaults")
    print("| policy | knob | accuracy | vs defaults: +, −, p | mean recall | recall by layer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        knob = "–" if r["knob"] is None else r["knob"] if r["value"] is None else f"{r['knob']}={r['value']}"
        r["vs_defaults"] = dict(zip(("only_here", "only_defaults", "p"), paired(r["scores"], base)))
        versus = "+{only_here}, −{only_defaults}, {p:.2f}".format(**r["vs_defaults"])
        versus = "–" if r["knob"] == "defaults" else versus
        print(f"| {r['policy']} | {knob} | {r['accuracy']:.2f} | {versus} | {r['mean_recall']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in r['recall_by_layer'])} |")
    write_json(args.json, {"machine": machine(), "args": vars(args), "actqkv_base": actqkv_base, "results": rows})


if __name__ == "__main__":
    main()
