"""The states a study patches, read once per task and saved under ``vectors/`` (docs/spec.md A.3–A.4): the source
prompts' global and local vectors, the selection and evaluation prompts' own local states and their dummies'
states, and the controls built from them (the token-identity control, shuffled slots, Trial Avg by mapping).
A file is written once (under a temporary name, linked into place), so ranks and resumed runs read the same numbers.
:mod:`taskvec.study` runs the units that use them.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import torch

import taskvec.artifacts as A
from taskvec.runs import RunStore
from taskvec.task_run import TaskRun, by_mapping
from taskvec.vectors import load_vectors, read_role_states, save_vectors, trial_avg


def _save_once(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Save a vectors file unless it is there: written under a temporary name, then linked into place only if no
    other rank has put it there first (ranks that both need one control task's vectors compute the same numbers),
    so a kill mid-write leaves no half-written file and the file never changes once it is there."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_vectors(tmp, tensors, metadata)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        if not path.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def source_vectors(store: RunStore, tr: TaskRun) -> dict[str, torch.Tensor]:
    """Global and local states of the source prompts (saved before any unit uses them; reloaded on resume)."""
    path = store.path / A.VECTORS / f"{tr.file}.safetensors"
    unit = f"{tr.name}/vectors"
    start = time.perf_counter()
    if not path.exists():
        s = read_role_states(tr.lm, tr.source_prompts)
        g, local = s["query"], s["answers"]
        _save_once(path, {"global_per_prompt": g, "global": g.mean(0), "local": local, "trial_avg": trial_avg(local),
                          "separators_mean": s["separators"].mean(2)},
                   {"model": tr.cfg.model, "task": tr.name, "shape_local": "[P, L, n, d]", "seed": tr.cfg.seed,
                    "separator": tr.cfg.separator})
    if not store.done(unit):
        store.append(unit, [], seconds=round(time.perf_counter() - start, 3))
    return load_vectors(path)[0]


def patch_states(store: RunStore, tr: TaskRun) -> dict[str, torch.Tensor]:
    """States of the selection and evaluation prompts that local patching uses, per split ``s``: ``local_s``
    (the ICL prompts' own local vectors), ``dummy_s`` (the dummy prompts' unpatched answer states: slot means, and
    the no-op fill of the token-identity control), ``dummy_query_s`` (the unpatched dummy's query state: the
    mediation test's null); for the evaluation ICL prompts also ``separators_eval`` and ``query_eval`` (role-matched
    convergence geometry), and the reference mean state over every token of the evaluation prompts (centring)."""
    path = store.path / A.VECTORS / f"{tr.file}.patch.safetensors"
    unit = f"{tr.name}/patch_states"
    start = time.perf_counter()
    if not path.exists():
        tensors = {}
        for split in ("select", "eval"):
            icl, dummy = tr.dummy_select if split == "select" else tr.dummy_eval
            if split == "eval":  # the ICL prompts of local patching are the first evaluation prompts: one pass
                if any(list(a.ids) != list(b.ids) for a, b in zip(icl, tr.eval_prompts)):
                    raise RuntimeError("internal error: the local ICL prompts are not the first evaluation prompts")
                own = read_role_states(tr.lm, tr.eval_prompts, with_mean=True)
                own = {k: v if k == "mean" else v[:len(icl)] for k, v in own.items()}
                tensors["separators_eval"], tensors["query_eval"] = own["separators"], own["query"]
                tensors["reference_mean"] = own["mean"]
            else:
                own = read_role_states(tr.lm, icl)
            plain = read_role_states(tr.lm, dummy)
            tensors[f"local_{split}"] = own["answers"]
            tensors[f"dummy_{split}"], tensors[f"dummy_query_{split}"] = plain["answers"], plain["query"]
        _save_once(path, tensors, {"model": tr.cfg.model, "task": tr.name})
    if not store.done(unit):
        store.append(unit, [], seconds=round(time.perf_counter() - start, 3))
    return load_vectors(path)[0]


def mapping_trial_avg(tr: TaskRun, source: dict, trials) -> torch.Tensor:
    """``[P, L, n, d]``: for each target trial, Trial Avg over the source prompts that share its mapping."""
    return by_mapping(tr, source["local"], trials)


def token_control(tr: TaskRun, src: dict, states: dict, split: str) -> tuple[torch.Tensor, float]:
    """The **token-identity control** of local patching (docs/spec.md A.4): ``[P, L, n, d]``, each slot of each
    ``split`` prompt filled, at every layer, with the state of the **same answer word** at an answer position of a
    *different* prompt (source prompts, or ICL prompts of either split; other inputs — for categorization the
    mapping may differ), preferring the same slot index. A local vector carries more than its token only where
    its own state beats this one. A word found in no other prompt keeps the dummy's own state there (a no-op
    write); the returned fraction of slots filled is reported beside the control."""
    n_split = len(states[f"local_{split}"])
    trials = (tr.select if split == "select" else tr.eval)[:n_split]
    donors = {"source": (tr.source, src["local"]), "select": (tr.select, states["local_select"]),
              "eval": (tr.eval, states["local_eval"])}
    bank: dict[str, list[tuple[str, int, int]]] = {}
    for name, (dtrials, tensor) in donors.items():
        for q, trial in enumerate(dtrials[:len(tensor)]):
            for j, demo in enumerate(trial.demos):
                bank.setdefault(demo.output, []).append((name, q, j))
    rng = random.Random(f"{tr.cfg.seed}/{tr.name}/{split}/token-control")
    out = states[f"dummy_{split}"].clone()
    filled = total = 0
    for p, trial in enumerate(trials):
        for i, demo in enumerate(trial.demos):
            total += 1
            cands = [c for c in bank.get(demo.output, []) if not (c[0] == split and c[1] == p)]
            if cands:
                name, q, j = rng.choice([c for c in cands if c[2] == i] or cands)
                out[p, :, i] = donors[name][1][q, :, j]
                filled += 1
    return out, filled / max(total, 1)


def shuffled_slots(local: torch.Tensor, seed: int) -> torch.Tensor:
    """Null control ``[P, L, n, d]``: each prompt's own local vectors moved to other slots (a seeded derangement
    per prompt, the same at every layer): the right states, each at the wrong demonstration."""
    P, _, n, _ = local.shape
    if n < 2:
        return local.clone()
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty_like(local)
    for p in range(P):
        while True:
            perm = torch.randperm(n, generator=gen)
            if not (perm == torch.arange(n)).any():
                break
        out[p] = local[p][:, perm]
    return out
