"""Devices and dtypes: one-line errors for devices that do not exist, a warning for half precision on a CPU, and a
model dispatched by accelerate (part of its layers offloaded through a max_memory map) giving the same numbers as
the undispatched model in every intervention."""
from __future__ import annotations

import warnings

import pytest
import torch

from taskvec.errors import ChoiceError, DeviceError
from taskvec.models.devices import CPU_BATCH_TOKENS, SlowDtypeWarning, batch_token_budget, resolve_device, resolve_dtype


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line(spec):
    with pytest.raises(DeviceError, match="no CUDA GPU is available here") as err:
        resolve_device(spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec, message", [("tpu", "unknown device 'tpu'"), ("gpu0", "unknown device")])
def test_unknown_devices_are_one_line(spec, message):
    with pytest.raises(DeviceError, match=message):
        resolve_device(spec)


def test_auto_device_and_default_dtypes():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ChoiceError, match="--dtype must be one of"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_half_precision_on_a_cpu_warns_once_and_float32_does_not():
    with pytest.warns(SlowDtypeWarning, match="100x slower"):
        assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_dtype("float32", torch.device("cpu"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llama):
    """A tiny random Llama with smollm2's tokenizer (ids above its 6000 words unused), saved as a checkpoint."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=6000, hidden_size=128, intermediate_size=512,
                                      num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=False)
    model = transformers.AutoModelForCausalLM.from_config(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tiny_llama.tokenizer.save_pretrained(path)  # SmolLM2's
    return path


def test_a_dispatched_model_gives_the_undispatched_numbers(checkpoint, tmp_path):
    from taskvec.intervene import read_states
    from taskvec.models import load_model
    from taskvec.sweep import layer_variants, run_variants, run_variants_naive

    plain = load_model(str(checkpoint))
    size = sum(p.numel() * 4 for p in plain.model.parameters())
    # room for about half the weights in "CPU memory"; the rest is offloaded to disk and streamed in by accelerate
    lm = load_model(str(checkpoint), max_memory={"cpu": int(size * 0.6)}, offload_dir=tmp_path / "offload")
    placed = set(lm.model.hf_device_map.values())
    assert "disk" in placed and "cpu" in placed, lm.model.hf_device_map
    assert lm.device == torch.device("cpu") and batch_token_budget(lm) == CPU_BATCH_TOKENS

    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(10, 5000, (n,), generator=gen).tolist() for n in (9, 12, 7, 11)]
    pos = torch.tensor([[len(p) - 3, len(p) - 1] for p in prompts])
    for model in (plain, lm):
        model.states = read_states(model, prompts, pos)
    torch.testing.assert_close(lm.states, plain.states, rtol=0, atol=1e-5)

    variants = layer_variants(len(prompts), plain.states.roll(1, 0) * 2, pos, range(plain.n_layers))
    ref = run_variants_naive(plain, prompts, variants, return_logits=True).logits
    for model in (plain, lm):
        fast = run_variants(model, prompts, variants, return_logits=True).logits
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-4)


def test_a_model_that_does_not_fit_is_one_line(checkpoint):
    from taskvec.models import load_model

    with pytest.raises(DeviceError, match="does not fit the given devices") as err:
        load_model(str(checkpoint), max_memory={"cpu": 10_000})  # nowhere to offload to
    assert "\n" not in str(err.value)
