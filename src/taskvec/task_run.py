"""What the units of one study task share (:class:`TaskRun`): the task, its three disjoint sets of trials
(``source``, ``select``, ``eval``) and their prompts, and the batched layer sweep that scores vectors on them
(:func:`layer_rows`). :mod:`taskvec.study` and :mod:`taskvec.study_function_vectors` build their units on it.

Example::

    tr = TaskRun("antonyms", StudyConfig(model="smollm2-135m", quick=True).effective(), lm)
    rows = layer_rows(tr, tr.zero_shot("select"), {"global": vectors}, "query",
                      {"global": list(range(lm.n_layers))}, "single", "global", "select")
"""
from __future__ import annotations

from functools import cached_property
from typing import Literal

import pandas as pd
import torch

from taskvec.errors import ConfigError
from taskvec.models.devices import batch_token_budget
from taskvec.prompts import Template, build_prompts, check_aligned, dummy_trials, zero_shot
from taskvec.runs import slug
from taskvec.scoring import main_column, select_layer
from taskvec.sweep import Variant, layer_variants, score_variants
from taskvec.tasks import first_token_id, task_for


def held_out_trials(task, n: int, n_demos: int | None, seed: int) -> list:
    """``n`` trials whose queries are pairwise distinct (so a selection and an evaluation split drawn from them
    share no query, and no zero-shot prompt is counted twice). Deterministic in ``seed``."""
    out, seen = [], set()
    for round_ in range(50):
        for trial in task.sample_trials(n, n_demos, seed=seed + 7919 * round_):
            if trial.query.input not in seen:
                seen.add(trial.query.input)
                out.append(trial)
                if len(out) == n:
                    return out
    raise ConfigError(f"task {task.name!r} has too few distinct queries for {n} selection + evaluation trials "
                      f"(found {len(out)}); lower --n-select / --n-eval")


class TaskRun:
    """What the units of one task share: its task object, the three sets of trials and their prompts."""

    def __init__(self, name: str, cfg, lm):
        self.spec, self.cfg, self.lm = name, cfg, lm
        self.name = cfg.task_names().get(name, name)  # a task file goes by its stem, not its path
        params = cfg.task_params_for(name)
        if self.name != name:
            params.setdefault("name", self.name)
        self.task = task_for(name, lm.tokenizer, **params)
        self.template = Template(cfg.separator, cfg.joiner)
        self.categorization = self.task.kind == "categorization"
        self.source = self.task.sample_trials(cfg.n_trials, cfg.n_demos, seed=cfg.seed)
        held = held_out_trials(self.task, cfg.n_select + cfg.n_eval, cfg.n_demos, cfg.seed + 10_007)
        self.select, self.eval = held[:cfg.n_select], held[cfg.n_select:]
        self.file = slug(self.name)

    @cached_property
    def source_prompts(self):
        return build_prompts(self.lm, self.source, self.template)

    @cached_property
    def head_outputs(self) -> torch.Tensor:
        """Every head's last-token output on the source prompts, ``[P_source, L, H, hd]`` float32: recorded once
        per task (the function vector's head means; a control task's serve every task it controls)."""
        from taskvec.analysis.heads import record_head_outputs

        return record_head_outputs(self.lm, list(self.source_prompts)).float()

    @cached_property
    def eval_prompts(self):
        return build_prompts(self.lm, self.eval, self.template)

    def zero_shot(self, split: str):
        return build_prompts(self.lm, zero_shot(self.select if split == "select" else self.eval), self.template)

    def dummies(self, split: str):
        """``(icl, dummy)`` prompts for local patching on a split: dummy = same inputs, random answers, the same
        token layout (redrawn up to 8 times where a tokenizer merges differently; then an error)."""
        n = self.cfg.n_local_select if split == "select" else self.cfg.n_local_eval
        trials = (self.select if split == "select" else self.eval)[:n]
        icl = build_prompts(self.lm, trials, self.template)
        salt = 0 if split == "select" else 500_009
        out = []
        for i, trial in enumerate(trials):
            for attempt in range(8):
                d = build_prompts(self.lm, dummy_trials([trial], [self.task.answer_pool(trial)],
                                                        self.cfg.seed + salt + 31 * i + attempt, self.lm.tokenizer),
                                  self.template)[0]
                if len(d) == len(icl[i]) and d.answer_positions == icl[i].answer_positions:
                    break
            out.append(d)
        check_aligned(icl, out)
        return icl, out

    @cached_property
    def dummy_select(self):
        return self.dummies("select")

    @cached_property
    def dummy_eval(self):
        return self.dummies("eval")

    def score_column(self) -> str:
        return main_column(self.categorization)

    def run(self, prompts, variants: list[Variant], meta: list[dict], label: str,
            mode: Literal["replace", "add"] = "replace") -> list[dict]:
        """Run variants on prompts (written over the state, or added to it) and return one row per variant: ``meta``
        + scores (``score`` is label-restricted accuracy for categorization, accuracy over the vocabulary
        otherwise)."""
        budget = self.cfg.max_batch_tokens or batch_token_budget(self.lm)
        scores = score_variants(self.lm, prompts, variants, mode, max_batch_tokens=budget,
                                progress=f"{self.name} {label}")
        df = pd.concat([pd.DataFrame(meta), scores], axis=1)
        df["score"] = df[self.score_column()]
        return df.to_dict("records")

    def clean(self, prompts, **tags) -> list[dict]:
        variants = [Variant.clean(i, self.lm.d_model) for i in range(len(prompts))]
        return self.run(prompts, variants, [dict(prompt=i, **tags) for i in range(len(prompts))], "clean")


