"""Train the bundled demo model: a small MemoryLlama with ReLU MLPs that retrieves from long contexts.

    python -m engine.demo.train --out DIR --minutes 90          # resumable: run again with --resume
    python -m engine.demo.train --out DIR --smoke               # a micro model in under a minute (tests)
    python -m engine.demo.train --out DIR --device cuda --workers 12 --batch-scale 2 --stats-every 4 --minutes 6
                                                                # on a GPU: ~14 steps/s on an H200

Data are generated on the fly (engine.demo.batches, from engine.demo.tasks): passkey, multi-key needle and
key-value retrieval prompts whose answer tokens carry the loss, plus filler sentences trained as plain language
modelling. A length curriculum starts at short contexts and doubles the maximum length whenever the answer-token
accuracy of the current stage passes `--advance-at`; each batch mixes lengths between a quarter of the current
maximum and the maximum. Tasks named in `--own-curriculum` keep their own, lower maximum, doubled only by their own
exact-answer rate, so that a task the model has not learned yet (multi-key needles) stays at lengths where it can
be learned while the others move on. `copy` rows (random tokens of task text, then the same again; not in the
default mix) teach in-context copying on its own: a new model trained first with `--mix copy=1 --stage 0`, then on
the tasks, finds pass keys by their content (bench/RESULTS.md, session 12). `copy_digits` rows (runs of digits, then
the same again) teach copying where one previous token does not tell what comes next, as in copying one number
among many (multi-key needles; session 13).
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from engine.config import EngineConfig
from engine.demo.batches import COPIED_TASKS, GENERATORS, TASK_MIX, Batcher, ParallelBatcher, TaskVariety, parse_mix
from engine.demo.tasks import PASSKEY_STYLES
from engine.demo.tokenizer import train_tokenizer
from engine.kv.config import KVConfig
from engine.models.memory_llama import MemoryLlamaForCausalLM
from engine.models.model_config import ModelConfig

FULL = dict(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, memory_heads=1, memory_num_keys=32, memory_key_dim=64, memory_value_dim=64,
            memory_pre_value_dim=64, memory_topk=8, lengths=[128, 256, 512, 1024, 2048],
            tokens_per_step=[2048, 2048, 4096, 8192, 8192])
SMOKE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, memory_heads=1, memory_num_keys=8, memory_key_dim=16, memory_value_dim=16,
             memory_pre_value_dim=16, memory_topk=4, lengths=[64, 128], tokens_per_step=[2048, 2048])


def model_config(size: dict, max_positions: int, rope_theta: float = 10000.0) -> dict:
    cfg = {k: v for k, v in size.items() if k not in ("lengths", "tokens_per_step")}
    return {"architectures": ["MemoryLlamaForCausalLM"], "model_type": "memory_llama", "hidden_act": "relu",
            "rms_norm_eps": 1e-5, "rope_theta": rope_theta, "tie_word_embeddings": True,
            "max_position_embeddings": max_positions, "bos_token_id": 1, "eos_token_id": 2, **cfg}


def loss_and_accuracy(model, ids, weights, answers, tasks=None, body=None, stats=True):
    """Weighted next-token loss; logits are computed only where the loss weight is non-zero. Also the
    teacher-forced answer-token accuracy, and (when the rows' `tasks` are given) per task both that accuracy and
    `{task}_exact`, the fraction of answers whose every token is right (what greedy decoding would get exactly);
    for `repeat` and `copy` rows, the accuracy of the copied tokens (an in-context copy circuit shows there first).
    `body` is the decoder stack to run (default `model.model`; training may pass a compiled one). With `stats`
    False, only the loss (no host synchronisation for the statistics)."""
    positions = torch.arange(ids.shape[1] - 1, device=ids.device)
    hidden = (model.model if body is None else body)(ids[:, :-1], positions, None, [None] * len(model.model.layers))
    keep = weights[:, 1:] > 0
    logits = model.lm_head(hidden[keep])
    target, w, ans = ids[:, 1:][keep], weights[:, 1:][keep], answers[:, 1:][keep]
    loss = (F.cross_entropy(logits, target, reduction="none") * w).sum() / w.sum().clamp(min=1)
    if not stats:
        return loss
    with torch.no_grad():
        hit = logits.argmax(-1) == target
        correct = hit & ans
        acc = correct.sum().item() / max(1, ans.sum().item())
        if tasks is None:
            return loss, acc
        per_task = {}
        row = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(keep)[keep]
        for name in set(tasks) - {"filler"}:
            rows = torch.tensor([t == name for t in tasks], device=ids.device)[row]
            scored = rows & (w > 0 if name in COPIED_TASKS else ans)
            per_task[name] = (hit & scored).sum().item() / max(1, scored.sum().item())
        per_task.update(_exact_answers(answers[:, 1:], keep, correct, tasks))
    return loss, acc, per_task


def _exact_answers(answers: torch.Tensor, keep: torch.Tensor, correct: torch.Tensor, tasks: list[str]) -> dict:
    """Per task, the fraction of answers (runs of answer positions) whose every token was predicted right."""
    starts = answers & ~F.pad(answers[:, :-1], (1, 0))
    span = (starts.flatten().cumsum(0) - 1).view_as(answers)                   # answer index of each position
    wrong = torch.zeros(int(starts.sum()), device=answers.device)
    is_wrong = torch.zeros_like(answers)
    is_wrong[keep] = ~correct & answers[keep]
    wrong.index_add_(0, span[answers], is_wrong[answers].float())
    span_rows = starts.nonzero()[:, 0]
    exact = {}
    for name in set(tasks) - {"filler", *COPIED_TASKS}:
        mine = torch.tensor([tasks[r] == name for r in span_rows.tolist()], dtype=torch.bool, device=wrong.device)
        if mine.any():
            exact[f"{name}_exact"] = (wrong[mine] == 0).float().mean().item()
    return exact


def save_checkpoint(model, tokenizer, out: str, record: dict, cfg: dict):
    os.makedirs(out, exist_ok=True)
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n != "lm_head.weight"}
    save_file(state, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tokenizer.save_pretrained(out)
    with open(os.path.join(out, "training_record.json"), "w") as f:
        json.dump(record, f, indent=1)


def init_weights(model: torch.nn.Module, std: float = 0.02, scaled_residual: bool = False):
    """N(0, std) for embeddings and linears (as transformers' Llama); with `scaled_residual` (GPT-2 style, the
    demo model's init until session 11) the residual projections get std/sqrt(2·layers), which delays the
    in-context copy circuit several-fold at a small shape, though not at the demo's (bench/copy_formation.py).
    Memory layers keep their own (UltraMemV2) initialisation."""
    layers = len(model.model.layers)
    for name, module in model.named_modules():
        if ".memory" in name:
            continue
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            scaled = scaled_residual and name.endswith(("o_proj", "down_proj"))
            torch.nn.init.normal_(module.weight, std=std * ((2 * layers) ** -0.5 if scaled else 1.0))


def make_optimizer(model: torch.nn.Module, lr: float, fused: bool = False,
                   value_lr_scale: float = 4.0) -> torch.optim.AdamW:
    """AdamW; the memory layers' value tables learn `value_lr_scale` times faster (UltraMemV2: 4), without weight
    decay (each group's `lr_scale`)."""
    values = [p for n, p in model.named_parameters() if "values" in n]
    others = [p for n, p in model.named_parameters() if "values" not in n]
    return torch.optim.AdamW([{"params": others, "lr_scale": 1.0},
                              {"params": values, "lr_scale": value_lr_scale, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), weight_decay=0.01, fused=fused or None)


@torch.no_grad()
def scale_memory_norms(model: torch.nn.Module, factor: float):
    """Multiply every memory layer's query and key LayerNorm (weight and bias) by `factor`."""
    for name, module in model.named_modules():
        if name.endswith((".memory.query_norm", ".memory.key_norm")):
            module.weight.mul_(factor)
            module.bias.mul_(factor)


def learning_rate(base: float, step: int, progress: float) -> float:
    """`step` counts from the start of this run: every (re)start warms up over 100 steps."""
    warm = min(1.0, (step + 1) / 100)
    return base * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress - 0.6) / 0.4))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=None,
                        help="training time of this run (default 90; smoke 0.67); the LR decays over its last 40%%")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps in total")
    parser.add_argument("--smoke", action="store_true", help="a micro model for tests (40 seconds)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--value-lr-scale", type=float, default=4.0,
                        help="the memory layers' value and pre-value tables learn this many times faster")
    parser.add_argument("--rope-theta", type=float, default=10000.0,
                        help="RoPE base of a new model (1e36: only the first rotary pairs are positional, NoPE-like)")
    parser.add_argument("--scaled-residual-init", action="store_true",
                        help="a new model's residual projections start at std/sqrt(2·layers) (GPT-2 style; the "
                             "init until session 11)")
    parser.add_argument("--digit-group", type=int, default=1,
                        help="a new tokenizer's digits per number token: 1, or 3 (chunks of up to three digits, "
                             "vocabulary 4096)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes that generate batches ahead (for a GPU; 0: the training process does)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (a GPU trains this model ~100x faster)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder (~1.35x faster steps)")
    parser.add_argument("--batch-scale", type=float, default=1.0,
                        help="multiplies the tokens per step of every stage (a GPU can take larger batches)")
    parser.add_argument("--stats-every", type=int, default=1,
                        help="compute the accuracy statistics every N steps (each costs host syncs on a GPU)")
    parser.add_argument("--advance-at", type=float, default=0.9, help="answer accuracy that doubles the length")
    parser.add_argument("--advance-on", default="all", choices=["all", *GENERATORS],
                        help="what the curriculum watches: all tasks' answer-token accuracy, or one task's "
                             "exact-answer rate")
    parser.add_argument("--own-curriculum", default="",
                        help="comma-separated tasks (e.g. multikey,kv_retrieval) whose maximum length starts at the "
                             "first stage's and doubles only when their own exact-answer rate passes --advance-at")
    parser.add_argument("--task-stage", default="",
                        help="set tasks' own curriculum stages, e.g. multikey=3 (a stage >= the main one: no cap "
                             "of their own)")
    parser.add_argument("--stage", type=int, default=None,
                        help="start (or resume) the main curriculum at this stage: maximum length "
                             "lengths[stage] (0: the shortest); the tasks on their own curriculum keep theirs")
    parser.add_argument("--bounded-frac", type=float, default=0.0,
                        help="fraction of steps trained with bounded positions (engine.layers.bounded_dense): keys "
                             "beyond the local window at one distance, as bounded KV retrieval shows them")
    parser.add_argument("--bounded-local", type=int, default=512,
                        help="the local window of those steps (the engine's --kv-local; its default sinks and blocks)")
    parser.add_argument("--passkey-vary", type=float, default=0.0,
                        help="the fraction of passkey haystacks with sentences left out, spans cut out or varied "
                             "filler, so that the key can be found only by its content (0: all in the exact format)")
    parser.add_argument("--passkey-styles", default="drop,cut,filler",
                        help="the styles of those haystacks, drawn evenly (engine.demo.tasks.passkey)")
    parser.add_argument("--passkey-drop", type=float, default=0.3,
                        help="the `drop` style's highest chance to leave out a noise sentence")
    parser.add_argument("--multikey-similar", type=float, default=0.0,
                        help="multikey rows: the chance that another needle's value shares each digit of the "
                             "answer in its place (hard distractors: a copy must match the digits before, not "
                             "one digit and its place)")
    parser.add_argument("--multikey-trie", type=float, default=0.0,
                        help="the share of multikey rows in which three other values begin like the answer (its "
                             "first 1-6 digits) and then differ: the digits written so far do not tell which "
                             "needle a copy reads")
    parser.add_argument("--memory-norm-scale", type=float, default=1.0,
                        help="multiply the memory layers' query and key LayerNorm weights and biases by this at "
                             "the start of this run: their scores, and so their output, grow by its square "
                             "(revives memory layers that training turned off)")
    parser.add_argument("--mix", default=None, type=parse_mix,
                        help="the task mix, e.g. passkey=0.5,repeat=0.2,facts=0.1,filler=0.1,multikey=0.1 "
                             f"(default {','.join(f'{t}={w}' for t, w in TASK_MIX)})")
    args = parser.parse_args(argv)
    variety = TaskVariety(args.passkey_vary, tuple(args.passkey_styles.split(",")), args.passkey_drop,
                          args.multikey_similar, args.multikey_trie)
    if not set(variety.styles) <= set(PASSKEY_STYLES):
        parser.error(f"--passkey-styles: expected a comma-separated subset of {', '.join(PASSKEY_STYLES)}")
    size = SMOKE if args.smoke else FULL
    size = {**size, "tokens_per_step": [int(t * args.batch_scale) for t in size["tokens_per_step"]]}
    minutes = args.minutes if args.minutes is not None else (40 / 60 if args.smoke else 90.0)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    on_cuda = args.device.startswith("cuda")
    if on_cuda:
        torch.set_float32_matmul_precision("high")
    os.makedirs(args.out, exist_ok=True)
    state_path = os.path.join(args.out, "train_state.pt")

    if args.resume and os.path.isfile(os.path.join(args.out, "tokenizer.json")):
        from engine.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(args.out)  # the one the saved weights were trained with
    else:
        if args.digit_group > 1:
            size = {**size, "vocab_size": max(size["vocab_size"], 4096)}   # room for the 1,110 digit chunks
        tokenizer = train_tokenizer(size["vocab_size"], seed=args.seed, samples=60 if args.smoke else 400,
                                    digit_group=args.digit_group)
    cfg = model_config(size, max_positions=4 * size["lengths"][-1], rope_theta=args.rope_theta)
    if args.resume and os.path.isfile(os.path.join(args.out, "config.json")):
        with open(os.path.join(args.out, "config.json")) as f:
            cfg = json.load(f)   # a resumed model keeps its own shape, vocabulary and rope
    model = MemoryLlamaForCausalLM(ModelConfig.from_dict(cfg))
    init_weights(model, scaled_residual=args.scaled_residual_init)
    model.to(args.device)
    optimizer = make_optimizer(model, args.lr, fused=on_cuda, value_lr_scale=args.value_lr_scale)
    command = " ".join(["python -m engine.demo.train"] + sys.argv[1:])
    record = {"command": command, "seed": args.seed,
              "parameters": sum(p.numel() for p in model.parameters()), "elapsed_s": 0.0, "step": 0, "stage": 0,
              "curve": [], "stages": []}
    batcher = Batcher(tokenizer, args.seed, args.mix, variety)
    if args.resume and os.path.isfile(state_path):
        saved = torch.load(state_path, weights_only=False, map_location="cpu")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        optimizer.param_groups[1]["lr_scale"] = args.value_lr_scale   # this run's, not the saved one
        record = saved["record"]
        batcher.rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
    elif args.resume and os.path.isfile(os.path.join(args.out, "training_record.json")):
        # only the exported checkpoint is left (e.g. the bundled model): its weights, a fresh optimizer
        from engine.models.loader import read_safetensors
        weights = read_safetensors(args.out)
        weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
        model.load_state_dict({k: v.clone() for k, v in weights.items()})
        with open(os.path.join(args.out, "training_record.json")) as f:
            record = json.load(f)
        batcher.rng.seed(f"{args.seed}-{record['step']}")
    if args.memory_norm_scale != 1.0:
        scale_memory_norms(model, args.memory_norm_scale)

    parallel = (ParallelBatcher(tokenizer, args.seed, args.workers, args.mix, variety) if args.workers
                else None)
    if args.stage is not None and args.stage != record["stage"]:
        if not 0 <= args.stage < len(size["lengths"]):
            parser.error(f"--stage must be 0..{len(size['lengths']) - 1}")
        record["stage"] = args.stage
        record["stages"].append({"step": record["step"], "elapsed_s": round(record["elapsed_s"], 1),
                                 "max_len": size["lengths"][args.stage]})
    record.setdefault("runs", []).append({"command": command, "from_step": record["step"]})  # every (re)start
    own = record.setdefault("task_stage", {})
    for task in filter(None, args.own_curriculum.split(",")):
        if task not in GENERATORS:
            parser.error(f"--own-curriculum: unknown task {task!r} (one of {', '.join(GENERATORS)})")
        own.setdefault(task, 0)
    for item in filter(None, args.task_stage.split(",")):
        task, _, stage = item.partition("=")
        if task not in own or not stage.isdigit():
            parser.error(f"--task-stage: {item!r} is not TASK=STAGE for a task on its own curriculum")
        own[task] = int(stage)
    budget_s = minutes * 60
    block = EngineConfig.block_size   # bounded steps: the engine's default blocks and sinks
    bounded_layout = (args.bounded_local, block, KVConfig().sink_tokens(block))
    start = time.monotonic() - record["elapsed_s"]
    run_start_s, run_start_step = record["elapsed_s"], record["step"]
    acc_ema, loss_ema, last_save = record.get("acc_ema", 0.0), record.get("loss_ema"), time.monotonic()
    bar = tqdm(total=int(budget_s), unit="s", desc="train")
    model.train()
    body = torch.compile(model.model, dynamic=True) if args.compile else model.model
    while ((elapsed := time.monotonic() - start) - run_start_s < budget_s
           and (args.steps is None or record["step"] < args.steps)):
        stage = record["stage"]
        max_len = size["lengths"][stage]
        for group in optimizer.param_groups:
            progress = ((record["step"] - run_start_step) / max(1, args.steps - run_start_step) if args.steps
                        else (elapsed - run_start_s) / budget_s)
            group["lr"] = learning_rate(args.lr, record["step"] - run_start_step, progress) * group["lr_scale"]
        caps = {t: size["lengths"][s] for t, s in own.items() if s < stage} or None
        made = (parallel.batch(record["step"], max_len, size["tokens_per_step"][stage], caps) if parallel
                else batcher.batch(max_len, size["tokens_per_step"][stage], caps))
        ids, weights, answers, tasks = (t.to(args.device, non_blocking=True) if torch.is_tensor(t) else t
                                        for t in made)
        with_stats = record["step"] % args.stats_every == 0
        bounded = random.Random(f"{args.seed}-bounded-{record['step']}").random() < args.bounded_frac
        for layer in model.model.layers:
            layer.self_attn.bounded = bounded_layout if bounded else None
        loss, acc, per_task = (loss_and_accuracy(model, ids, weights, answers, tasks, body) if with_stats
                               else (loss_and_accuracy(model, ids, weights, answers, None, body, stats=False), 0, {}))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        record["step"] += 1
        task_ema = record.setdefault("task_acc_ema", {})
        if with_stats:
            loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
            acc_ema = 0.95 * acc_ema + 0.05 * acc
            for name, value in per_task.items():
                task_ema[name] = 0.95 * task_ema.get(name, 0.0) + 0.05 * value   # from 0: no advance on one batch
        if record["step"] % (10 * args.stats_every) == 0:
            record["curve"].append({"step": record["step"], "elapsed_s": round(elapsed, 1), "loss": round(loss_ema, 4),
                                    "answer_acc": round(acc_ema, 4), "max_len": max_len, "task_max_len": caps,
                                    "task_acc": {k: round(v, 3) for k, v in record.get("task_acc_ema", {}).items()}})
        watched = acc_ema if args.advance_on == "all" else task_ema.get(f"{args.advance_on}_exact", 0.0)
        since = record["step"] - (record["stages"][-1]["step"] if record["stages"] else 0)
        if watched > args.advance_at and stage + 1 < len(size["lengths"]) and since > 50 * args.stats_every:
            record["stage"] += 1
            record["stages"].append({"step": record["step"], "elapsed_s": round(elapsed, 1),
                                     "max_len": size["lengths"][record["stage"]]})
            acc_ema = 0.0
            task_ema.clear()
        for task, task_stage in own.items():   # tasks on their own curriculum
            last = max([e["step"] for e in record.setdefault("task_stages", []) if e["task"] == task], default=0)
            if (task_ema.get(f"{task}_exact", 0.0) > args.advance_at and task_stage < record["stage"]
                    and record["step"] - last > 50 * args.stats_every):
                own[task] += 1
                record["task_stages"].append({"task": task, "step": record["step"], "elapsed_s": round(elapsed, 1),
                                              "max_len": size["lengths"][own[task]]})
                task_ema.pop(task, None)
                task_ema.pop(f"{task}_exact", None)
        record["elapsed_s"] = time.monotonic() - start
        record["acc_ema"], record["loss_ema"] = acc_ema, loss_ema
        bar.n = int(record["elapsed_s"] - run_start_s)
        if with_stats:
            bar.set_postfix(loss=f"{loss_ema:.3f}", acc=f"{acc_ema:.2f}", len=max_len, step=record["step"])
        if time.monotonic() - last_save > 300:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "record": record,
                        "rng": batcher.rng.getstate(), "torch_rng": torch.get_rng_state()}, state_path)
            save_checkpoint(model, tokenizer, args.out, record, cfg)
            last_save = time.monotonic()
    bar.close()
    if parallel:
        parallel.close()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "record": record,
                "rng": batcher.rng.getstate(), "torch_rng": torch.get_rng_state()}, state_path)
    save_checkpoint(model, tokenizer, args.out, record, cfg)
    print(f"saved {args.out}: {record['step']} steps, loss {loss_ema or 0:.3f}, answer accuracy {acc_ema:.2f}, "
          f"max length {size['lengths'][record['stage']]}")


if __name__ == "__main__":
    main()
