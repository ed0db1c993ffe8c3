"""The online read of :class:`taskvec.unembed.Unembedding` (vocabulary chunks, log-sum-exp) against full logits."""
from __future__ import annotations

import pytest
import torch

from taskvec.scoring import read_logprobs
from taskvec.unembed import Unembedding, direct_head_ok


@pytest.fixture(scope="module")
def vocab_256():
    """The tiny random Llama of :mod:`taskvec.models.tiny` (a 256-token vocabulary: chunks of 7 are 37 chunks, not
    the 7000 of SmolLM2's vocabulary)."""
    from taskvec.models.tiny import build_tiny

    return build_tiny("llama")


@pytest.mark.parametrize("model, vocab_chunk, row_chunk", [("vocab_256", 7, 3), ("tiny_llama", 64, 1024),
                                                          ("tiny_llama", 10_000, 5)])
def test_chunked_read_equals_log_softmax_of_full_logits(request, model, vocab_chunk, row_chunk):
    lm = request.getfixturevalue(model)
    head = Unembedding(lm)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(11, lm.d_model, generator=gen) * 3
    read = torch.randint(0, head.vocab, (11, 4), generator=gen)
    read[0] = torch.tensor([0, head.vocab - 1, vocab_chunk - 1, vocab_chunk])  # chunk edges
    full = head.logits(h)
    assert full.shape == (11, head.vocab)
    want_top1, want_lp = read_logprobs(full, read)
    small = Unembedding(lm)
    small.vocab = head.vocab
    top1, lp = small.read(h, read, vocab_chunk=vocab_chunk, row_chunk=row_chunk)
    assert torch.equal(top1, want_top1)
    torch.testing.assert_close(lp, want_lp, rtol=0, atol=2e-5)
    top1_only, none = head.read(h, None, vocab_chunk=vocab_chunk, row_chunk=row_chunk)
    assert torch.equal(top1_only, want_top1) and none.shape == (11, 0)


def test_ties_go_to_the_first_maximum_as_argmax_does(tiny_llama):
    head = Unembedding(tiny_llama)
    h = torch.zeros(2, tiny_llama.d_model)  # every logit equal (no bias): argmax is token 0
    assert head.read(h, None, vocab_chunk=1000)[0].tolist() == read_logprobs(head.logits(h), None)[0].tolist() == [0, 0]


def test_the_head_is_verified_against_the_models_own_logits(tiny_llama):
    assert direct_head_ok(tiny_llama) is True and tiny_llama.profile.direct_head is True
