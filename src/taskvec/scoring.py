"""Scoring a prediction at a prompt's last position, in one place.

The chain is always the same: a prompt's **targets** (its answer's first token, and for categorization the label
words' tokens) → the **read ids** (target first, then the labels) → the model is **run** → from the logits at the
last position: ``correct`` (argmax over the whole vocabulary is the target), ``target_logprob``, and for
categorization ``label_correct`` (argmax among the label tokens is the target). The study, the sweeps, dPCA's
ablations and the heads analysis all score through these functions; :func:`taskvec.sweep.score_variants` is the
whole chain for patched variants.

Example::

    targets, labels = targets_of(prompts)                  # [P], [P, C] or None
    top1, lp = read_logprobs(logits, read_ids(targets, labels))
    table = score(top1, lp, targets, labels)               # correct, target_logprob[, label_correct]
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from taskvec.errors import ConfigError


def targets_of(prompts: Sequence, index: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets of ``prompts[i]`` for each ``i`` in ``index`` (default: every prompt).

    Returns:
        ``(targets [V], label_ids [V, C] or None)``; label ids only when every prompt has them (categorization).
    """
    index = range(len(prompts)) if index is None else index
    targets = torch.tensor([prompts[i].target_id for i in index], dtype=torch.long)
    has_labels = len(prompts) > 0 and all(p.label_ids is not None for p in prompts)
    labels = torch.tensor([list(prompts[i].label_ids) for i in index], dtype=torch.long) if has_labels else None
    return targets, labels


def read_ids(targets: torch.Tensor, label_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``[V, 1 + C]``: the target token, then the label tokens (if any) — the log-probabilities to read."""
    cols = [targets[:, None]]
    if label_ids is not None:
        cols.append(label_ids)
    return torch.cat(cols, 1)


def read_logprobs(logits: torch.Tensor, read: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top1 [V], logprobs [V, K])`` on the CPU from last-position ``logits`` ``[V, vocab]``; ``K = 0`` when
    ``read`` is ``None``. Log-probabilities are taken over the full vocabulary, in float32."""
    logits = logits.float()
    top1 = logits.argmax(-1)
    if read is None or read.numel() == 0:
        return top1.cpu(), torch.zeros(logits.shape[0], 0)
    return top1.cpu(), torch.log_softmax(logits, -1).gather(1, read.to(logits.device)).cpu()


def score(top1: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor,
          label_ids: torch.Tensor | None = None) -> pd.DataFrame:
    """One row per prediction: ``correct``, ``target_logprob`` and, with ``label_ids`` ``[V, C]``,
    ``label_correct``. ``logprobs`` must be read at :func:`read_ids` ``(targets, label_ids)``."""
    df = pd.DataFrame({
        "correct": (top1 == targets).numpy().astype(float),
        "target_logprob": logprobs[:, 0].numpy(),
    })
    if label_ids is not None:
        choice = label_ids.gather(1, logprobs[:, 1:].argmax(-1, keepdim=True)).squeeze(1)
        df["label_correct"] = (choice == targets).numpy().astype(float)
    return df


def main_column(categorization: bool) -> str:
    """The accuracy a task is judged by: ``label_correct`` for categorization (the answer among the two label
    words), ``correct`` (argmax over the vocabulary) otherwise."""
    return "label_correct" if categorization else "correct"


def select_layer(rows: pd.DataFrame) -> int:
    """The layer with the highest mean score on selection rows (ties: higher mean target log-prob, then the lower
    layer)."""
    if rows.empty:
        raise ConfigError("no selection rows to choose a layer from")
    g = rows.groupby("layer").agg(score=("score", "mean"), lp=("target_logprob", "mean")).reset_index()
    g = g.sort_values(["score", "lp", "layer"], ascending=[False, False, True])
    return int(g.layer.iloc[0])
