"""What the demo model's parts do: memory-layer ablation, MLP activation sparsity at decode, rows read per token.

    python -m bench.demo_model --json bench/results/demo_model.json

- Validation loss (answer tokens of fresh task instances, of questions about the fixed fact table, and plain
  filler text) with the memory layers on, and with their output zeroed.
- Fraction of zero ReLU activations in each MLP during decode steps (batch 1, engine path).
- Value rows read per decoded token per memory layer (must be heads × top-m).
"""
import argparse
import random
from collections import defaultdict

import torch
import torch.nn.functional as F

from bench.common import machine, write_json
from engine import LLM, SamplingParams
from engine.demo.tasks import GENERATORS, facts, filler_text


def validation_loss(model, tok, seed: int, samples: int, length: int) -> dict:
    rng = random.Random(seed)
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    totals = defaultdict(lambda: [0.0, 0])
    with torch.no_grad():
        for i in range(samples):
            task = ["passkey", "multikey", "kv_retrieval", "facts"][i % 4]
            s = (facts if task == "facts" else GENERATORS[task])(rng, length, rng.random(), count)
            prompt = tok.encode(s.prompt)
            ids = torch.tensor([prompt + tok.encode(s.answer, add_special_tokens=False)])
            logits = model.forward_dense(ids[:, :-1])[0, len(prompt) - 1:]
            loss = F.cross_entropy(logits, ids[0, len(prompt):], reduction="sum")
            totals[task][0] += loss.item()
            totals[task][1] += logits.shape[0]
            text = torch.tensor([tok.encode(filler_text(rng, length, count))[:length]])
            lm = F.cross_entropy(model.forward_dense(text[:, :-1])[0], text[0, 1:], reduction="sum")
            totals["filler"][0] += lm.item()
            totals["filler"][1] += text.shape[1] - 1
    return {k: v[0] / v[1] for k, v in totals.items()}


def memory_ablation(llm: LLM, samples: int, length: int) -> dict:
    model = llm.engine.runner.model
    tok = llm.get_tokenizer()
    with_memory = validation_loss(model, tok, 99, samples, length)
    saved = [(layer, layer.memory) for layer in model.model.layers]
    for layer, _ in saved:
        layer.memory = None
    without = validation_loss(model, tok, 99, samples, length)
    for layer, memory in saved:
        layer.memory = memory
    return {"with_memory": with_memory, "memory_zeroed": without,
            "delta": {k: without[k] - with_memory[k] for k in with_memory}}


def decode_sparsity(llm: LLM, prompts: list[str], tokens: int) -> dict:
    model = llm.engine.runner.model
    zeros, counts, hooks = defaultdict(int), defaultdict(int), []
    for i, layer in enumerate(model.model.layers):
        def hook(module, inputs, i=i):   # down's input act(gate) * up: zero where ReLU cut the gate
            if inputs[0].shape[0] == 1:  # a decode step of one sequence
                zeros[i] += int((inputs[0] == 0).sum())
                counts[i] += inputs[0].numel()
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(hook))
    memories = [layer.memory for layer in model.model.layers if getattr(layer, "memory", None) is not None]
    rows_before = [m.rows_read for m in memories]
    decoded = 0
    for p in prompts:
        out = llm.generate([p], SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True))[0]
        decoded += len(out.outputs[0].token_ids) - 1  # the first token comes from the prefill step
    for h in hooks:
        h.remove()
    prefill_rows = sum(len(llm.get_tokenizer().encode(p)) for p in prompts)
    rows = [m.rows_read - b for m, b in zip(memories, rows_before)]
    return {"mlp_zero_fraction_per_layer": [zeros[i] / counts[i] for i in sorted(counts)],
            "memory_rows_read_per_layer": rows, "decoded_tokens": decoded, "prefill_tokens": prefill_rows,
            "rows_per_token_per_layer": [r / (decoded + prefill_rows) for r in rows]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    llm = LLM(args.model, max_model_len=4096, decode_threads=1, enable_prefix_caching=False)
    ablation = memory_ablation(llm, args.samples, args.length)
    rng = random.Random(7)
    count = lambda text: len(llm.get_tokenizer().encode(text, add_special_tokens=False))  # noqa: E731
    prompts = [GENERATORS["passkey"](rng, 512, rng.random(), count).prompt for _ in range(4)]
    sparsity = decode_sparsity(llm, prompts, 32)
    mem = llm.engine.runner.model.memory_layers()
    expected_rows = mem[0].cfg.heads * mem[0].cfg.topk if mem else 0
    print("validation loss (nats/token)   with memory  memory zeroed  delta")
    for k in ablation["with_memory"]:
        print(f"  {k:<28} {ablation['with_memory'][k]:>10.4f} {ablation['memory_zeroed'][k]:>13.4f} "
              f"{ablation['delta'][k]:>+7.4f}")
    print("MLP zero fraction at decode per layer:",
          ", ".join(f"{z:.3f}" for z in sparsity["mlp_zero_fraction_per_layer"]))
    print(f"memory rows read per token per layer: {sparsity['rows_per_token_per_layer']} "
          f"(heads × top-m = {expected_rows})")
    write_json(args.json, {"machine": machine(), "args": vars(args), "ablation": ablation, "decode": sparsity,
                           "expected_rows_per_token": expected_rows})


if __name__ == "__main__":
    main()
