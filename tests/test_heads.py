"""Head attribution (SPEC B.7) on smollm2-135m: shapes, identity patch is a no-op, ablation changes logits."""
from __future__ import annotations

import pytest
import torch

from taskvec.analysis.heads import (_run_head_variants, attention_to_answers, head_effects, head_geometry,
                                    plot_heads, record_head_outputs, summarize, top_heads)
from taskvec.errors import AlignmentError, ConfigError, EmptyInputError, LayerError
from taskvec.intervene import patched_logits
from taskvec.prompts import build_prompts, dummy_trials
from taskvec.tasks import get_task


@pytest.fixture(scope="module")
def pair(smol):
    task = get_task("simple_string")
    trials = task.sample_trials(2, 6, seed=3)
    icl = build_prompts(smol, trials)
    dummy = build_prompts(smol, dummy_trials(trials, [task.answer_pool(t) for t in trials], 0, smol.tokenizer))
    return icl, dummy


def test_geometry(smol):
    projs, H, hd = head_geometry(smol)
    assert len(projs) == smol.n_layers and H == 9 and hd == 64


def test_writing_own_outputs_is_a_noop(smol, pair):
    icl, _ = pair
    src = record_head_outputs(smol, icl)
    assert src.shape == (2, smol.n_layers, 9, 64)
    table = _run_head_variants(smol, icl, src, [0, 15], max_rows=64)
    ref = torch.log_softmax(patched_logits(smol, [p.ids for p in icl]), -1)
    ref = ref.gather(1, torch.tensor([[p.target_id] for p in icl]))[:, 0]
    for p, g in table.groupby("prompt"):
        assert (g.target_logprob - float(ref[p])).abs().max() < 1e-3


def test_mean_ablation_changes_logits(smol, pair):
    icl, _ = pair
    table = head_effects(smol, icl, mode="mean", layers=[20, 29], max_rows=40)
    assert len(table) == 2 * 2 * 9
    assert {"prompt", "layer", "head", "mode", "effect", "label_correct"} <= set(table.columns)
    assert table.effect.abs().max() > 1e-3  # some head matters
    assert torch.isfinite(torch.tensor(table.effect.to_numpy())).all()


def test_patch_and_summary(smol, pair, tmp_path):
    icl, dummy = pair
    patch = head_effects(smol, icl, dummy, mode="patch", layers=[18])
    attn = attention_to_answers(smol, icl)
    assert smol.model.config._attn_implementation != "eager"
    assert len(attn) == smol.n_layers * 9 and attn.attn_to_answers.between(0, 1).all()
    s = summarize(patch, attn)
    top = top_heads(s.dropna(subset=["patch_effect"]), 3)
    assert len(top) == 3 and top.patch_effect.is_monotonic_decreasing
    files = plot_heads(s.dropna(subset=["patch_effect"]), tmp_path / "h")
    assert all(f.exists() for f in files)


def test_bad_inputs(smol, pair):
    icl, dummy = pair
    with pytest.raises(EmptyInputError):
        head_effects(smol, [])
    with pytest.raises(ConfigError):
        head_effects(smol, icl, mode="zero")
    with pytest.raises(ConfigError, match="dummy"):
        head_effects(smol, icl, mode="patch", layers=[0])
    with pytest.raises(AlignmentError):
        head_effects(smol, icl, dummy[:1], mode="patch", layers=[0])
    with pytest.raises(LayerError):
        head_effects(smol, icl, mode="mean", layers=[99])
