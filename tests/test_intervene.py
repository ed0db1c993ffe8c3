"""Reading and writing h_l: equals hidden_states, write-back is bit-identical, causal, differentiable, checked."""
from __future__ import annotations

import pytest
import torch

from taskvec.errors import EmptyInputError, LayerError, PositionError, WidthError
from taskvec.intervene import Edits, hooked, patched_logits, read_states
from taskvec.prompts import build_prompts


@pytest.fixture(scope="module")
def prompts(tiny_llama, capital_trials):
    return build_prompts(tiny_llama, capital_trials[:4])


def test_capture_equals_output_hidden_states(tiny_llama, prompts):
    ids = prompts[0].ids
    states = read_states(tiny_llama, [ids], [list(range(len(ids)))])[0]  # [L, T, d]
    with torch.no_grad():
        hs = tiny_llama.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert states.shape == (tiny_llama.n_layers, len(ids), tiny_llama.d_model)
    for layer in range(tiny_llama.n_layers):
        torch.testing.assert_close(states[layer], hs[layer][0], rtol=0, atol=0)


def test_capture_under_left_padding_matches_single_prompts(tiny_llama, prompts):
    batch = read_states(tiny_llama, [p.ids for p in prompts], [p.answer_positions[:3] for p in prompts])
    alone = read_states(tiny_llama, [prompts[2].ids], [prompts[2].answer_positions[:3]])
    torch.testing.assert_close(batch[2], alone[0], rtol=1e-4, atol=1e-4)


def test_writing_back_captured_state_is_bit_identical(tiny_llama, prompts):
    ids = [p.ids for p in prompts]
    clean = patched_logits(tiny_llama, ids)
    pos = [p.answer_positions for p in prompts]
    states = read_states(tiny_llama, ids, pos, layers=[5])  # [P, 1, K, d]
    K = len(pos[0])
    edits = Edits.at(rows=torch.arange(len(ids)).repeat_interleave(K), layers=[5] * (len(ids) * K),
                     positions=torch.tensor(pos).reshape(-1), vectors=states[:, 0].reshape(-1, tiny_llama.d_model))
    assert torch.equal(patched_logits(tiny_llama, ids, edits), clean)


def test_patch_does_not_change_anything_before_its_position(tiny_llama, prompts):
    ids = prompts[0].ids
    p = prompts[0].answer_positions[3]
    full = torch.tensor([ids])
    edits = Edits.at([0], [4], [p], torch.randn(tiny_llama.d_model) * 10)
    with torch.no_grad():
        clean = tiny_llama.model(full).logits
        with hooked(tiny_llama.profile.layers, edits=edits):
            patched = tiny_llama.model(full).logits
    assert torch.equal(patched[0, :p], clean[0, :p])
    assert not torch.allclose(patched[0, p:], clean[0, p:])


def test_add_mode_adds(tiny_llama, prompts):
    ids = prompts[0].ids
    q = len(ids) - 1
    v = torch.randn(tiny_llama.d_model)
    with torch.no_grad(), hooked(tiny_llama.profile.layers, edits=Edits.at([0], [3], [q], v, mode="add"),
                                 record={4: torch.tensor([[q]])}) as rec_add:
        tiny_llama.model(torch.tensor([ids]))
    base = read_states(tiny_llama, [ids], [[q]], layers=[3])[0, 0, 0]
    with torch.no_grad(), hooked(tiny_llama.profile.layers, edits=Edits.at([0], [3], [q], base + v),
                                 record={4: torch.tensor([[q]])}) as rec_rep:
        tiny_llama.model(torch.tensor([ids]))
    torch.testing.assert_close(rec_add[4], rec_rep[4], rtol=1e-5, atol=1e-5)


def test_writes_are_differentiable(tiny_llama, prompts):
    ids = torch.tensor([prompts[0].ids])
    v = torch.randn(tiny_llama.d_model, requires_grad=True)
    with hooked(tiny_llama.profile.layers, edits=Edits.at([0], [3], [ids.shape[1] - 1], v)):
        loss = tiny_llama.model(ids).logits[0, -1].logsumexp(-1)
    loss.backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_hooks_are_removed_even_after_an_error(tiny_llama, prompts):
    layer = tiny_llama.profile.layers[2]
    before = len(layer._forward_pre_hooks)
    with pytest.raises(RuntimeError):
        with hooked(tiny_llama.profile.layers, edits=Edits.at([0], [2], [0], torch.zeros(tiny_llama.d_model))):
            raise RuntimeError("boom")
    assert len(layer._forward_pre_hooks) == before


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layers=[99]), LayerError, "layer 99 is out of range: this model has layers 0..{last_layer}"),
    (dict(positions=[500]), PositionError, "outside its prompt"),
    (dict(vectors=torch.zeros(1, 7)), WidthError, r"\[n, {d_model}\]"),
])
def test_bad_edits_are_one_line_errors(tiny_llama, prompts, kwargs, error, match):
    args = dict(rows=[0], layers=[1], positions=[1], vectors=torch.zeros(1, tiny_llama.d_model))
    args.update(kwargs)
    match = match.format(last_layer=tiny_llama.n_layers - 1, d_model=tiny_llama.d_model)
    with pytest.raises(error, match=match) as err:
        patched_logits(tiny_llama, [prompts[0].ids], Edits.at(**args))
    assert "\n" not in str(err.value)


def test_read_states_checks_layers_positions_and_empty(tiny_llama, prompts):
    with pytest.raises(LayerError):
        read_states(tiny_llama, [prompts[0].ids], [[0]], layers=[tiny_llama.n_layers])
    with pytest.raises(PositionError):
        read_states(tiny_llama, [prompts[0].ids], [[1000]])
    with pytest.raises(EmptyInputError):
        read_states(tiny_llama, [], torch.zeros(0, 1, dtype=torch.long))
