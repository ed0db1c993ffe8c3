"""The one hook manager: named sites, composition order, and hooks always removed."""
from __future__ import annotations

import pytest
import torch

from taskvec.errors import ChoiceError
from taskvec.hooks import Hooks, HookSites


@pytest.fixture(scope="module")
def tiny():
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      attn_implementation="eager")
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 3]])


def test_hooks_are_removed_after_the_block_and_after_an_error(tiny):
    sites = HookSites(list(tiny.model.layers), tiny.config)
    with Hooks(sites).add("h.1", lambda h: None).add("heads.2", lambda z: None).add("out.0", lambda o: None):
        assert _hook_count(tiny) == 3
        tiny(input_ids=IDS)
    assert _hook_count(tiny) == 0

    def boom(h):
        raise RuntimeError("inside the forward")

    with pytest.raises(RuntimeError, match="inside the forward"), Hooks(sites).add("h.0", boom):
        tiny(input_ids=IDS)
    assert _hook_count(tiny) == 0


@pytest.mark.parametrize("site", ["h5", "resid.1", "h.9", "heads.-1", "h.x"])
def test_bad_site_names_are_one_line_errors(tiny, site):
    with pytest.raises(ChoiceError) as err:
        Hooks(HookSites(list(tiny.model.layers), tiny.config)).add(site, lambda v: None)
    assert "\n" not in str(err.value) and site in str(err.value)


@torch.no_grad()
def test_h_site_is_the_residual_stream_entering_the_layer(tiny):
    seen = {}
    with Hooks(HookSites(list(tiny.model.layers))).add("h.2", lambda h: seen.setdefault("h", h.clone())):
        ref = tiny(input_ids=IDS, output_hidden_states=True)
    torch.testing.assert_close(seen["h"], ref.hidden_states[2], rtol=0, atol=0)


@torch.no_grad()
def test_heads_site_is_the_output_projection_input_split_by_head(tiny):
    """The value is o_proj's input viewed as [B, T, H, hd]; a write to one head changes only that head's slice."""
    sites = HookSites(list(tiny.model.layers), tiny.config)
    projs, n_heads, head_dim = sites.head_geometry()
    assert (n_heads, head_dim) == (4, 8)
    raw = []
    handle = projs[1].register_forward_hook(lambda m, args, out: raw.append(args[0].clone()))  # after pre-hooks
    try:
        seen = {}
        with Hooks(sites).add("heads.1", lambda z: seen.setdefault("z", z.clone())):
            tiny(input_ids=IDS)

        def zero_head_2(z):
            z = z.clone()
            z[:, :, 2] = 0
            return z

        with Hooks(sites).add("heads.1", zero_head_2):
            tiny(input_ids=IDS)
    finally:
        handle.remove()
    clean, written = raw
    assert seen["z"].shape == (1, IDS.shape[1], 4, 8)
    torch.testing.assert_close(seen["z"].reshape(clean.shape), clean, rtol=0, atol=0)
    assert (written[..., 16:24] == 0).all()
    torch.testing.assert_close(written[..., :16], clean[..., :16], rtol=0, atol=0)
    torch.testing.assert_close(written[..., 24:], clean[..., 24:], rtol=0, atol=0)


@torch.no_grad()
def test_attn_mask_site_controls_what_a_layer_attends_to(tiny):
    """Letting every token attend only to itself in every layer makes the last token's prediction that of the
    token alone (values carry no position; RoPE cancels in a token's score with itself)."""
    T = IDS.shape[1]
    self_only = torch.full((T, T), torch.finfo(torch.float32).min).fill_diagonal_(0.0)[None, None]
    hooks = Hooks(HookSites(list(tiny.model.layers)))
    for layer in range(3):
        hooks.add(f"attn_mask.{layer}", lambda mask: self_only)
    with hooks:
        masked = tiny(input_ids=IDS).logits[0, -1]
    alone = tiny(input_ids=IDS[:, -1:]).logits[0, -1]
    full = tiny(input_ids=IDS).logits[0, -1]
    torch.testing.assert_close(masked, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, alone, atol=1e-3)


@torch.no_grad()
def test_functions_on_one_site_run_in_order_and_masks_before_h(tiny):
    order = []
    hooks = Hooks(HookSites(list(tiny.model.layers)))
    hooks.add("h.1", lambda h: order.append("h-first") or h + 1.0)
    hooks.add("h.1", lambda h: order.append("h-second") or h * 2.0)
    hooks.add("attn_mask.1", lambda m: order.append("mask"))
    seen = {}
    hooks.add("out.0", lambda out: seen.setdefault("out0", out.clone()))
    with hooks:
        tiny(input_ids=IDS)
    assert order == ["mask", "h-first", "h-second"]
    with Hooks(HookSites(list(tiny.model.layers))).add("h.1", lambda h: seen.setdefault("h1", h.clone())):
        tiny(input_ids=IDS)
    torch.testing.assert_close(seen["out0"], seen["h1"], rtol=0, atol=0)  # layer 0's output is h_1
