"""The training fast path computes what the full forward with hooks computes: losses and gradients on fixed batches
(every layout, numeric and discrete, all slots / shared query / subsampled slots, detached θ, λ = 0 steps)."""
from __future__ import annotations

import pytest
import torch

from taskvec.intervene import Edits, hooked
from taskvec.scratch.layouts import plan
from taskvec.scratch.model import build_model, positions_for
from taskvec.scratch.tasks import make_task
from taskvec.scratch.objective import Objective
from taskvec.scratch.train import load_config, sample_batch, tvp_weight_at


def trained_looking(model, seed: int = 0):
    """Weights far from the init (std 0.2 instead of 0.02), so predictions and every gradient term matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def losses_and_grads(model, cfg, batch, **kw):
    model.zero_grad(set_to_none=True)
    loss, icl, tvp = Objective(model, cfg, **kw)(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), icl, tvp, grads


CASES = [
    dict(layout="x→y"),
    dict(layout="x→y", tvp_shared_query=True),
    dict(layout="x→y", tvp_slots=2),
    dict(layout="x→y", tvp_layer=0),
    dict(layout="x→y", tvp_layer=2, detach_theta=True),  # l* = the last layer
    dict(layout="*xy"),
    dict(layout="*xy", tvp_layer=2),
    dict(layout="xy", tvp_layer=None),  # ICL only
]


@pytest.mark.parametrize("vocab", [0, 64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_fast_path_matches_the_hf_forward(case, vocab, kernel):
    case = {"tvp_layer": 1, **case}
    task = {"name": "token_offset", "vocab": 64} if vocab else {"d": 4}
    cfg = load_config(preset="tiny", n_layer=3, task=task, k_max=6, batch_size=5, **case)
    t = make_task(cfg.task)
    torch.manual_seed(0)
    model = trained_looking(build_model("tiny", n_layer=3, d_in=t.d_in, vocab=t.vocab, n_positions=positions_for(6)))
    assert model.fast_path_ok()
    batch = sample_batch(cfg, t, 3, 0, 5)
    ref = losses_and_grads(model, cfg, batch, fast=False)
    new = losses_and_grads(model, cfg, batch, kernel=kernel)
    for a, b in zip(new[:3], ref[:3]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a, b)
    assert ref[2] > 0 or case.get("tvp_layer") is None
    assert new[3].keys() == ref[3].keys()
    for name, g in ref[3].items():
        scale = g.abs().max().clamp_min(1e-6)
        assert (new[3][name] - g).abs().max() / scale < 1e-4, name


def test_fast_path_on_cpu_small_float32_tolerance():
    """The benchmark's setting (cpu-small, d = 10, 20 examples): same loss, gradients within float32 rounding."""
    cfg = load_config(preset="cpu-small", k_max=20, batch_size=8, tvp_layer=3)
    t = make_task(cfg.task)
    torch.manual_seed(0)
    model = build_model("cpu-small", d_in=10, n_positions=positions_for(20))
    batch = sample_batch(cfg, t, 7, 0, 8)
    ref = losses_and_grads(model, cfg, batch, fast=False)
    new = losses_and_grads(model, cfg, batch)
    assert torch.allclose(new[0], ref[0], rtol=1e-6) and torch.allclose(new[2], ref[2], rtol=1e-6)
    worst = max(float((new[3][n] - g).norm() / g.norm().clamp_min(1e-12)) for n, g in ref[3].items())
    assert worst < 1e-5, worst


def test_lambda_zero_step_logs_tvp_without_training_it():
    cfg = load_config(preset="tiny", task={"d": 4}, k_max=5, batch_size=4, tvp_layer=1, tvp_schedule="after:10")
    t = make_task(cfg.task)
    model = trained_looking(build_model("tiny", d_in=4, n_positions=positions_for(5)))
    batch = sample_batch(cfg, t, 1, 0, 4)
    assert tvp_weight_at(cfg, 1) == 0
    icl_only = load_config(preset="tiny", task={"d": 4}, k_max=5, batch_size=4)
    for fast in (True, False):
        loss, icl, tvp = Objective(model, cfg, fast=fast)(batch, tvp_weight=0.0, need_tvp=True)
        assert tvp > 0 and torch.equal(loss.detach(), icl)  # logged, not in the loss
        model.zero_grad()
        loss.backward()
        g_log = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        Objective(model, icl_only, fast=fast)(batch)[0].backward()
        g_icl = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        assert all(torch.equal(a, b) for a, b in zip(g_log, g_icl))
        _, _, skipped = Objective(model, cfg, fast=fast)(batch, tvp_weight=0.0, need_tvp=False)
        assert skipped == 0


