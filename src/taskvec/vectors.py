"""Task vectors read from ICL prompts (docs/spec.md A.3), and their safetensors files.

Shapes: ``P`` prompts, ``L`` layers, ``n`` demonstrations, ``d`` = d_model.

* :func:`global_vectors` — ``[P, L, d]``: ``h_l`` at each prompt's query position (Hendel-style, per prompt);
  :func:`global_vector` — ``[L, d]`` their mean (the **global task vector** ``g_l``).
* :func:`local_vectors` — ``[P, L, n, d]``: ``h_l`` at each demonstration's answer position.
* :func:`pos_avg` — ``[P, L, n, d]``: each prompt's local vectors averaged over its ``n`` slots (patched at every
  answer position); :func:`trial_avg` — ``[L, n, d]``: slot ``i`` averaged over prompts;
  :func:`trial_avg_by_mapping` — the same within each class -> word mapping of a categorization task (averaging
  across mappings erases the mapping: that version is only a null control).
* :func:`read_role_states` — query, answer and demonstration-separator states of ICL prompts in one pass (states
  compared for convergence must have the same role: an answer state predicts what follows an answer).
* :func:`mean_state` — ``[L, d]``: ``h_l`` averaged over every token of a reference set of prompts (centring).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from taskvec.batching import chunks, left_pad
from taskvec.errors import AlignmentError, EmptyInputError, NonFiniteError, TaskvecError
from taskvec.intervene import backbone, hooked, read_states, run_until_recorded


def global_vectors(lm, prompts: Sequence, layers: Sequence[int] | None = None, batch_size: int = 16) -> torch.Tensor:
    """Per-prompt ``h_l`` at the query position: ``[P, L, d]``."""
    pos = [[p.query_position] for p in prompts]
    return read_states(lm, [p.ids for p in prompts], pos, layers, batch_size)[:, :, 0]


def global_vector(lm, prompts: Sequence, layers: Sequence[int] | None = None, batch_size: int = 16) -> torch.Tensor:
    """The global task vector ``g_l``: mean over prompts of ``h_l`` at the query position, ``[L, d]``."""
    return global_vectors(lm, prompts, layers, batch_size).mean(0)


def read_icl_states(lm, prompts: Sequence, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Global and local states of ICL prompts in one pass: ``([P, L, d], [P, L, n, d])``."""
    n = {len(p.answer_positions) for p in prompts}
    if len(n) != 1:
        raise AlignmentError(f"prompts have different numbers of demonstrations: {sorted(n)}")
    pos = [p.answer_positions + [p.query_position] for p in prompts]
    states = read_states(lm, [p.ids for p in prompts], pos, batch_size=batch_size)
    return states[:, :, -1], states[:, :, :-1]


def read_role_states(lm, prompts: Sequence, batch_size: int = 16, with_mean: bool = False) -> dict[str, torch.Tensor]:
    """The states of every role of ICL prompts in one pass: ``query`` ``[P, L, d]`` (the final separator),
    ``answers`` ``[P, L, n, d]`` (each demonstration's answer position: the local vectors) and ``separators``
    ``[P, L, n, d]`` (the token before each answer: the demonstration's own separator, the state with the query's
    job — it predicts the answer). ``with_mean`` adds ``mean`` ``[L, d]``, :func:`mean_state` of the same prompts
    from the same pass."""
    n = {len(p.answer_positions) for p in prompts}
    if len(n) != 1:
        raise AlignmentError(f"prompts have different numbers of demonstrations: {sorted(n)}")
    k = n.pop()
    pos = [p.answer_positions + [a - 1 for a in p.answer_positions] + [p.query_position] for p in prompts]
    if with_mean:
        states, mean = _states_and_mean(lm, prompts, pos, batch_size)
    else:
        states = read_states(lm, [p.ids for p in prompts], pos, batch_size=batch_size)
    out = {"query": states[:, :, -1], "answers": states[:, :, :k], "separators": states[:, :, k:2 * k]}
    return dict(out, mean=mean) if with_mean else out


def local_vectors(lm, prompts: Sequence, batch_size: int = 16) -> torch.Tensor:
    """Local task vectors: ``h_l`` at every answer position, ``[P, L, n, d]``."""
    return read_icl_states(lm, prompts, batch_size)[1]


