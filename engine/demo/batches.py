"""Training batches of the demo model: the task mix, rows generated on the fly (engine.demo.tasks) and tokenized,
padded into batches of one length bucket; optionally made ahead by worker processes."""
import argparse
import atexit
import random
from dataclasses import dataclass

import torch

from engine.demo.tasks import facts, multikey, kv_retrieval, passkey, filler_text, repeated_text

TASK_MIX = [("multikey", 0.3), ("passkey", 0.2), ("kv_retrieval", 0.1), ("repeat", 0.2), ("facts", 0.1),
            ("filler", 0.1)]   # facts: a fixed table only parametric memory can answer (the memory layers' job)
FOLLOWUPS = {"multikey": 4, "kv_retrieval": 4}  # extra questions per haystack: denser retrieval signal (MQAR)
FILLER_WEIGHT = 0.05  # per filler token, so that language modelling does not drown the few answer tokens
REPEAT_WEIGHT = 0.3   # per token of a repeat (dense copying signal: induction heads form sooner)
COPY_TASK = "copy"    # random token ids, then the same again: the purest copy signal (not in the default mix)
DIGITS_TASK = "copy_digits"   # the same with digits only: no one previous token tells where the copy is
DIGITS_MAX_RUN = 128
COPIED_TASKS = ("repeat", COPY_TASK, DIGITS_TASK)   # rows scored on every copied token, not on answers
GENERATORS = {"multikey": multikey, "passkey": passkey, "kv_retrieval": kv_retrieval, "facts": facts}


def copy_row(bos: int, run: list[int], weight: float) -> tuple[list[int], list[float]]:
    """BOS, `run`, `run` again, and loss weights on the repeat from its second token (its first cannot be known)."""
    return [bos] + run + run, [0.0] * (len(run) + 2) + [weight] * (len(run) - 1)


def parse_mix(text: str) -> list[tuple[str, float]]:
    """'passkey=0.5,filler=0.5' -> [("passkey", 0.5), ("filler", 0.5)]: the tasks of a batch and their weights."""
    known = [t for t, _ in TASK_MIX] + [COPY_TASK, DIGITS_TASK]
    mix = []
    for part in filter(None, text.split(",")):
        task, _, weight = part.partition("=")
        if task not in known or not weight:
            raise argparse.ArgumentTypeError(f"{part!r}: expected TASK=WEIGHT with TASK one of {', '.join(known)}")
        mix.append((task, float(weight)))
    if not mix or sum(w for _, w in mix) <= 0:
        raise argparse.ArgumentTypeError("the mix needs a task of positive weight")
    return mix


@dataclass(frozen=True)
class TaskVariety:
    """How training rows depart from the evaluated formats: which passkey haystacks are varied, and how
    (engine.demo.tasks.passkey's styles); how alike multikey's values are (engine.demo.tasks.multikey)."""
    fraction: float = 0.0                              # the share of passkey haystacks in a varied style
    styles: tuple[str, ...] = ("drop", "cut", "filler")   # drawn evenly
    drop: float = 0.3                                  # the `drop` style's highest chance to leave out a sentence
    multikey_similar: float = 0.0                      # chance that a distractor shares each digit of the answer
    multikey_trie: float = 0.0                         # share of rows with 3 values that begin like the answer


