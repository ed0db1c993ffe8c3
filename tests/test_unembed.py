"""The online read of :class:`taskvec.unembed.Unembedding` (vocabulary chunks, log-sum-exp) against full logits."""
from __future__ import annotations

import pytest
import torch

from taskvec.scoring import read_logprobs
from taskvec.unembed import Unembedding, direct_head_ok


@pytest.mark.parametrize("vocab_chunk,row_chunk", [(7, 3), (64, 1024), (10_000, 5)])
def test_chunked_read_equals_log_softmax_of_full_logits(smol, vocab_chunk, row_chunk):
    head = Unembedding(smol)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(11, smol.d_model, generator=gen) * 3
    read = torch.randint(0, head.vocab, (11, 4), generator=gen)
    read[0] = torch.tensor([0, head.vocab - 1, vocab_chunk - 1, vocab_chunk])  # chunk edges
    full = head.logits(h)
    assert full.shape == (11, head.vocab)
    want_top1, want_lp = read_logprobs(full, read)
    small = Unembedding(smol)
    small.vocab = head.vocab
    top1, lp = small.read(h, read, vocab_chunk=vocab_chunk, row_chunk=row_chunk)
    assert torch.equal(top1, want_top1)
    torch.testing.assert_close(lp, want_lp, rtol=0, atol=2e-5)
    top1_only, none = head.read(h, None, vocab_chunk=vocab_chunk, row_chunk=row_chunk)
    assert torch.equal(top1_only, want_top1) and none.shape == (11, 0)


def test_ties_go_to_the_first_maximum_as_argmax_does(smol):
    head = Unembedding(smol)
    h = torch.zeros(2, smol.d_model)  # every logit equal (no bias): argmax is token 0
    assert head.read(h, None, vocab_chunk=1000)[0].tolist() == read_logprobs(head.logits(h), None)[0].tolist() == [0, 0]


def test_the_head_is_verified_against_the_models_own_logits(smol):
    assert direct_head_ok(smol) is True and smol.profile.direct_head is True
