"""Left-padding token-id lists into one batch, keeping each prompt's own positions usable.

A prompt of length ``n`` padded to ``T`` sits in columns ``T - n .. T - 1``; its token at position ``p`` is in
column ``offset + p`` with ``offset = T - n``. Position ids are explicit (``0 .. n - 1`` on the real tokens), so a
padded prompt sees exactly the positions it would see alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from taskvec.errors import EmptyInputError, TokenizationError


@dataclass
class Batch:
    """A left-padded batch.

    Attributes:
        input_ids: ``[batch, T]``.
        attention_mask: ``[batch, T]`` (0 on padding).
        position_ids: ``[batch, T]`` (0 on padding and on the first real token).
        offsets: ``[batch]``; column of prompt position ``p`` in row ``b`` is ``offsets[b] + p``.
        lengths: ``[batch]`` true prompt lengths.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                              self.offsets, self.lengths)))


def check_token_ids(token_ids: Sequence[Sequence[int]], vocab: int) -> None:
    """Raise :class:`TokenizationError` (one line) for a token id outside ``0 .. vocab - 1`` (the embedding would
    fail with an IndexError, or a device-side assert on a GPU)."""
    for b, seq in enumerate(token_ids):
        ids = torch.as_tensor(list(seq), dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise TokenizationError(f"prompt {b}: token id {bad} is outside this model's vocabulary (0..{vocab - 1})")


def left_pad(token_ids: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Left-pad a list of token-id lists into a :class:`Batch`."""
    if len(token_ids) == 0:
        raise EmptyInputError("empty prompt list: give at least one prompt")
    lengths = torch.tensor([len(t) for t in token_ids], dtype=torch.long)
    if int(lengths.min()) == 0:
        raise EmptyInputError(f"prompt {int(lengths.argmin())} has no tokens")
    width = int(lengths.max())
    ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for b, seq in enumerate(token_ids):
        ids[b, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[b, width - len(seq):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, pos, width - lengths, lengths)


LAST_LOGITS = torch.tensor([-1])
"""``logits_to_keep`` for logits at the last column only, as a tensor rather than the int ``1``: given an int, Gemma 4
cuts every other column before its KV-shared layers (a generation shortcut), so a write there at an earlier position
would have no column to go to; a tensor keeps every layer's input whole (the lm head still sees one column)."""


def chunks(n: int, size: int) -> list[range]:
    """Split ``range(n)`` into consecutive ranges of at most ``size`` items."""
    size = max(1, int(size))
    return [range(i, min(n, i + size)) for i in range(0, n, size)]