def test_hooks_on_the_layers_fall_back_to_the_hf_forward():
    """A hook on a decoder layer must see the training forward: the fast path steps aside."""
    cfg = load_config(preset="tiny", task={"d": 4}, k_max=5, batch_size=4, tvp_layer=1)
    t = make_task(cfg.task)
    model = build_model("tiny", d_in=4, n_positions=positions_for(5))
    batch = sample_batch(cfg, t, 1, 0, 4)
    seen = []
    handle = model.layers[0].register_forward_pre_hook(lambda mod, args: seen.append(1))
    try:
        assert not model.fast_path_ok()
        Objective(model, cfg)(batch)
    finally:
        handle.remove()
    assert len(seen) == 2 and model.fast_path_ok()  # ICL pass + TVP pass
    handle = model.layers[1].attn.register_forward_hook(lambda mod, args, out: seen.append(2))  # any submodule
    try:
        assert not model.fast_path_ok()
        Objective(model, cfg)(batch)
    finally:
        handle.remove()
    assert seen.count(2) == 2


def test_forward_keep_record_and_inject_match_hooked():
    model = trained_looking(build_model("tiny", n_layer=3, d_in=4, n_positions=positions_for(5)))
    g = torch.Generator().manual_seed(1)
    pl = plan("x→y", 4, query=True)
    emb = model.embed(pl, torch.randn(3, 4, 4, generator=g), torch.randn(3, 3, generator=g))
    vec = torch.randn(3, 32, generator=g)
    slot = int(pl.slot[-1])
    with torch.no_grad(), hooked(model.layers, record={1: torch.full((3, 1), slot)},
                                 edits=Edits.at([0, 1, 2], [2] * 3, [slot] * 3, vec)) as rec:
        full = model(emb)
    with torch.no_grad():
        kept, recorded = model(emb, keep=pl.pred, record=(1, torch.tensor([slot])), inject=(2, slot, vec))
    assert torch.allclose(kept, full[:, pl.pred], atol=1e-5)
    assert torch.allclose(recorded, rec[1], atol=1e-6)


@pytest.mark.slow
def test_compiled_objective_matches_and_survives_a_schedule(tmp_path):
    """``train(..., compile=True)``: the compiled loss equals the eager one within float32 rounding, and a λ
    warm-up and an ``after:`` phase (λ = 0 steps with and without the logged TVP pass) run without error."""
    from taskvec.scratch.train import train

    cfg = load_config(preset="tiny", task={"d": 4}, k_max=5, batch_size=4, tvp_layer=1, steps=5, log_every=2,
                      save_every=5, tvp_schedule="after:2,warmup:2")
    t = make_task(cfg.task)
    model = trained_looking(build_model("tiny", d_in=4, n_positions=positions_for(5)))
    batch = sample_batch(cfg, t, 1, 0, 4)
    eager = Objective(model, cfg)(batch, tvp_weight=0.5)
    compiled = Objective(model, cfg, compile=True)(batch, tvp_weight=0.5)
    for a, b in zip(compiled, eager):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    train(cfg, tmp_path / "r", progress=False, tensorboard=False, compile=True)
    assert (tmp_path / "r" / "model" / "model.safetensors").exists()


def _bench_scratch():
    """``benchmarks/bench_scratch.py`` as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scratch.py"
    spec = importlib.util.spec_from_file_location("bench_scratch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fast", [True, False])
def test_benchmark_matmul_floor_counts_every_product_of_the_step(fast):
    """The benchmark's floor records every matrix product of a step, forward and backward: its FLOP count equals
    the count worked out by hand, with the last layer pruned to the prediction slots on the fast path only."""
    bench = _bench_scratch()
    n, batch, d_in = 5, 4, 3
    cfg = load_config(preset="tiny", k_max=n, batch_size=batch, task={"d": d_in})
    model = build_model("tiny", d_in=d_in, n_positions=positions_for(n))
    floor = bench.MatmulFloor("floor", cfg, Objective(model, cfg, fast=fast),
                              sample_batch(cfg, make_task(cfg.task), 1, 0, batch))
    D, L = model.config.n_embd, model.n_layers
    rows, preds = batch * 3 * n, batch * n  # x→y: 3 tokens per example; → predicts
    lin = lambda r, i, o: 2 * r * i * o  # noqa: E731

    def block(r_kv, r_q):
        return lin(r_kv, D, 2 * D) + lin(r_q, D, D) + lin(r_q, D, D) + lin(r_q, D, 4 * D) + lin(r_q, 4 * D, D)

    read_in = 2 * lin(batch * n, d_in, D)  # x and y tokens; the data need no gradient
    last = block(rows, preds) if fast else block(rows, rows)
    forward = read_in + (L - 1) * block(rows, rows) + last + lin(preds, D, 1)
    assert floor.flops == 3 * forward - read_in
    wall, _ = floor.step(None)
    assert wall > 0 and floor.hot_seconds(reps=1) > 0