def pos_avg(local: torch.Tensor) -> torch.Tensor:
    """Pos Avg: ``[P, L, n, d]`` -> the mean over the ``n`` slots of each prompt, repeated at every slot."""
    return local.mean(-2, keepdim=True).expand_as(local).contiguous()


def trial_avg(local: torch.Tensor) -> torch.Tensor:
    """Trial Avg: ``[P, L, n, d]`` -> ``[L, n, d]``, each slot averaged over the prompts."""
    return local.mean(0)


def trial_avg_by_mapping(local: torch.Tensor, mappings: Sequence) -> dict:
    """Trial Avg within each class -> word mapping: ``{mapping: [L, n, d]}``, slot ``i`` averaged over the prompts
    whose trial has that mapping (``mappings[p]``, e.g. ``trial.label_words``; ``None`` for knowledge tasks, where
    every prompt shares one "mapping")."""
    if len(mappings) != local.shape[0]:
        raise AlignmentError(f"{len(mappings)} mappings for {local.shape[0]} prompts")
    groups: dict = {}
    for p, m in enumerate(mappings):
        groups.setdefault(m, []).append(p)
    return {m: local[idx].mean(0) for m, idx in groups.items()}


def mean_state(lm, prompts: Sequence, batch_size: int = 16, skip_first: bool = True) -> torch.Tensor:
    """``[L, d]``: ``h_l`` averaged over every token of ``prompts`` (a reference set for centring states: the
    residual stream shares a large mean direction at every position, which raw cosines are dominated by).

    ``skip_first`` leaves out each prompt's first token (the BOS, whose states are outliers).
    """
    return _states_and_mean(lm, prompts, None, batch_size, skip_first)[1]


@torch.no_grad()
def _states_and_mean(lm, prompts: Sequence, positions: list[list[int]] | None, batch_size: int = 16,
                     skip_first: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One pass over ``prompts`` (batches as :func:`~taskvec.intervene.read_states` cuts them): the states at
    ``positions`` (``[P, L, K, d]``, ``None`` if no positions) and the mean state over every token (``[L, d]``)."""
    if len(prompts) == 0:
        raise EmptyInputError("no reference prompts to average")
    layers = list(range(lm.n_layers))
    total = torch.zeros(len(layers), lm.d_model, dtype=torch.float64)
    read = None if positions is None else torch.empty(len(prompts), len(layers), len(positions[0]), lm.d_model)
    count = 0
    for rng in chunks(len(prompts), batch_size):
        batch = left_pad([prompts[i].ids for i in rng], lm.tokenizer.pad_token_id).to(lm.device)
        mask = batch.attention_mask.bool().clone()
        if skip_first:
            mask[torch.arange(len(rng), device=mask.device), batch.offsets] = False
        with hooked(lm.profile.layers, record={l: None for l in layers}, stop_after_record=True) as rec:
            run_until_recorded(backbone(lm.model), input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, use_cache=False)
        for l in layers:
            total[l] += rec[l][mask].double().sum(0).cpu()
        if read is not None:
            cols = torch.tensor([positions[i] for i in rng], device=lm.device) + batch.offsets[:, None]
            rows = torch.arange(len(rng), device=lm.device)[:, None]
            read[rng.start:rng.stop] = torch.stack([rec[l][rows, cols] for l in layers], dim=1).float().cpu()
        count += int(mask.sum())
    return read, (total / max(count, 1)).float()


def norm_matched_random(vectors: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Random Gaussian directions with the same norm as each vector (last axis), same shape."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(vectors.shape, generator=gen)
    return noise / noise.norm(dim=-1, keepdim=True) * vectors.norm(dim=-1, keepdim=True)


def save_vectors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Save named vectors to a safetensors file with JSON metadata (model, task, layers, ...)."""
    path = Path(path)
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NonFiniteError(f"vector {name!r} contains NaN or inf; refusing to save it")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().float().cpu() for k, v in tensors.items()}, str(path),
              metadata={"taskvec": json.dumps(metadata or {})})
    return path


def load_vectors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load what :func:`save_vectors` wrote: ``(tensors, metadata)``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise TaskvecError(f"no vector file at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("taskvec", "{}"))
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as err:
        raise TaskvecError(f"{path} is not a vector file saved by taskvec ({str(err).splitlines()[0]}): "
                           "delete it (a resumed study rewrites it) or restore it") from None
