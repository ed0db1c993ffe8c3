"""Saliency (SPEC A.5) on the tiny Llama with SmolLM2's tokenizer: shapes, zero diagonal, finite values, eager
switched back."""
from __future__ import annotations

import pytest
import torch

from taskvec.analysis.saliency import (FLOWS, EagerAttentionError, eager_attention, flow_masks, input_token_spans,
                                       plot_flows, saliency)
from taskvec.errors import EmptyInputError, TokenizationError
from taskvec.prompts import build_prompts
from taskvec.tasks import get_task


@pytest.fixture(scope="module")
def cat_prompts(tiny_llama):
    trials = get_task("simple_string").sample_trials(3, 6, seed=1)
    return build_prompts(tiny_llama, trials)


def test_input_spans_cover_demo_inputs(tiny_llama, cat_prompts):
    p = cat_prompts[0]
    spans = input_token_spans(tiny_llama, p)
    assert len(spans) == len(p.answer_positions)
    for span, a, demo in zip(spans, p.answer_positions, p.trial.demos):
        assert span and max(span) < a
        text = tiny_llama.tokenizer.decode([p.ids[t] for t in span]).strip()
        assert demo.input in text or text in demo.input
    masks = flow_masks(tiny_llama, p)
    T = len(p.ids)
    assert all(m.shape == (T, T) for m in masks.values())
    total = sum(m.int() for m in masks.values())
    assert int(total.max()) == 1  # the groups do not overlap
    assert int(total.sum()) == T * (T - 1) // 2  # and cover every causal pair


def test_saliency_shapes_diagonal_finite_and_eager_restored(tiny_llama, cat_prompts):
    before = tiny_llama.model.config._attn_implementation
    assert before != "eager"
    res = saliency(tiny_llama, cat_prompts, batch_size=2, keep_matrices=True)
    assert tiny_llama.model.config._attn_implementation == before
    assert res.loss == "label"
    assert len(res.flows) == len(cat_prompts) * tiny_llama.n_layers
    assert set(FLOWS) <= set(res.flows.columns)
    values = torch.tensor(res.flows[list(FLOWS)].to_numpy())
    assert torch.isfinite(values).all() and (values >= 0).all() and values.sum() > 0
    for i, m in res.matrices.items():
        T = len(cat_prompts[i].ids)
        assert m.shape == (tiny_llama.n_layers, T, T)
        assert torch.all(m.diagonal(dim1=-2, dim2=-1) == 0)
        assert torch.all(m.triu(1) == 0)  # causal: nothing flows from the future
    per_layer = res.flows_per_layer()
    assert list(per_layer.layer) == list(range(tiny_llama.n_layers))


def test_batching_does_not_change_saliency(tiny_llama, cat_prompts):
    a = saliency(tiny_llama, cat_prompts[:2], batch_size=1, loss="vocab")
    b = saliency(tiny_llama, cat_prompts[:2], batch_size=2, loss="vocab")
    diff = (a.flows[list(FLOWS)] - b.flows[list(FLOWS)]).abs().to_numpy().max()
    scale = a.flows[list(FLOWS)].abs().to_numpy().max()
    assert diff <= 1e-3 * scale


def test_plot(tmp_path, tiny_llama, cat_prompts):
    res = saliency(tiny_llama, cat_prompts[:1], batch_size=1)
    files = plot_flows(res.flows_per_layer(), tmp_path / "flows")
    assert all(f.exists() and f.stat().st_size > 0 for f in files)


def test_bad_inputs(tiny_llama, capital_trials):
    with pytest.raises(EmptyInputError):
        saliency(tiny_llama, [])
    knowledge = build_prompts(tiny_llama, capital_trials[:1])
    with pytest.raises(TokenizationError, match="label"):
        saliency(tiny_llama, knowledge, loss="label")
    with pytest.raises(ValueError):
        saliency(tiny_llama, knowledge, batch_size=0)


def test_model_without_switchable_attention():
    class NoConfig(torch.nn.Module):
        pass

    with pytest.raises(EagerAttentionError, match="eager"):
        with eager_attention(NoConfig()):
            pass


def test_eager_restored_after_error(tiny_llama, cat_prompts):
    before = tiny_llama.model.config._attn_implementation
    with pytest.raises(RuntimeError):
        with eager_attention(tiny_llama.model):
            assert tiny_llama.model.config._attn_implementation == "eager"
            raise RuntimeError("boom")
    assert tiny_llama.model.config._attn_implementation == before
