"""How many training steps until a small demo-shaped model copies in context (the induction phase change), per
initialisation and seed.

    python -m bench.copy_formation --seeds 0,1,2 --max-steps 1600 --json bench/results/copy_formation.json

Each row is random tokens, 8-40 of them, then the same tokens again. The length is new in every row, so no fixed
offset finds the copy: only matching content does. The loss is on the repeat. A run "copies" at the first step
whose teacher-forced accuracy on the repeat passes 0.5. Below that, the accuracy sits at ~0.05-0.1 for hundreds of
steps, then jumps within a few dozen steps.

The model is the demo model's training forward (MemoryLlama, with its memory layer). `--size smoke` is hidden 64
with 2 layers; `full` is the bundled shape. The optimizer and warm-up are engine.demo.train's.

The inits:
- `llama`: N(0, 0.02) everywhere, as transformers' Llama; the default since session 11.
- `scaled`: the same, but the residual projections (o_proj, down_proj) at 0.02/sqrt(2·layers). This is GPT-2's
  scheme, and the demo model's init until session 11.
"""
import argparse
import random

import torch
from tqdm import tqdm

from bench.common import machine, write_json
from engine.demo.batches import copy_row
from engine.demo.train import (FULL, SMOKE, init_weights, learning_rate, loss_and_accuracy, make_optimizer,
                               model_config)
from engine.models.memory_llama import MemoryLlamaForCausalLM
from engine.models.model_config import ModelConfig

INITS = {"llama": False, "scaled": True}   # init name -> init_weights(scaled_residual=...)


def repeat_batch(rng: random.Random, rows: int, vocab: int, shortest: int = 8, longest: int = 40):
    """Token ids [rows, 2·longest + 1] (BOS, a random run, the run again, padding) and the repeat's loss weights."""
    ids = torch.zeros(rows, 2 * longest + 1, dtype=torch.long)
    weights = torch.zeros(rows, 2 * longest + 1)
    for row in range(rows):
        n = rng.randint(shortest, longest)
        row_ids, row_weights = copy_row(1, [rng.randrange(10, vocab) for _ in range(n)], 1.0)
        ids[row, :2 * n + 1] = torch.tensor(row_ids)
        weights[row, :2 * n + 1] = torch.tensor(row_weights)
    return ids, weights


def steps_to_copy(size: dict, scaled_residual: bool, seed: int, max_steps: int, lr: float, rows: int,
                  bar: tqdm) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = MemoryLlamaForCausalLM(ModelConfig.from_dict(model_config(size, max_positions=256)))
    init_weights(model, scaled_residual=scaled_residual)
    optimizer = make_optimizer(model, lr)
    vocab = min(size["vocab_size"], 266)
    accuracy = 0.0
    for step in range(1, max_steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(lr, step - 1, 0.0) * group["lr_scale"]
        ids, weights = repeat_batch(rng, rows, vocab)
        loss, accuracy = loss_and_accuracy(model, ids, weights, weights > 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.update()
        if accuracy > 0.5:
            bar.update(max_steps - step)
            return {"steps_to_copy": step, "copy_accuracy": accuracy}
    return {"steps_to_copy": None, "copy_accuracy": accuracy}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="smoke", choices=["smoke", "full"])
    parser.add_argument("--inits", default="llama,scaled", help=f"comma-separated, of {', '.join(INITS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, default=1600)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rows", type=int, default=64, help="rows per step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = SMOKE if args.size == "smoke" else FULL
    inits = args.inits.split(",")
    if set(inits) - set(INITS):
        parser.error(f"--inits: each of {', '.join(INITS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tqdm(total=len(inits) * len(seeds) * args.max_steps, desc="steps", unit="step") as bar:
        for init in inits:
            for seed in seeds:
                result = steps_to_copy(size, INITS[init], seed, args.max_steps, args.lr, args.rows, bar)
                rows.append({"init": init, "seed": seed, "size": args.size, "max_steps": args.max_steps, **result})
    print("| init | seed | steps until it copies |\n|---|---|---|")
    for row in rows:
        steps = row["steps_to_copy"] or f"> {row['max_steps']} (copy accuracy {row['copy_accuracy']:.2f})"
        print(f"| {row['init']} | {row['seed']} | {steps} |")
    if args.json:
        write_json(args.json, {"machine": machine(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
