"""Model loading: named offline models, any HF checkpoint directory, profiles, and clear errors."""
from __future__ import annotations

import pytest
import torch
import transformers

import taskvec
from taskvec.errors import ModelNotFoundError
from taskvec.intervene import read_states
from taskvec.models import NAMED_MODELS, profile_of


def test_named_smollm2_profile(smol):
    p = smol.profile
    assert (p.n_layers, p.d_model, p.family) == (30, 576, "llama")
    assert p.bos.prefix_text == "<|endoftext|>" and not p.bos.add_special_tokens
    assert p.final_norm is smol.model.model.norm and p.unembed is smol.model.lm_head
    assert smol.source["gguf_sha256"] and len(smol.source["gguf_sha256"]) == 64


def test_unknown_model_lists_named_models():
    with pytest.raises(ModelNotFoundError) as err:
        taskvec.load_model("no-such-model")
    for name in NAMED_MODELS:
        assert name in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="cannot load|unknown model"):
        taskvec.load_model(str(tmp_path / "nothing-here"))


def _tiny(config_cls, **kw):
    base = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
    base.update(kw)
    return config_cls(**base)


FAMILIES = {
    "llama": lambda: _tiny(transformers.LlamaConfig),
    "qwen2": lambda: _tiny(transformers.Qwen2Config),
    "mistral": lambda: _tiny(transformers.MistralConfig),
    "gemma2": lambda: _tiny(transformers.Gemma2Config, head_dim=16),
    "gemma3_text": lambda: _tiny(transformers.Gemma3TextConfig, head_dim=16),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=49152, n_embd=64, n_layer=3, n_head=4, n_positions=256),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=3,
                                                   num_attention_heads=4, intermediate_size=128,
                                                   max_position_embeddings=256),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_any_hf_checkpoint_directory_loads_and_hooks_match_hidden_states(family, tmp_path, tiny_llama):
    """Randomly initialised tiny models of each family: saved as ordinary HF checkpoints, loaded by path, and
    ``h_l`` read by the hooks equals ``hidden_states[l]``."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(FAMILIES[family]())
    model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)  # SmolLM2's
    lm = taskvec.load_model(str(tmp_path))
    assert lm.profile.family == family and lm.n_layers == 3 and lm.d_model == 64
    ids = lm.tokenizer("Paris is in France", add_special_tokens=False).input_ids
    states = read_states(lm, [ids], [list(range(len(ids)))])[0]
    with torch.no_grad():
        hs = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    for layer in range(3):
        torch.testing.assert_close(states[layer], hs[layer][0], rtol=0, atol=1e-6)


def test_profile_of_unknown_architecture_is_clear():
    with pytest.raises(ModelNotFoundError, match="decoder layers"):
        profile_of(torch.nn.Linear(3, 3))


# ----------------------------------------------------------------------------------------------- model hash
def test_named_model_hash_is_the_converted_checkpoints_sha256(smol):
    from pathlib import Path

    from taskvec.models.registry import cache_dir, model_hash, weights_hash

    sha = smol.source["sha256"]
    assert isinstance(sha, str) and len(sha) == 64 and int(sha, 16) >= 0
    directory = Path(smol.path)
    assert directory.parent == cache_dir() / "models" and (directory / "model.safetensors").exists()
    assert model_hash(smol) == weights_hash(directory) == sha  # memoised: no second read of 540 MB here


def test_checkpoint_directory_hash_follows_the_weights(tmp_path, tiny_llama, monkeypatch):
    import hashlib

    from taskvec.models import registry

    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "_MEMO_MIN_BYTES", 0)  # memoise even these tiny files (in the tmp cache)
    reads = []
    real_sha = registry._sha256
    monkeypatch.setattr(registry, "_sha256", lambda p: reads.append(p) or real_sha(p))

    def save(seed: int, where, **kw):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(FAMILIES["llama"]())
        model.save_pretrained(where, **kw)
        tiny_llama.tokenizer.save_pretrained(where)
        return where

    a = save(0, tmp_path / "a")
    lm = taskvec.load_model(str(a))
    expected = hashlib.sha256((a / "model.safetensors").read_bytes()).hexdigest()
    assert lm.source["sha256"] == expected == registry.model_hash(lm)
    assert len(reads) == 1  # the second hash came from the memo
    assert registry.model_hash(taskvec.load_model(str(save(1, tmp_path / "b")))) != expected
    shards = save(0, tmp_path / "sharded", max_shard_size="2MB")
    files = sorted(shards.glob("*.safetensors"))
    assert len(files) > 1
    lines = "".join(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n" for f in files)
    assert taskvec.load_model(str(shards)).source["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    with pytest.raises(ModelNotFoundError, match="no weight files"):
        registry.weights_hash(tmp_path)
