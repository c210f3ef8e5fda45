"""Sparse-MLP kernels and modes against the dense and masked-dense computations."""
import pytest
import torch
import torch.nn.functional as F

from engine.layers.mlp import GatedMLP
from engine.layers.sparse_mlp import SparsePlan, SparsityContext, input_sparse_linear, parse_sparsity


def make_mlp(act="relu", hidden=48, inter=96, seed=0):
    torch.manual_seed(seed)
    mlp = GatedMLP(hidden, inter, act).requires_grad_(False)
    mlp.sparsity = SparsityContext()
    return mlp


def run(mlp, x, plan):
    mlp.sparsity.plan = plan
    try:
        return mlp(x)
    finally:
        mlp.sparsity.plan = None


@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("max_density", [0.6, 1.0])
def test_input_sparse_linear_equals_masked_dense(batch, max_density):
    torch.manual_seed(batch)
    x, w = torch.randn(batch, 64), torch.randn(40, 64)
    mask = torch.rand(batch, 64) > 0.7
    got = input_sparse_linear(x, w, w.t().contiguous(), mask, max_density)
    assert (got - F.linear(x * mask, w)).abs().max() <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_relu_mode_is_exact(batch):
    mlp = make_mlp("relu")
    x = torch.randn(batch, 48)
    dense = run(mlp, x, None)
    sparse = run(mlp, x, SparsePlan("relu", max_density=1.0))
    assert (sparse - dense).abs().max() <= 1e-5
    assert mlp.sparsity.achieved()[0] > 0.3   # random ReLU gates: about half are zero


@pytest.mark.parametrize("mode,thresholds", [("teal", [(0.0, 0.0)]), ("cats", [0.0])])
def test_zero_thresholds_equal_dense(mode, thresholds):
    mlp = make_mlp("silu")
    x = torch.randn(2, 48)
    assert (run(mlp, x, SparsePlan(mode, thresholds, 1.0)) - run(mlp, x, None)).abs().max() <= 1e-5


def test_teal_equals_masked_dense_reference():
    mlp = make_mlp("silu")
    x = torch.randn(3, 48)
    t_in, t_down = 0.6, 0.05
    xm = x * (x.abs() > t_in)
    h = F.silu(F.linear(xm, mlp.gate_proj.weight)) * F.linear(xm, mlp.up_proj.weight)
    expected = F.linear(h * (h.abs() > t_down), mlp.down_proj.weight)
    for density in (0.6, 1.0):
        got = run(mlp, x, SparsePlan("teal", [(t_in, t_down)], density))
        assert (got - expected).abs().max() <= 1e-5


def test_cats_equals_masked_dense_reference():
    mlp = make_mlp("silu")
    x = torch.randn(2, 48)
    a = F.silu(F.linear(x, mlp.gate_proj.weight))
    expected = F.linear(a * (a.abs() > 0.1) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)
    assert (run(mlp, x, SparsePlan("cats", [0.1], 0.6)) - expected).abs().max() <= 1e-5


def test_parse_sparsity():
    assert parse_sparsity("teal:0.5") == ("teal", 0.5)
    assert parse_sparsity("relu") == ("relu", None)
    assert parse_sparsity(None) == ("dense", None)
    for bad in ("magic", "teal", "cats:"):
        with pytest.raises(ValueError):
            parse_sparsity(bad)


