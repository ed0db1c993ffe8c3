"""Shared fixtures. Tests run offline. Two models (docs/architecture.md, "Tests"):

* :func:`tiny_llama`: a tiny random Llama with SmolLM2's real tokenizer, for mechanics (hooks, sweeps, patching,
  prompt layout, CLI plumbing, run stores, reports): the default suite;
* :func:`smol`: the real smollm2-135m (converted once into the cache), for the real model's numbers: those tests
  are ``@pytest.mark.slow`` (``make test-slow``)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.manual_seed(0)


@pytest.fixture(scope="session")
def smol():
    """The real SmolLM2-135M (float32, CPU): for tests that check the real model's numbers (ICL accuracy, that a
    task vector works, reference logits). Such tests are marked ``@pytest.mark.slow`` (``make test-slow``)."""
    import taskvec

    return taskvec.load_model("smollm2-135m")


TINY_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)
"""The tiny random Llama of :func:`tiny_llama`: SmolLM2's kind of model (Llama, grouped-query attention, tied
embeddings) at 6 layers x 32 wide, 4 heads of 8 (the width of ``taskvec.models.tiny``'s Llama). Few layers because
a study's sweeps cost about the square of the depth (a variant per layer, each run through the layers above it),
and a model this thin costs per token, not per weight; with SmolLM2's 49k vocabulary its weights stay under 8 MB,
so hashing them leaves no entry in the cache's sha256 memo."""


def smollm2_tokenizer():
    """SmolLM2-135M's real tokenizer, read offline from its converted checkpoint (no weights are loaded), with the
    BOS token its named profile prepends (``<|endoftext|>``), so a checkpoint saved with it loads with the named
    model's BOS policy."""
    from transformers import AutoTokenizer

    from taskvec.models.registry import NAMED_MODELS, prepare_named

    tokenizer = AutoTokenizer.from_pretrained(str(prepare_named("smollm2-135m")))
    tokenizer.bos_token = NAMED_MODELS["smollm2-135m"].bos.prefix_text
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tiny_llama(path, **shape):
    """A tiny random ``LlamaForCausalLM`` (:data:`TINY_LLAMA`, updated by ``shape``) with SmolLM2's real tokenizer
    and BOS policy, saved as an HF checkpoint in ``path`` and loaded by :func:`taskvec.load_model` (so ``lm.path``
    and the weights' sha256 are real, and ``--model <lm.path>`` works on the command line)."""
    import transformers

    import taskvec
    from taskvec.models.registry import NAMED_MODELS

    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      **{**TINY_LLAMA, **shape})
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    lm = taskvec.load_model(str(path))
    assert lm.profile.bos == NAMED_MODELS["smollm2-135m"].bos, lm.profile.bos  # prompts laid out as SmolLM2's
    return lm


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """The tiny random Llama with SmolLM2's tokenizer (:func:`load_tiny_llama`): the default model of tests that
    exercise mechanics (hooks, sweeps, patching, prompt layout, CLI plumbing, run stores, reports). Its numbers mean
    nothing: a test that checks what a real model does uses :func:`smol` and ``@pytest.mark.slow``."""
    return load_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def cli(*args, env: dict | None = None):
    """Run the ``taskvec`` command line in this process, as its console script does (:func:`taskvec.cli.main`, so
    usage errors go through the same one-line handling), under typer's ``CliRunner`` isolation (stdout and stderr
    captured apart). Returns a ``typer.testing.Result`` (``exit_code``, ``stdout``, ``stderr``, ``output``). An
    exception that is not the command's own exit is not caught: a traceback fails the test. One subprocess test
    (``tests/test_cli.py``) runs the installed console script itself."""
    import sys

    from typer.testing import CliRunner, Result

    from taskvec.cli import main

    runner = CliRunner()
    code = 0
    with runner.isolation(env=env) as (out, err, both):
        try:
            main([str(a) for a in args])
        except SystemExit as end:
            code = end.code if isinstance(end.code, int) else 0 if end.code is None else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            captured = out.getvalue(), err.getvalue(), both.getvalue()
    return Result(runner, *captured, return_value=None, exit_code=code, exception=None)


@pytest.fixture(scope="session")
def capital_trials():
    """Eight hand-written country -> capital trials of seven demonstrations each."""
    from taskvec.tasks.base import Example, Trial

    pairs = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
             ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima")]
    return [Trial(tuple(Example(a, b) for a, b in pairs[:i] + pairs[i + 1:]), Example(*pairs[i]))
            for i in range(len(pairs))]


SMALL_STUDY = dict(model="smollm2-135m", tasks=["antonyms", "simple_string"], n_trials=4, n_select=4, n_eval=6,
                   n_local_select=3, n_local_eval=4, n_demos=4, demo_counts=[0, 2], spans=["single", "from"],
                   kofn_subsets=1, fv_n_cie=2, fv_k=3, fv_n_tokens=3,
                   fv_tasks="all")
"""A small study (a knowledge and a categorization task, both spans): every unit, figure and verdict. Its config
names smollm2-135m (the tokenizer, prompts and config are that run's); :func:`small_study` passes the tiny Llama as
``lm=`` (``config.json``'s ``model_source`` says which weights ran)."""


@pytest.fixture(scope="session")
def small_study(tiny_llama, tmp_path_factory):
    """The run directory of :data:`SMALL_STUDY` on the tiny random Llama (:func:`tiny_llama`, SmolLM2's tokenizer:
    the same prompts), run once per test session: the study tests read its tables (rows, layers, selection, files),
    the browser test its report. Its numbers mean nothing; the study's numbers on the real model are checked by
    the slow end-to-end runs (``tests/test_e2e.py``)."""
    from taskvec.kinds import run_study
    from taskvec.study import StudyConfig

    out = tmp_path_factory.mktemp("study") / "run"
    run_study(StudyConfig(**SMALL_STUDY), out, lm=tiny_llama)
    return out
