"""Last-position predictions from final states: the LM head applied once to many rows, read in vocabulary chunks.

A sweep keeps each variant's final state (the decoder stack's output, after the final norm) at its prompt's last
position and unembeds all of them at the end. That is one pass over the unembedding matrix for every variant of a
sweep instead of one per forward pass (on Gemma the 262k x 640 matrix is 671 MB, streamed once per call), and the
top-1 token and the log-probabilities of a few read ids come from an online log-sum-exp over vocabulary chunks, so
no ``[V, vocab]`` tensor is ever built.

The head is applied as the model applies it (its weight and bias, then the family's logit transform: Gemma's
soft-capping, Cohere's ``logit_scale``, Granite's ``logits_scaling``) and this is verified once per loaded model
against the model's own logits (:func:`direct_head_ok`); where it disagrees, sweeps run the whole model per forward.

Example::

    head = Unembedding(lm)
    top1, lp = head.read(final_states, read_ids)      # [V], [V, K] from [V, d_model]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from taskvec.batching import LAST_LOGITS

VOCAB_CHUNK = 2_048
"""Vocabulary columns per chunk of the online read: a ``[rows, chunk]`` float32 block at a time (8 MB at 1,024
rows), written and read back while it is still in cache. On Gemma (900 rows, 262k words, 2 CPU cores) 2,048 columns
read in 0.90 s what a single full ``lm_head`` matmul alone takes 1.07 s to write (chunks of 32,768: 1.70 s)."""
ROW_CHUNK = 1_024
"""Rows per block of the online read."""


class Unembedding:
    """The LM head of ``lm`` as a function of final states ``[rows, d_model]``."""

    def __init__(self, lm) -> None:
        head = lm.profile.unembed
        if head is None:
            raise ValueError("this model has no LM head to unembed with")
        cfg = getattr(lm.model, "config", None)
        cfg = getattr(cfg, "text_config", None) or cfg
        self.head = head
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        scale = getattr(cfg, "logit_scale", None)  # Cohere multiplies its logits by it
        self.scale = scale if isinstance(scale, (int, float)) and not isinstance(scale, bool) else None
        self.divide = getattr(cfg, "logits_scaling", None)  # Granite divides by it
        weight = getattr(head, "weight", None)
        # a head offloaded by accelerate keeps its weight elsewhere until its own forward runs: call the module
        self.weight = weight if (isinstance(weight, torch.Tensor) and weight.device.type != "meta"
                                 and not hasattr(head, "_hf_hook") and weight.dim() == 2) else None
        self.bias = getattr(head, "bias", None) if self.weight is not None else None
        self.vocab = int(self.weight.shape[0]) if self.weight is not None else None

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            z = z * self.scale
        if self.divide:
            z = z / self.divide
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def logits(self, h: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """``[rows, hi - lo]`` float32 logits of vocabulary columns ``lo:hi`` (default: all) for ``h`` ``[rows, d]``."""
        if self.weight is None:
            z = self.head(h)[:, lo:hi].to(h.device)
        else:
            hi = self.vocab if hi is None else hi
            z = F.linear(h.to(self.weight.device, self.weight.dtype), self.weight[lo:hi],
                         None if self.bias is None else self.bias[lo:hi])
        return self._transform(z.float())

    def read(self, h: torch.Tensor, read: torch.Tensor | None = None, vocab_chunk: int = VOCAB_CHUNK,
             row_chunk: int = ROW_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
        """``(top1 [V], logprobs [V, K])`` on the CPU from final states ``h`` ``[V, d_model]``, as
        :func:`taskvec.scoring.read_logprobs` gives them from full logits (``K = 0`` when ``read`` is ``None``)."""
        V = h.shape[0]
        K = 0 if read is None else read.shape[1]
        top1, lps = torch.empty(V, dtype=torch.long), torch.empty(V, K)
        if self.weight is None:  # the head must run whole: one row block of full logits at a time
            vocab_chunk = None
        else:
            h = h.to(self.weight.device)
        for r0 in range(0, V, row_chunk):
            rows = h[r0:r0 + row_chunk]
            ids = None if read is None else read[r0:r0 + row_chunk].to(rows.device)
            t, lp = self._read_rows(rows, ids, vocab_chunk)
            top1[r0:r0 + len(rows)], lps[r0:r0 + len(rows)] = t, lp
        return top1, lps

    def _read_rows(self, h, ids, vocab_chunk):
        n, dev = h.shape[0], h.device
        full = self.logits(h) if vocab_chunk is None else None
        vocab = full.shape[1] if full is not None else self.vocab
        step = vocab if vocab_chunk is None else vocab_chunk
        m = torch.full((n,), -math.inf, device=dev)
        s = torch.zeros(n, device=dev)
        arg = torch.zeros(n, dtype=torch.long, device=dev)
        raw = None if ids is None else torch.zeros(ids.shape, device=dev)
        for lo in range(0, vocab, step):
            hi = min(vocab, lo + step)
            z = full[:, lo:hi] if full is not None else self.logits(h, lo, hi)
            if raw is not None:
                inside = (ids >= lo) & (ids < hi)
                raw = torch.where(inside, z.gather(1, (ids - lo).clamp(0, hi - lo - 1)), raw)
            cmax, carg = z.max(-1)
            arg = torch.where(cmax > m, carg + lo, arg)  # strictly greater: the first maximum wins, as argmax
            new_m = torch.maximum(m, cmax)
            z = z.sub(new_m[:, None]) if full is not None else z.sub_(new_m[:, None])  # z is ours: in place
            s = s * torch.exp(m - new_m) + z.exp_().sum(-1)
            m = new_m
        lp = torch.zeros(n, 0) if raw is None else (raw - (m + torch.log(s))[:, None]).cpu()
        return arg.cpu(), lp


@torch.no_grad()
def direct_head_ok(lm) -> bool:
    """Whether :class:`Unembedding` applied to the decoder stack's output gives the model's own last-position
    logits (within ``1e-4`` of their scale in float32, ``2e-2`` in half precision). Checked once per loaded model
    on a short prompt and kept in ``lm.profile.direct_head``; a model where it fails is swept with whole-model
    forwards (slower, same numbers)."""
    from taskvec.intervene import _probe_ids, backbone

    profile = lm.profile
    if profile.direct_head is None:
        ok = False
        try:
            ids = _probe_ids(lm)
            ref = lm.model(input_ids=ids, use_cache=False, logits_to_keep=LAST_LOGITS).logits[:, -1].float()
            h = backbone(lm.model)(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
            got = Unembedding(lm).logits(h)
            half = next(lm.model.parameters()).dtype in (torch.float16, torch.bfloat16)
            tol = (2e-2 if half else 1e-4) * max(float(ref.abs().max()), 1e-3)
            ok = got.shape == ref.shape and float((got - ref).abs().max()) <= tol
        except Exception:  # noqa: BLE001 - any failure means: run the whole model
            ok = False
        profile.direct_head = ok
    return bool(profile.direct_head)