class Batcher:
    """Generates token batches of one length bucket: ids, loss weights, and which positions are answers."""

    def __init__(self, tokenizer, seed: int, mix: list[tuple[str, float]] | None = None,
                 variety: TaskVariety = TaskVariety()):
        self.tok = tokenizer
        self.rng = random.Random(seed)
        self.mix = mix or TASK_MIX
        self.variety = variety
        self.count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
        self._copy_pool = None   # the token ids of `copy` rows
        self._digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]   # of `copy_digits` rows

    def sample(self, length: int, caps: dict[str, int] | None = None):
        task = self.rng.choices([t for t, _ in self.mix], [w for _, w in self.mix])[0]
        cap = (caps or {}).get(task)
        if cap is not None and length > cap:   # a task on its own curriculum: its own range of lengths
            length = self.rng.randint(max(32, cap // 4), cap)
        if task == "filler":
            ids = self.tok.encode(filler_text(self.rng, length, self.count))[:length]
            return task, ids, [FILLER_WEIGHT] * len(ids), [False] * len(ids)
        if task == COPY_TASK:
            return task, *self._copy_row(length)
        if task == DIGITS_TASK:
            return task, *self._copy_row(min(length, 2 * DIGITS_MAX_RUN), self._digits)
        if task == "repeat":
            first, again = repeated_text(self.rng, length, self.count)
            head, tail = self.tok.encode(first), self.tok.encode(again, add_special_tokens=False)
            return task, head + tail, [0.0] * len(head) + [REPEAT_WEIGHT] * len(tail), [False] * (len(head) + len(tail))
        extra = {"followups": FOLLOWUPS[task]} if task in FOLLOWUPS else {}
        if task == "multikey":
            extra.update(similar=self.variety.multikey_similar, trie=self.variety.multikey_trie)
        if task == "passkey" and self.variety.fraction > 0 and self.rng.random() < self.variety.fraction:
            extra = {"style": self.rng.choice(self.variety.styles), "drop": self.variety.drop}
        sample = GENERATORS[task](self.rng, length, self.rng.random(), self.count, **extra)
        ids = self.tok.encode(sample.prompt)
        is_answer = [False] * len(ids)
        for question, answer in [(None, sample.answer)] + sample.followups:
            q = self.tok.encode(question, add_special_tokens=False) if question else []
            a = self.tok.encode(answer, add_special_tokens=False)
            ids += q + a
            is_answer += [False] * len(q) + [True] * len(a)
        ids.append(self.tok.eos_token_id)
        is_answer.append(True)
        return task, ids, [float(a) for a in is_answer], is_answer

    def _copy_row(self, length: int, pool: list[int] | None = None):
        """A `copy_row` of a run of 8 to length/2 random tokens of `pool` (default: the tokens of task text). The
        run's length varies, so no fixed offset finds the copy: only matching content does
        (bench/copy_formation.py). Runs of the ten digits repeat every token, so only a longer match finds the
        next one, as in copying a number among numbers (multikey)."""
        if pool is None and self._copy_pool is None:   # task text's tokens: what the tasks copy (digits, words)
            rng = random.Random(0)
            text = [filler_text(rng, 2000, self.count), multikey(rng, 2000, 0.5, self.count).prompt,
                    kv_retrieval(rng, 1000, 0.5, self.count).prompt, " ".join(map(str, range(1000)))]
            specials = set(self.tok.all_special_ids)
            self._copy_pool = sorted({i for t in text for i in self.tok.encode(t, add_special_tokens=False)}
                                     - specials)
        run = self.rng.choices(pool or self._copy_pool, k=self.rng.randint(8, max(8, length // 2)))
        ids, weights = copy_row(self.tok.bos_token_id, run, REPEAT_WEIGHT)
        return ids, weights, [False] * len(ids)

    def batch(self, max_len: int, tokens: int, caps: dict[str, int] | None = None):
        """A batch of about `tokens` tokens; `caps`: the lower maximum lengths of tasks on their own curriculum."""
        length = self.rng.randint(max(32, max_len // 4), max_len)
        rows = [self.sample(length, caps) for _ in range(max(1, tokens // length))]
        width = max(len(r[1]) for r in rows)
        ids = torch.full((len(rows), width), self.tok.eos_token_id, dtype=torch.long)
        weights = torch.zeros(len(rows), width)
        answers = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (_, r_ids, r_w, r_a) in enumerate(rows):
            ids[i, :len(r_ids)] = torch.tensor(r_ids)
            weights[i, :len(r_w)] = torch.tensor(r_w)
            answers[i, :len(r_a)] = torch.tensor(r_a)
        return ids, weights, answers, [r[0] for r in rows]


class ParallelBatcher:
    """Batches made ahead by worker processes (a GPU outruns one process generating and tokenizing the data).
    Batch i is generated from its own seed (`seed`-`i`); batches made ahead for a length bucket that the
    curriculum has since left are made again. A run is reproducible whatever the number of workers."""

    def __init__(self, tokenizer, seed: int, workers: int, mix: list[tuple[str, float]] | None = None,
                 variety: TaskVariety = TaskVariety()):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        # spawn, not fork: the parent has threads (tqdm, tokenizers) and maybe CUDA
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker, initargs=(tokenizer, mix, variety))
        self.seed, self.depth, self.pending = seed, max(8, 2 * workers), []
        atexit.register(self.close)   # also when training stops on an exception

    def batch(self, step: int, max_len: int, tokens: int, caps: dict[str, int] | None = None):
        shape = (max_len, tokens, tuple(sorted((caps or {}).items())))
        for _, made_for, future in self.pending:
            if made_for != shape:
                future.cancel()
        self.pending = [p for p in self.pending if p[1] == shape and p[0] >= step]
        while len(self.pending) < self.depth:
            i = self.pending[-1][0] + 1 if self.pending else step
            self.pending.append((i, shape, self.pool.submit(_make_batch, f"{self.seed}-{i}", max_len, tokens, caps)))
        return self.pending.pop(0)[2].result(timeout=600)

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


_worker_batcher: Batcher | None = None


def _init_worker(tokenizer, mix, variety):
    global _worker_batcher
    torch.set_num_threads(1)
    _worker_batcher = Batcher(tokenizer, 0, mix, variety)


def _make_batch(seed: str, max_len: int, tokens: int, caps: dict[str, int] | None = None):
    _worker_batcher.rng.seed(seed)
    return _worker_batcher.batch(max_len, tokens, caps)
