"""From-scratch core: tasks, layouts, model save/load, TVP injection and gradients through θ."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from taskvec.errors import ConfigError
from taskvec.intervene import Edits, hooked
from taskvec.scratch.layouts import plan, query_plan
from taskvec.scratch.model import ScratchModel, build_model
from taskvec.scratch.tasks import TaskConfig, corrupt_labels, make_task
from taskvec.scratch.objective import Objective, tvp_loss
from taskvec.scratch.train import load_config, sample_batch


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ tasks


def test_linear_regression_shapes_and_labels():
    task = make_task(TaskConfig(name="linear_regression", d=7))
    params = task.draw_tasks(5, gen())
    xs, ys = task.draw_points(params, 4, gen(1))
    assert xs.shape == (5, 4, 7) and ys.shape == (5, 4)
    assert torch.allclose(ys, torch.einsum("bnd,bd->bn", xs, params["w"]))
    assert (params["id"] == -1).all()


def test_tasks_are_deterministic_and_fresh():
    for name in ("linear_regression", "sinusoid", "token_offset"):
        task = make_task(TaskConfig(name=name))
        a = task.draw_points(task.draw_tasks(3, gen(5)), 6, gen(6))
        b = task.draw_points(task.draw_tasks(3, gen(5)), 6, gen(6))
        c = task.draw_points(task.draw_tasks(3, gen(7)), 6, gen(8))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])


def test_token_offset_and_pool():
    task = make_task(TaskConfig(name="token_offset", pool_size=4))
    params = task.draw_tasks(50, gen())
    xs, ys = task.draw_points(params, 8, gen(1))
    assert xs.dtype == torch.long and ys.shape == (50, 8)
    assert torch.equal(ys, (xs + params["c"][:, None]) % 64)
    assert set(params["id"].tolist()) <= {0, 1, 2, 3}
    same = task.pool_tasks(torch.tensor([2, 2]))
    assert same["c"][0] == same["c"][1]


def test_held_out_offsets_and_ood_scales():
    task = make_task(TaskConfig(name="token_offset", offsets=[17, 18]))
    assert set(task.draw_tasks(40, gen())["c"].tolist()) <= {17, 18}
    lr = make_task(TaskConfig(d=10, x_scale=2.0))
    xs, ys = lr.draw_points(lr.draw_tasks(2000, gen()), 1, gen(1))
    assert lr.y_var == 40.0
    assert abs(float((ys**2).mean()) / lr.y_var - 1) < 0.15
    half = make_task(TaskConfig(d=10, half_subspace=True))
    xh, _ = half.draw_points(half.draw_tasks(3, gen()), 5, gen(1))
    assert (xh[..., 5:] == 0).all()


def test_noisy_labels_fraction():
    task = make_task(TaskConfig(d=5))
    params = task.draw_tasks(100, gen())
    xs, ys = task.draw_points(params, 20, gen(1))
    noisy = corrupt_labels(task, params, xs, ys, 0.25, gen(2))
    frac = float((noisy != ys).float().mean())
    assert 0.18 < frac < 0.32
    assert torch.equal(corrupt_labels(task, params, xs, ys, 0.0, gen(2)), ys)
    with pytest.raises(ConfigError):
        corrupt_labels(task, params, xs, ys, 1.5, gen(2))


def test_bad_task_config():
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(task={"name": "linear_regression", "dd": 3})
    with pytest.raises(ConfigError, match="beyond the model"):
        load_config(preset="tiny", tvp_layer=2)


# ------------------------------------------------------------------------------------------------ layouts


def test_layout_plans():
    p = plan("x->y", 2, query=True)  # ascii alias
    assert p.layout == "x→y"
    # pieces: x0=0 x1=1 y0=2 y1=3 arrow=4 star=5
    assert p.gather.tolist() == [0, 4, 2, 1, 4]
    assert p.pred.tolist() == [1, 4] and p.slot.tolist() == [1, 4]
    s = plan("*xy", 2, query=False)
    assert s.gather.tolist() == [5, 0, 2, 5, 1, 3]
    assert s.slot.tolist() == [0, 3] and s.pred.tolist() == [1, 4]
    g = plan("xy", 3, query=True)
    assert g.length == 5 and g.slot is None
    with pytest.raises(ConfigError, match="no task-vector slot"):
        g.require_slot()
    with pytest.raises(ConfigError, match="unknown layout"):
        plan("y->x", 2)
    assert query_plan("x→y").length == 2


def test_tvp_with_xy_layout_is_a_clear_error(tmp_path):
    from taskvec.scratch.train import train

    cfg = load_config(preset="tiny", layout="xy", tvp_layer=1, steps=1, batch_size=2, k_max=3)
    with pytest.raises(ConfigError, match="no task-vector slot"):
        train(cfg, tmp_path / "run", progress=False, tensorboard=False)


# ------------------------------------------------------------------------------------------------ model


def tiny(d: int = 4, vocab: int = 0) -> ScratchModel:
    torch.manual_seed(0)
    return build_model("tiny", d_in=d, vocab=vocab, n_positions=64).eval()


def test_embed_shapes_numeric_and_discrete():
    m = tiny(4)
    xs, ys = torch.randn(3, 5, 4), torch.randn(3, 5)
    pl = plan("x→y", 5, query=False)
    assert m.embed(pl, xs, ys).shape == (3, 15, 32)
    assert m.predict(pl, xs, ys).shape == (3, 5)
    md = tiny(vocab=64)
    xt = torch.randint(0, 64, (3, 5))
    assert md.predict(plan("*xy", 5, query=True), xt, xt[:, :4]).shape == (3, 5, 64)


def test_save_load_round_trip(tmp_path):
    m = tiny(4)
    xs, ys = torch.randn(2, 6, 4), torch.randn(2, 6)
    pl = plan("x→y", 6, query=True)
    m.save_pretrained(tmp_path / "m")
    m2 = ScratchModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(m.predict(pl, xs, ys), m2.predict(pl, xs, ys))
    assert (tmp_path / "m" / "model.safetensors").exists()
    m.save_backbone(tmp_path / "bb")
    from transformers import GPT2Model

    bb = GPT2Model.from_pretrained(tmp_path / "bb").eval()
    emb = torch.randn(2, 7, 32)
    with torch.no_grad():
        assert torch.allclose(bb(inputs_embeds=emb).last_hidden_state, m(emb), atol=1e-6)


CHECKPOINTS = Path(__file__).parent / "data" / "hf_backbone_checkpoints"


@pytest.mark.parametrize("name", ["num", "disc"])
def test_checkpoints_saved_with_the_hf_backbone_still_load(name):
    """``num``/``disc`` were saved by taskvec at 05e17f2, when the backbone was HF's ``GPT2Model`` (3 layers, weights
    far from the init); ``ref.pt`` holds that code's predictions. The model written once loads them (the unused token
    embedding is dropped) and predicts the same."""
    m = ScratchModel.from_pretrained(CHECKPOINTS / name).eval()
    ref = torch.load(CHECKPOINTS / name / "ref.pt")
    with torch.no_grad():
        pred = m.predict(plan("x→y", 5, query=True), ref["xs"], ref["ys"])
    assert pred.abs().max() > 0.1  # not a model at its init
    assert torch.allclose(pred, ref["pred"], atol=1e-5)


@pytest.mark.parametrize("n_layer,n_head,n_embd", [(1, 1, 8), (3, 2, 32), (2, 4, 48)])
def test_forward_matches_the_hf_gpt2_oracle(n_layer, n_head, n_embd):
    """The nanoGPT-style forward equals HF's ``GPT2Model`` with the same weights (``to_gpt2``): every layer's
    input (``hooked`` against ``output_hidden_states``) and the final states, full and at kept columns, with
    either attention kernel; and the gradients of a loss on the final states."""
    m = build_model("tiny", n_layer=n_layer, n_head=n_head, n_embd=n_embd, d_in=3, n_positions=40)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    oracle = m.to_gpt2()
    emb = torch.randn(3, 11, n_embd)
    ref = oracle(inputs_embeds=emb, output_hidden_states=True)
    keep = torch.tensor([2, 5, 10])
    with hooked(m.layers, record={i: torch.arange(11).expand(3, -1) for i in range(n_layer)}) as rec:
        full = m(emb)
    for i in range(n_layer):
        assert torch.allclose(rec[i], ref.hidden_states[i], atol=1e-5), i
    assert torch.allclose(full, ref.last_hidden_state, atol=1e-5)
    for kernel in ("sdpa", "eager"):
        assert torch.allclose(m(emb, keep=keep, kernel=kernel), ref.last_hidden_state[:, keep], atol=1e-5)
    allowed = torch.ones(11, 11, dtype=torch.bool).tril()
    allowed[6:, :4] = False  # a mask that is not causal only (the attention-mask compression's kind)
    mask = torch.zeros(11, 11).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None].expand(3, 1, 11, 11)
    positions = torch.arange(11).flip(0).expand(3, -1)
    with torch.no_grad():
        want = oracle(inputs_embeds=emb, attention_mask=mask, position_ids=positions).last_hidden_state
        assert torch.allclose(m(emb, attention_mask=mask, position_ids=positions), want, atol=1e-5)
        assert not torch.allclose(want, ref.last_hidden_state, atol=1e-3)
    full.square().sum().backward()
    ref.last_hidden_state.square().sum().backward()
    mine = dict(m.transformer.named_parameters())
    for name, p in oracle.named_parameters():
        if name.startswith("wte"):
            continue
        assert torch.allclose(mine[name].grad, p.grad, rtol=1e-4, atol=1e-5), name


def test_written_back_theta_is_bit_identical():
    m = tiny(4)
    xs, ys = torch.randn(3, 5, 4), torch.randn(3, 5)
    pl = plan("x→y", 5, query=True)
    emb = m.embed(pl, xs, ys)
    slot = pl.slot[-1].item()
    with torch.no_grad():
        with hooked(m.layers, record={1: torch.full((3, 1), slot)}) as rec:
            clean = m(emb)
        edits = Edits.at(rows=[0, 1, 2], layers=[1] * 3, positions=[slot] * 3, vectors=rec[1][:, 0])
        with hooked(m.layers, edits=edits):
            patched = m(emb)
    assert torch.equal(clean, patched)
    with torch.no_grad(), hooked(m.layers, edits=Edits.at([0], [1], [slot], torch.zeros(32))):
        changed = m(emb)
    assert not torch.equal(clean, changed)


def test_gradients_flow_through_theta_unless_detached():
    m = build_model("tiny", d_in=4, n_positions=64)
    cfg = load_config(preset="tiny", task={"d": 4}, tvp_layer=1, k_max=5, batch_size=4)
    task = make_task(cfg.task)
    batch = sample_batch(cfg, task, 1, 0, 4)
    pl = plan("x→y", 5, query=False)
    slots = pl.slot[batch["slots"]][None].expand(4, -1)
    with hooked(m.layers, record={1: slots}) as rec:
        m(m.embed(pl, batch["xs"], batch["ys"]))
    theta = rec[1]
    assert theta.requires_grad and theta.shape == (4, 4, 32)
    loss = tvp_loss(m, "x→y", 1, theta, batch["xq"], batch["yq"])
    (g,) = torch.autograd.grad(loss, theta)
    assert g.abs().sum() > 0

    def grads(detach: bool) -> list[torch.Tensor]:
        m.zero_grad()
        loss, _, _ = Objective(m, cfg.model_copy(update={"detach_theta": detach}))(batch)
        loss.backward()
        return [p.grad.clone() for p in m.transformer.h[0].parameters()]

    attached, detached = grads(False), grads(True)
    assert any(not torch.allclose(a, b) for a, b in zip(attached, detached))


@pytest.mark.parametrize("vocab", [0, 64])
def test_shared_query_packing_equals_separate_passes(vocab):
    from taskvec.scratch.objective import tvp_loss_shared

    m = tiny(4, vocab=vocab)
    g = gen(3)
    theta = torch.randn(3, 5, 32, generator=g, requires_grad=True)
    if vocab:
        xq, yq = torch.randint(0, 64, (3, 1), generator=g), torch.randint(0, 64, (3, 1), generator=g)
    else:
        xq, yq = torch.randn(3, 1, 4, generator=g), torch.randn(3, 1, generator=g)
    packed = tvp_loss_shared(m, 1, theta, xq, yq)
    separate = tvp_loss(m, "x→y", 1, theta, xq.repeat_interleave(5, 1), yq.repeat_interleave(5, 1))
    assert torch.allclose(packed, separate, atol=1e-5)
    (g1,) = torch.autograd.grad(packed, theta)
    (g2,) = torch.autograd.grad(separate, theta)
    assert torch.allclose(g1, g2, atol=1e-6)
    with pytest.raises(ConfigError, match="x→y"):
        load_config(preset="tiny", layout="*xy", tvp_layer=1, tvp_shared_query=True)


@pytest.mark.parametrize("name", ["linear_regression", "sinusoid"])
def test_zero_predictor_error_is_one_with_label_noise(name):
    """The normalizer is E[y^2] of the labels the model sees, noise included: the all-zero predictor scores 1."""
    task = make_task(TaskConfig(name=name, d=8, noise=1.5))
    params = task.draw_tasks(4000, torch.Generator().manual_seed(0))
    _, ys = task.draw_points(params, 10, torch.Generator().manual_seed(1))
    assert abs(float((ys ** 2).mean()) / task.y_var - 1) < 0.05


def test_curriculum_error_is_normalized_by_the_active_dimension_and_keeps_noise():
    from taskvec.scratch.train import TrainConfig, curriculum_at, sample_batch

    cfg = TrainConfig(task={"name": "linear_regression", "d": 10, "noise": 0.5}, curriculum=True,
                      curriculum_start=3, curriculum_every=1000, batch_size=20000, k_max=11, steps=10)
    task = make_task(cfg.task)
    d_active, _ = curriculum_at(cfg, 1)
    assert d_active == 3
    batch = sample_batch(cfg, task, step=1, rank=0, batch=20000)
    assert (batch["xs"][..., 3:] == 0).all()
    assert abs(float((batch["ys"] ** 2).mean()) / task.y_var_at(3) - 1) < 0.05  # zero predictor: 1 at 3 dims
    assert task.y_var_at(3) == pytest.approx(3 + 0.25) and task.y_var == pytest.approx(10 + 0.25)
