"""Task vectors read from ICL prompts (SPEC A.3), and their safetensors files.

Shapes: ``P`` prompts, ``L`` layers, ``n`` demonstrations, ``d`` = d_model.

* :func:`global_vectors` — ``[P, L, d]``: ``h_l`` at each prompt's query position (Hendel-style, per prompt);
  :func:`global_vector` — ``[L, d]`` their mean (the **global task vector** ``g_l``).
* :func:`local_vectors` — ``[P, L, n, d]``: ``h_l`` at each demonstration's answer position.
* :func:`pos_avg` — ``[P, L, n, d]``: each prompt's local vectors averaged over its ``n`` slots (patched at every
  answer position); :func:`trial_avg` — ``[L, n, d]``: slot ``i`` averaged over prompts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from taskvec.errors import AlignmentError, NonFiniteError, TaskvecError
from taskvec.intervene import read_states


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


def local_vectors(lm, prompts: Sequence, batch_size: int = 16) -> torch.Tensor:
    """Local task vectors: ``h_l`` at every answer position, ``[P, L, n, d]``."""
    return read_icl_states(lm, prompts, batch_size)[1]


def pos_avg(local: torch.Tensor) -> torch.Tensor:
    """Pos Avg: ``[P, L, n, d]`` -> the mean over the ``n`` slots of each prompt, repeated at every slot."""
    return local.mean(-2, keepdim=True).expand_as(local).contiguous()


def trial_avg(local: torch.Tensor) -> torch.Tensor:
    """Trial Avg: ``[P, L, n, d]`` -> ``[L, n, d]``, each slot averaged over the prompts."""
    return local.mean(0)


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
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise TaskvecError(f"no vector file at {path}")
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("taskvec", "{}"))
    return load_file(str(path)), meta
