"""Reading and writing h_l: equals hidden_states, write-back is bit-identical, causal, differentiable, checked."""
from __future__ import annotations

import pytest
import torch

from taskvec.errors import EmptyInputError, LayerError, PositionError, WidthError
from taskvec.intervene import Edits, hooked, patched_logits, read_states
from taskvec.prompts import build_prompts


@pytest.fixture(scope="module")
def prompts(smol, capital_trials):
    return build_prompts(smol, capital_trials[:4])


def test_capture_equals_output_hidden_states(smol, prompts):
    ids = prompts[0].ids
    states = read_states(smol, [ids], [list(range(len(ids)))])[0]  # [L, T, d]
    with torch.no_grad():
        hs = smol.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert states.shape == (smol.n_layers, len(ids), smol.d_model)
    for layer in range(smol.n_layers):
        torch.testing.assert_close(states[layer], hs[layer][0], rtol=0, atol=0)


def test_capture_under_left_padding_matches_single_prompts(smol, prompts):
    batch = read_states(smol, [p.ids for p in prompts], [p.answer_positions[:3] for p in prompts])
    alone = read_states(smol, [prompts[2].ids], [prompts[2].answer_positions[:3]])
    torch.testing.assert_close(batch[2], alone[0], rtol=1e-4, atol=1e-4)


def test_writing_back_captured_state_is_bit_identical(smol, prompts):
    ids = [p.ids for p in prompts]
    clean = patched_logits(smol, ids)
    pos = [p.answer_positions for p in prompts]
    states = read_states(smol, ids, pos, layers=[7])  # [P, 1, K, d]
    K = len(pos[0])
    edits = Edits.at(rows=torch.arange(len(ids)).repeat_interleave(K), layers=[7] * (len(ids) * K),
                     positions=torch.tensor(pos).reshape(-1), vectors=states[:, 0].reshape(-1, smol.d_model))
    assert torch.equal(patched_logits(smol, ids, edits), clean)


def test_patch_does_not_change_anything_before_its_position(smol, prompts):
    ids = prompts[0].ids
    p = prompts[0].answer_positions[3]
    full = torch.tensor([ids])
    edits = Edits.at([0], [4], [p], torch.randn(smol.d_model) * 10)
    with torch.no_grad():
        clean = smol.model(full).logits
        with hooked(smol.profile.layers, edits=edits):
            patched = smol.model(full).logits
    assert torch.equal(patched[0, :p], clean[0, :p])
    assert not torch.allclose(patched[0, p:], clean[0, p:])


def test_add_mode_adds(smol, prompts):
    ids = prompts[0].ids
    q = len(ids) - 1
    v = torch.randn(smol.d_model)
    with torch.no_grad(), hooked(smol.profile.layers, edits=Edits.at([0], [5], [q], v, mode="add"),
                                 record={6: torch.tensor([[q]])}) as rec_add:
        smol.model(torch.tensor([ids]))
    base = read_states(smol, [ids], [[q]], layers=[5])[0, 0, 0]
    with torch.no_grad(), hooked(smol.profile.layers, edits=Edits.at([0], [5], [q], base + v),
                                 record={6: torch.tensor([[q]])}) as rec_rep:
        smol.model(torch.tensor([ids]))
    torch.testing.assert_close(rec_add[6], rec_rep[6], rtol=1e-5, atol=1e-5)


def test_writes_are_differentiable(smol, prompts):
    ids = torch.tensor([prompts[0].ids])
    v = torch.randn(smol.d_model, requires_grad=True)
    with hooked(smol.profile.layers, edits=Edits.at([0], [3], [ids.shape[1] - 1], v)):
        loss = smol.model(ids).logits[0, -1].logsumexp(-1)
    loss.backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_hooks_are_removed_even_after_an_error(smol, prompts):
    layer = smol.profile.layers[2]
    before = len(layer._forward_pre_hooks)
    with pytest.raises(RuntimeError):
        with hooked(smol.profile.layers, edits=Edits.at([0], [2], [0], torch.zeros(smol.d_model))):
            raise RuntimeError("boom")
    assert len(layer._forward_pre_hooks) == before


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layers=[99]), LayerError, "layer 99 is out of range: this model has layers 0..29"),
    (dict(positions=[500]), PositionError, "outside its prompt"),
    (dict(vectors=torch.zeros(1, 7)), WidthError, r"\[n, 576\]"),
])
def test_bad_edits_are_one_line_errors(smol, prompts, kwargs, error, match):
    args = dict(rows=[0], layers=[1], positions=[1], vectors=torch.zeros(1, smol.d_model))
    args.update(kwargs)
    with pytest.raises(error, match=match) as err:
        patched_logits(smol, [prompts[0].ids], Edits.at(**args))
    assert "\n" not in str(err.value)


def test_read_states_checks_layers_positions_and_empty(smol, prompts):
    with pytest.raises(LayerError):
        read_states(smol, [prompts[0].ids], [[0]], layers=[30])
    with pytest.raises(PositionError):
        read_states(smol, [prompts[0].ids], [[1000]])
    with pytest.raises(EmptyInputError):
        read_states(smol, [], torch.zeros(0, 1, dtype=torch.long))