def chance_level(tr: TaskRun) -> float:
    """Chance of the reported score: 1/2 for two labels; 1/(number of distinct answers' first tokens) otherwise."""
    if tr.categorization:
        return 1.0 / len(tr.task.labels)
    pool = tr.task.answer_pool(tr.source[0])
    return 1.0 / len({first_token_id(tr.lm.tokenizer, a) for a in pool})


def mapping_of(tr: TaskRun, trial) -> tuple | None:
    """A trial's class -> word mapping (categorization; ``None`` for a knowledge task)."""
    return trial.label_words if tr.categorization else None


def by_mapping(tr: TaskRun, per_source: torch.Tensor, trials) -> torch.Tensor:
    """``[T, ...]``: for each target trial, the mean of ``per_source`` (``[P_source, ...]``) over the source prompts
    that share its class -> word mapping (knowledge tasks: every source prompt). Averaging across mappings erases
    the mapping (docs/spec.md A.3), so the global vector, Trial Avg and the separator states are built this way."""
    groups: dict = {}
    for p, t in enumerate(tr.source):
        groups.setdefault(mapping_of(tr, t), []).append(p)
    missing = {mapping_of(tr, t) for t in trials} - set(groups)
    if missing:
        raise ConfigError(f"{tr.name}: no source prompt has the label mapping {sorted(missing)[0]}; raise --n-trials")
    means = {k: per_source[idx].mean(0) for k, idx in groups.items()}
    return torch.stack([means[mapping_of(tr, t)] for t in trials])


def layer_rows(tr: TaskRun, prompts, vectors: dict[str, torch.Tensor], positions: str, layers: dict[str, list[int]],
               span: str, experiment: str, split: str, mode: Literal["replace", "add"] = "replace") -> list[dict]:
    """Every named vector (``[L, d]`` shared or ``[P, L, K, d]`` per prompt) at its layers, stacked into one run;
    one row per (vector, prompt, layer): ``experiment, vector, span, split, prompt, layer`` + scores."""
    pos = (torch.tensor([[p.query_position] for p in prompts]) if positions == "query"
           else torch.tensor([p.answer_positions for p in prompts]))
    variants, meta = [], []
    for name, vec in vectors.items():
        if vec.dim() == 2:  # [L, d] -> shared [L, 1, d]
            vec = vec[:, None, :]
        if vec.shape[-2] != pos.shape[1]:
            vec = vec.expand(*vec.shape[:-2], pos.shape[1], vec.shape[-1])
        vs = layer_variants(len(prompts), vec, pos, layers[name], span)
        variants += vs
        meta += [dict(experiment=experiment, vector=name, span=span, split=split, prompt=p, layer=l)
                 for p in range(len(prompts)) for l in layers[name]]
    return tr.run(prompts, variants, meta, f"{experiment}/{split}", mode)


def selected_layer(rows: list[dict], vector: str, span: str, min_layer: int = 0) -> int:
    """The selected layer of ``vector`` (:func:`taskvec.scoring.select_layer` on its selection rows)."""
    df = pd.DataFrame(rows)
    return select_layer(df[(df.vector == vector) & (df.span == span) & (df.split == "select")
                           & (df.layer >= min_layer)])
