"""The demo model's training script: smoke run, reproducibility, resume, and serving the result."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from engine import LLM, SamplingParams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(out, *extra):
    cmd = [sys.executable, "-m", "engine.demo.train", "--out", str(out), "--smoke", "--threads", "1", *extra]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=300)
    with open(os.path.join(out, "training_record.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    record = train(out, "--steps", "40", "--minutes", "4")   # a step count, so that a loaded machine passes too
    return out, record


def test_smoke_training_learns_and_records(smoke_model):
    out, record = smoke_model
    assert record["step"] == 40
    curve = record["curve"]
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert "engine.demo.train" in record["command"]
    tracked = record["task_acc_ema"]   # per task; a repeat's copied tokens are tracked too (the copy circuit)
    assert {"passkey", "passkey_exact", "repeat"} <= set(tracked) and "filler" not in tracked
    assert all(0.0 <= v <= 1.0 for v in tracked.values())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert os.path.isfile(os.path.join(out, name))


def test_smoke_model_is_served_by_the_engine(smoke_model):
    out, _ = smoke_model
    llm = LLM(str(out), max_model_len=512)
    assert llm.engine.model_config.architecture == "MemoryLlamaForCausalLM"
    out = llm.generate("The pass key is 12345. What is the pass key? The pass key is",
                       SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 8


def test_seeded_runs_are_identical_and_resume_continues(tmp_path):
    a = train(tmp_path / "a", "--steps", "4")
    b = train(tmp_path / "b", "--steps", "4")
    wa, wb = (load_file(str(tmp_path / x / "model.safetensors")) for x in "ab")
    assert a["step"] == b["step"] == 4
    assert all((wa[name] == wb[name]).all() for name in wa)
    c = train(tmp_path / "a", "--steps", "7", "--resume", "--own-curriculum", "multikey", "--stage", "1")
    assert c["step"] == 7 and c["task_stage"] == {"multikey": 0}
    assert c["stage"] == 1 and c["stages"][-1] == {"step": 4, "elapsed_s": c["stages"][-1]["elapsed_s"], "max_len": 128}
    wc = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert any((wa[name] != wc[name]).any() for name in wa)
    d = train(tmp_path / "a", "--steps", "8", "--resume", "--task-stage", "multikey=1")   # the saved curriculum kept
    assert d["step"] == 8 and d["task_stage"] == {"multikey": 1}
    with pytest.raises(subprocess.CalledProcessError) as failed:
        train(tmp_path / "a", "--steps", "9", "--resume", "--task-stage", "passkey=1")   # not on its own curriculum
    assert b"--task-stage" in failed.value.stderr


def test_bounded_position_steps_train_another_model(tmp_path):
    """--bounded-frac 1: every step attends keys beyond the local window at one distance (engine.layers.bounded_dense,
    checked against the engine in tests/test_bounded_dense.py); 128-token rows with a 16-token window have such keys."""
    plain = train(tmp_path / "plain", "--steps", "2", "--stage", "1")
    bounded = train(tmp_path / "bounded", "--steps", "2", "--stage", "1", "--bounded-frac", "1",
                    "--bounded-local", "16")
    assert plain["step"] == bounded["step"] == 2
    wp, wb = (load_file(str(tmp_path / x / "model.safetensors")) for x in ("plain", "bounded"))
    assert any((wp[name] != wb[name]).any() for name in wp)


def test_resume_from_exported_checkpoint_without_optimizer_state(tmp_path):
    first = train(tmp_path / "m", "--steps", "3")
    os.remove(tmp_path / "m" / "train_state.pt")
    again = train(tmp_path / "m", "--steps", "5", "--resume")
    assert first["step"] == 3 and again["step"] == 5
    assert again["curve"][:len(first["curve"])] == first["curve"]


def test_exact_answer_rate_counts_answers_with_every_token_right():
    import torch
    from engine.demo.train import _exact_answers
    answers = torch.tensor([[0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 0]], dtype=torch.bool)   # where logits were computed
    right = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 1, 0]], dtype=torch.bool)  # row 0's 2nd answer: one miss
    got = _exact_answers(answers, keep, right[keep] & answers[keep], ["multikey", "passkey"])
    assert got == {"multikey_exact": 0.5, "passkey_exact": 1.0}


def test_parallel_batches_are_the_seeded_batches_of_one_process():
    import random
    import torch
    from engine.demo.tokenizer import train_tokenizer
    from engine.demo.batches import Batcher, ParallelBatcher, TaskVariety
    tok = train_tokenizer(512, samples=20)
    mix, variety = [("passkey", 1.0), ("filler", 1.0)], TaskVariety(0.5)
    parallel = ParallelBatcher(tok, seed=5, workers=2, mix=mix, variety=variety)
    try:
        got = [parallel.batch(step, 64, 512) for step in range(3)]
        got.append(parallel.batch(3, 32, 256))     # the curriculum moved on: batches made ahead are made again
        got.append(parallel.batch(4, 32, 256, {"multikey": 32}))   # a task on its own curriculum, too
    finally:
        parallel.close()
    one = Batcher(tok, 0, mix, variety)
    for step, batch in enumerate(got):
        one.rng = random.Random(f"5-{step}")
        want = (one.batch(64, 512) if step < 3 else one.batch(32, 256) if step == 3
                else one.batch(32, 256, {"multikey": 32}))
        assert all(torch.equal(a, b) for a, b in zip(batch[:3], want[:3])) and batch[3] == want[3]


def test_unknown_passkey_styles_are_refused_before_training(tmp_path, capsys):
    from engine.demo.train import main
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--smoke", "--passkey-vary", "0.5", "--passkey-styles", "drop,shuffle"])
    assert "--passkey-styles" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_a_task_on_its_own_curriculum_keeps_its_shorter_lengths():
    import random
    from engine.demo.tokenizer import train_tokenizer
    from engine.demo.batches import Batcher
    tok = train_tokenizer(512, samples=20)

    def row_lengths(caps):
        batcher = Batcher(tok, 0)
        batcher.rng = random.Random(3)
        ids, _, _, tasks = batcher.batch(2048, 40000, caps)
        lengths = (ids != tok.eos_token_id).sum(1).tolist()
        return [n for n, t in zip(lengths, tasks) if t == "multikey"], [n for n, t in zip(lengths, tasks)
                                                                        if t not in ("multikey", "filler")]
    capped, others = row_lengths({"multikey": 128})
    uncapped, _ = row_lengths(None)
    assert capped and uncapped and max(capped) < min(uncapped) and max(capped) < min(others)


def test_the_task_mix_decides_which_tasks_a_batch_holds():
    from engine.demo.tokenizer import train_tokenizer
    from engine.demo.batches import Batcher, parse_mix
    tok = train_tokenizer(512, samples=20)
    _, _, _, tasks = Batcher(tok, 0, parse_mix("passkey=3,filler=1")).batch(128, 8000)
    assert set(tasks) == {"passkey", "filler"} and tasks.count("passkey") > tasks.count("filler")
    with pytest.raises(Exception, match="TASK=WEIGHT"):
        parse_mix("passkey")


def test_copy_rows_repeat_a_random_run_and_weigh_only_the_knowable_repeat():
    from engine.demo.tokenizer import train_tokenizer
    from engine.demo.batches import Batcher, parse_mix
    tok = train_tokenizer(512, samples=20)
    ids, weights, answers, tasks = Batcher(tok, 0, parse_mix("copy=1")).batch(128, 4000)
    assert set(tasks) == {"copy"} and not answers.any()
    runs = set()
    for row, w in zip(ids.tolist(), weights.tolist()):
        n = (len(row) - row.count(tok.eos_token_id) - 1) // 2
        run = row[1:n + 1]
        assert row[0] == tok.bos_token_id and row[n + 1:2 * n + 1] == run and 8 <= n <= 64
        assert not set(run) & set(tok.all_special_ids)
        assert [i for i, x in enumerate(w) if x > 0] == list(range(n + 2, 2 * n + 1))
        runs.add(n)
    assert len(runs) > 1   # the run's length varies


def test_digit_copy_rows_repeat_runs_of_digits_only():
    from engine.demo.tokenizer import train_tokenizer
    from engine.demo.batches import DIGITS_MAX_RUN, Batcher, parse_mix
    tok = train_tokenizer(512, samples=20)
    digits = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    ids, weights, answers, tasks = Batcher(tok, 0, parse_mix("copy_digits=1")).batch(1024, 8000)
    assert set(tasks) == {"copy_digits"} and not answers.any()
    for row in ids.tolist():
        n = (len(row) - row.count(tok.eos_token_id) - 1) // 2
        assert set(row[1:n + 1]) <= digits and row[n + 1:2 * n + 1] == row[1:n + 1] and 8 <= n <= DIGITS_MAX_RUN


def test_memory_norm_scale_multiplies_only_the_memory_query_and_key_norms():
    import torch
    from engine.demo.train import SMOKE, model_config, scale_memory_norms
    from engine.models.memory_llama import MemoryLlamaForCausalLM
    from engine.models.model_config import ModelConfig
    model = MemoryLlamaForCausalLM(ModelConfig.from_dict(model_config(SMOKE, 128)))
    before = {n: p.clone() for n, p in model.named_parameters()}
    scale_memory_norms(model, 3.0)
    scaled = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert scaled and all(".memory.query_norm." in n or ".memory.key_norm." in n for n in scaled)
    for n in scaled:
        assert torch.allclose(dict(model.named_parameters())[n], 3.0 * before[n])