def test_engine_relu_mode_generates_like_dense_and_calibrated_teal_hits_target(checkpoint, tmp_path):
    import shutil

    from engine import LLM, SamplingParams, SamplingParamsError
    from engine.calibrate import calibrate, calibration_text, collect
    from engine.models.random_checkpoint import make_random_checkpoint
    path = make_random_checkpoint(str(tmp_path / "relu"), hidden_act="relu")
    llm = LLM(path, max_model_len=256, num_kv_blocks=40, block_size=8)
    prompts = ["The quick brown fox", "Numbers 0 1 2 3"]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    dense = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    relu = [o.outputs[0].token_ids for o in llm.generate(prompts, params, mlp_sparsity="relu")]
    assert relu == dense
    assert min(llm.engine.runner.sparsity.achieved()) > 0.2
    measured = llm.engine.runner.mlp_max_density("relu")   # the CPU's: measured once on this MLP shape
    assert 0.0 <= measured <= 0.8 and llm.engine.runner.mlp_max_density("cats") == measured
    assert llm.engine.runner.mlp_max_density("relu", 2) == measured / 2   # a bag per row: twice the reads
    assert LLM(path, max_model_len=256, num_kv_blocks=40, block_size=8,
               mlp_sparse_max_density=0.3).engine.runner.mlp_max_density("relu") == 0.3
    with pytest.raises(SamplingParamsError) as err:
        llm.generate(prompts, params, mlp_sparsity="teal:0.5")
    assert err.value.param == "mlp_sparsity" and "calibrate" in str(err.value)

    silu = shutil.copytree(checkpoint("llama"), tmp_path / "silu")
    calibrate(str(silu), 0.5, tokens=3000, seed=1)
    llm = LLM(str(silu), max_model_len=256, num_kv_blocks=40, block_size=8)
    held_out = calibration_text(1500, seed=2, count_tokens=lambda t: len(llm.get_tokenizer().encode(t)))
    llm.generate([llm.get_tokenizer().encode(t)[:200] for t in held_out[:2]],
                 SamplingParams(temperature=0, max_tokens=24, ignore_eos=True), mlp_sparsity="teal:0.5")
    achieved = llm.engine.runner.sparsity.achieved()
    assert all(abs(a - 0.5) <= 0.03 for a in achieved), achieved
    with pytest.raises(SamplingParamsError):
        llm.generate(prompts, params, mlp_sparsity="relu")


def test_crossover_is_measured_on_the_shape_and_bounded_by_what_relu_can_reach(monkeypatch):
    """The sparse path is timed against dense at rising densities; the crossover is where the speedup crosses 1
    (interpolated), and a ReLU MLP (about half of its random gates are zero) is never timed beyond what it
    reaches."""
    from engine.layers import sparse_crossover
    timed = []

    def fake_time(fn, repeats):   # sparse (timed first) 2x faster than dense up to a density of 0.3, then 1.5x slower
        timed.append(fn)
        density = sparse_crossover.DENSITIES[(len(timed) - 1) // 2]
        return (1.0 if density <= 0.3 else 3.0) if len(timed) % 2 else 2.0
    monkeypatch.setattr(sparse_crossover, "_best_time", fake_time)
    assert sparse_crossover.measure_crossover([make_mlp("silu", 64, 256)], "teal") == pytest.approx(0.3 + 0.15 * 0.75)
    timed.clear()
    assert sparse_crossover.measure_crossover([make_mlp("silu", 64, 256)], "cats") == pytest.approx(0.4125)
    timed.clear()
    monkeypatch.setattr(sparse_crossover, "_best_time", lambda fn, repeats: timed.append(fn) or 1.0 + len(timed) % 2)
    assert sparse_crossover.measure_crossover([make_mlp("silu", 64, 256)], "cats") == 0.0   # never faster
    timed.clear()
    monkeypatch.setattr(sparse_crossover, "_best_time", lambda fn, repeats: timed.append(fn) or 1 - len(timed) % 2 / 2)
    assert sparse_crossover.measure_crossover([make_mlp("relu", 64, 256)], "relu") in (0.45, 0.6)   # always faster
    assert len(timed) <= 2 * sparse_crossover.DENSITIES.index(0.6) + 2   # 0.8 not timed: half the gates are zero


def test_crossover_plans_keep_the_density_asked_for():
    from engine.layers.sparse_crossover import _plan_at
    mlp = make_mlp("silu", 64, 512)
    x = torch.randn(1, 64)
    for density in (0.1, 0.45):
        plan, kept = _plan_at(mlp, x, "cats", density)
        assert plan.mode == "cats" and plan.max_density == 1.0 and abs(kept - density) < 0.02
        plan, kept = _plan_at(mlp, x, "teal", density)
        assert plan.mode == "teal" and abs(kept - density) < 0.02
        assert abs(float((x.abs() > plan.thresholds[0][0]).float().mean()) - density) < 0.05
