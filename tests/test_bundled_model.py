"""The bundled demo model loads by default, serves, and answers passkey prompts (its task accuracy at every length is
tracked in bench/RESULTS.md)."""
import os
import random
import subprocess
import sys

from engine import LLM, SamplingParams
from engine.demo import bundled_model_dir
from engine.demo.tasks import passkey, score

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_llm_without_a_model_loads_the_bundled_demo_model():
    llm = LLM(max_model_len=1024)
    cfg = llm.engine.model_config
    assert cfg.architecture == "MemoryLlamaForCausalLM" and cfg.hidden_act == "relu"
    size = sum(os.path.getsize(os.path.join(bundled_model_dir(), f)) for f in os.listdir(bundled_model_dir()))
    assert size <= 50 * 2**20
    out = llm.generate("There is an important info hidden inside a lot of irrelevant text. The pass key is 12345. "
                       "What is the pass key? The pass key is", SamplingParams(temperature=0, max_tokens=6))
    assert out[0].outputs[0].token_ids


def test_actserve_generate_defaults_to_the_bundled_model():
    result = subprocess.run([sys.executable, "-m", "api.cli", "generate", "--prompt", "The grass is green.",
                             "--max-tokens", "4", "--max-model-len", "512"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_bundled_model_answers_passkey_prompts():
    """Ten fresh 512-token passkey prompts, needles at random depths, greedy: the model in training gets 98 of 100
    right at this length (bench/RESULTS.md), so fewer than 8 of these 10 means the engine or the model broke."""
    llm = LLM(max_model_len=1024)
    tok = llm.get_tokenizer()
    rng = random.Random(2026)
    samples = [passkey(rng, 512, rng.random(), lambda t: len(tok.encode(t, add_special_tokens=False)))
               for _ in range(10)]
    outs = llm.generate([s.prompt for s in samples], SamplingParams(temperature=0, max_tokens=8))
    assert sum(score(s, o.outputs[0].text) for s, o in zip(samples, outs)) >= 8
