"""The local-vs-global task-vector study (docs/spec.md A.1-A.4, A.8): one config -> units of work -> run store -> report.

Three disjoint sets of trials per task, so that **selection is never evaluation**:

* ``source`` (``n_trials`` ICL prompts): the global vector (mean query state), Trial Avg, the other-task control,
  convergence;
* ``select`` (``n_select`` trials): every layer is swept here, and each vector's best layer is chosen here
  (global: zero-shot prompts; local: the first ``n_local_select`` as dummy prompts);
* ``eval`` (``n_eval`` trials, queries distinct from ``select``'s): every reported accuracy and every verdict —
  ICL and zero-shot, global patching at the selected layer (``n_eval`` prompts), local patching at the selected
  layer and the k-of-n ablation (the first ``n_local_eval`` as dummy prompts), each control at the layer of the
  vector it controls.

Units per task: ``{task}/icl``, ``{task}/vectors``, ``{task}/patch_states``, ``{task}/global``, ``{task}/local``,
``{task}/kofn``, ``{task}/mediation``, ``{task}/convergence``, ``{task}/function_vector``
(:mod:`taskvec.study_function_vectors`), ``{task}/chance``. Every row carries ``split`` (``select``/``eval``) and
``prompt`` (the index within its split; eval prompt ``i`` is the same query in every experiment, so differences
are paired).

Example::

    from taskvec.study import StudyConfig, run_study
    run_dir = run_study(StudyConfig(model="smollm2-135m", tasks=["antonyms"], quick=True), "runs/demo")
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

import taskvec.artifacts as A
from taskvec.claims import ClaimRules
from taskvec.distributed import World, world
from taskvec.errors import ConfigError
from taskvec.experiment import ModelExperimentConfig, nonempty_separator, open_store
from taskvec.intervene import Edits, read_states
from taskvec.prompts import build_prompts, zero_shot
from taskvec.runs import RunStore, versions
from taskvec.scoring import select_layer
from taskvec.stats import Z95
from taskvec.study_function_vectors import unit_function_vector
from taskvec.study_states import mapping_trial_avg, patch_states, shuffled_slots, source_vectors, token_control
from taskvec.sweep import Variant
from taskvec.task_run import TaskRun, by_mapping, chance_level, layer_rows, mapping_of, selected_layer
from taskvec.tasks import list_tasks, task_file_path, task_names
from taskvec.vectors import norm_matched_random, pos_avg, trial_avg

KNOWLEDGE_TASKS = ["country_capital", "antonyms", "english_french", "present_past", "lowercase_uppercase"]
CATEGORIZATION_TASKS = ["simple_string", "digit", "two_d", "animal_object", "food_body", "color_number"]
ADDITIVE = ("with_analyses", "function_vectors", "fv_tasks")  # config keys a resume may change: they only add units, never change finished ones
QUICK = dict(n_trials=12, n_select=8, n_eval=16, n_local_select=6, n_local_eval=8, fv_n_cie=4, demo_counts=[0, 2])  # --quick


MAX_TRIALS = 10_000  # per set of trials and task (a bound that keeps a typo from filling the memory)


class StudyConfig(ModelExperimentConfig):
    """Everything that decides the study's numbers (the effective config is saved with the run)."""

    kind: ClassVar[str] = "study"
    tasks: list[str] = Field(default_factory=lambda: ["all"])
    seed: int = Field(0, ge=0, description="seed of every draw")
    n_trials: int = Field(50, ge=2, le=MAX_TRIALS, description="source ICL prompts per task (global vector, Trial Avg, convergence)")
    n_select: int = Field(24, ge=2, le=MAX_TRIALS, description="selection trials per task: layers are chosen on these")
    n_eval: int = Field(50, ge=2, le=MAX_TRIALS, description="evaluation trials per task: every reported accuracy and verdict")
    n_local_select: int = Field(12, ge=2, le=MAX_TRIALS, description="dummy prompts (of the selection trials) for local layer choice")
    n_local_eval: int = Field(32, ge=2, le=MAX_TRIALS, description="dummy prompts (of the evaluation trials) for local patching")
    n_demos: int | None = Field(None, ge=1, le=64, description="demonstrations per prompt (default: the task's)")
    separator: str = "is"
    joiner: str = "\n"
    task_params: dict[str, dict] = Field(default_factory=dict, description="per-task parameters, e.g. labels")
    on_conflict: Literal["error", "keep_first", "drop_both"] = Field(
        "error", description="task files: an input repeated with a different output is an error (naming the lines), "
                             "or keep the first, or drop both (counted in config.json); task_params may set it per file")
    demo_counts: list[int] = Field(default_factory=lambda: [0, 1, 2, 4, 8], min_length=1, description="ICL vs #demos")
    spans: list[Literal["single", "from"]] = Field(default_factory=lambda: ["single"])
    min_local_layer: int = Field(1, ge=0, description="lowest layer local vectors may be selected at: at layer 0 "
                                 "h_0 at an answer is the answer token's embedding, so patching it restores the ICL "
                                 "prompt itself (no task vector involved)")
    kofn_subsets: int = Field(1, ge=1, description="random subsets per k in the k-of-n ablation")
    kofn_ks: Literal["grid", "all"] = Field("grid", description="k values of the k-of-n ablation: every k, or "
                                            "the k the C5 rules read (0, 1, 2, n/2, n) and the demo_counts below n, "
                                            "where ICL(k) is run on the same prompts")
    local_sweep: Literal["beats_token", "all"] = Field(
        "beats_token", description="layers at which Pos Avg and Trial Avg are swept on the selection split: where "
        "the own local vectors beat their token-identity control (an average of answer-token states is compared "
        "where there is more than tokens to average; at the local layer when no layer qualifies), or every layer "
        "(paper A's full curves; about 40% more local patching)")
    control_task: str = Field("auto", description="task whose vectors serve as the other-task control")
    quick: bool = False
    with_analyses: bool = Field(False, description="also run saliency, dPCA and heads (claims C7, C8)")
    function_vectors: bool = Field(True, description="also the function vector (Todd et al.; docs/spec.md A.9) "
                                   "beside the global and local vectors")
    fv_tasks: Literal["knowledge", "all"] = Field(
        "knowledge", description="tasks that get the function vector: the knowledge tasks (Todd et al.'s kind: one "
        "fixed input -> output function), or every task (categorization too, within each label mapping)")
    fv_k: int = Field(10, ge=1, description="heads summed into the function vector (top by AIE)")
    fv_n_cie: int = Field(10, ge=1, le=MAX_TRIALS, description="shuffled-label prompts of the indirect-effect scan")
    fv_template: str = Field('The word "{x}" means', description="natural-text template of the function vector's "
                             "generation test ({x}: the query's input; '' skips it)")
    fv_n_tokens: int = Field(5, ge=1, le=64, description="tokens generated in the natural-text test")
    claims: ClaimRules = Field(default_factory=ClaimRules)
    max_batch_tokens: int | None = Field(None, ge=64, description="tokens (rows x length) per forward of a sweep "
                                         "(default: 12,000 on a CPU, from the free GPU memory on a GPU)")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one task")
        return v

    @field_validator("demo_counts")
    @classmethod
    def _demo_counts(cls, v: list[int]) -> list[int]:
        bad = [k for k in v if not 0 <= k <= 64]
        if bad:
            raise ValueError(f"demo_counts: {bad[0]} is out of range: each count of demonstrations is in 0..64")
        if len(set(v)) != len(v):
            raise ValueError(f"demo_counts {v} repeats a count: give each once")
        return v

    @field_validator("fv_template")
    @classmethod
    def _fv_template(cls, v: str) -> str:
        if v and "{x}" not in v:
            raise ValueError(f"fv_template {v!r} has no {{x}} placeholder for the query's input (or give '' to skip "
                             "the natural-text test)")
        return v

    @field_validator("separator")
    @classmethod
    def _separator(cls, v: str) -> str:
        return nonempty_separator(v)

    @model_validator(mode="after")
    def _task_params_name_tasks_of_the_run(self) -> "StudyConfig":
        names = self.task_names()  # a task file's params may be keyed by file:PATH or by its name (its stem)
        unknown = sorted(set(self.task_params) - set(names) - set(names.values()) - {self.control_task})
        if unknown:
            raise ValueError(f"task_params names {unknown[0]!r}, which is not a task of this run "
                             f"({', '.join(names.values())}; a task file by its name or as file:PATH): fix the "
                             "name or add it to tasks")
        twice = [spec for spec, name in names.items() if spec != name and {spec, name} <= set(self.task_params)]
        if twice:
            raise ValueError(f"task_params gives the task {names[twice[0]]!r} twice, as {twice[0]!r} and as "
                             f"{names[twice[0]]!r}: keep one")
        return self

    @model_validator(mode="after")
    def _sizes(self) -> "StudyConfig":
        if self.n_local_select > self.n_select:
            raise ValueError(f"n_local_select ({self.n_local_select}) cannot exceed n_select ({self.n_select})")
        if "single" not in self.spans:
            raise ValueError("spans must include 'single' (layers are selected on single-layer patching)")
        if self.n_local_eval > self.n_eval:
            raise ValueError(f"n_local_eval ({self.n_local_eval}) cannot exceed n_eval ({self.n_eval})")
        return self

    def resolved_tasks(self) -> list[str]:
        names: list[str] = []
        for t in self.tasks:
            if t == "all":
                names += KNOWLEDGE_TASKS + CATEGORIZATION_TASKS
            elif t == "knowledge":
                names += KNOWLEDGE_TASKS
            elif t == "categorization":
                names += CATEGORIZATION_TASKS
            else:
                names.append(t)
        return list(dict.fromkeys(names))

    def task_names(self) -> dict[str, str]:
        """``{task as given: the name it goes by}`` for the run's tasks (and a ``control_task`` outside them): a task
        file ``file:/long/path/x.json`` goes by its stem ``x`` in the tables, report and file names (made unique
        with ``-2``, ... where stems collide; :func:`taskvec.tasks.task_names`); its path stays in the config."""
        specs = self.resolved_tasks()
        names = task_names(specs)
        if self.control_task != "auto" and self.control_task not in {*names, *names.values()}:
            names = task_names([*specs, self.control_task])
        return names

    def task_params_for(self, spec: str) -> dict:
        """The ``task_params`` of a task as given in ``tasks`` (keyed by that or by the name it goes by)."""
        name = self.task_names().get(spec, spec)
        params = dict(self.task_params.get(spec) or self.task_params.get(name) or {})
        if task_file_path(spec) is not None:
            params.setdefault("on_conflict", self.on_conflict)
        return params

    def effective(self) -> "StudyConfig":
        """The config that runs: ``quick`` applied (fewer trials and demo counts), ``quick`` itself kept."""
        if not self.quick:
            return self
        update = {k: min(getattr(self, k), v) for k, v in QUICK.items() if k != "demo_counts"}
        update["demo_counts"] = QUICK["demo_counts"]
        return self.model_copy(update=update)


def _control_task(name: str, cfg: StudyConfig) -> str:
    """The control task of task ``name``, as given in the config (a task file's name maps back to its path)."""
    if cfg.control_task != "auto":
        by_name = {n: spec for spec, n in cfg.task_names().items()}
        return by_name.get(cfg.control_task, cfg.control_task)
    return "antonyms" if name == "country_capital" else "country_capital"


# ----------------------------------------------------------------------------------------------------- units
def unit_icl(tr: TaskRun) -> list[dict]:
    """ICL accuracy vs number of demonstrations on the evaluation trials: zero-shot and all demonstrations on
    every evaluation trial (the baselines of the verdicts, paired with global patching), the counts in between
    on the local-evaluation trials (paired with the k-of-n ablation, which patches k answers of the same prompts)."""
    rows = []
    full = len(tr.eval[0].demos)
    for k in sorted(set(tr.cfg.demo_counts) | {0, full}):
        if k > full:
            continue
        trials = tr.eval if k in (0, full) else tr.eval[:tr.cfg.n_local_eval]
        trials = zero_shot(trials) if k == 0 else trials
        prompts = build_prompts(tr.lm, trials, tr.template, n_demos=k)
        rows += tr.clean(prompts, experiment="icl", split="eval", n_demos=k)
    return rows


def unit_global(tr: TaskRun, src: dict, control: dict) -> list[dict]:
    """Global vector (built within each trial's label mapping) into zero-shot prompts: every layer on the
    selection split; on the evaluation split at the global vector's selected layer, with the controls there.

    Beside it, the **role-matched positive control** of convergence: the demonstrations' own separator states
    (the token before each answer, the state with the query's job), averaged like the global vector. The answer
    states are never patched at the query: they predict the token after an answer, not the answer."""
    L = tr.lm.n_layers

    def vectors(trials) -> dict[str, torch.Tensor]:  # [P, L, 1, d] per prompt, within its mapping
        return {"global": by_mapping(tr, src["global_per_prompt"], trials)[:, :, None],
                "demo_separators": by_mapping(tr, src["separators_mean"], trials)[:, :, None]}

    rows = []
    for span in tr.cfg.spans:
        sel_vectors = vectors(tr.select)
        sel = layer_rows(tr, tr.zero_shot("select"), sel_vectors, "query", {k: list(range(L)) for k in sel_vectors},
                          span, "global", "select")
        layer = selected_layer(sel, "global", span)
        evals = {**vectors(tr.eval), "random": norm_matched_random(src["global"], tr.cfg.seed),
                 "other_task": control["global"]}
        rows += sel + layer_rows(tr, tr.zero_shot("eval"), evals, "query", {k: [layer] for k in evals}, span,
                                  "global", "eval")
    return rows


def token_beating_layers(rows: list[dict], span: str, min_layer: int) -> list[int]:
    """The layers (from ``min_layer`` on) where the own local vectors carry **more than their answer token** on
    the selection split: own − token-identity control, paired over the selection prompts, has a target
    log-probability margin whose lower 95% bound is above 0, and no loss in accuracy."""
    df = pd.DataFrame(rows)
    df = df[(df.split == "select") & (df.span == span) & (df.layer >= min_layer)]
    own = df[df.vector == "local"].set_index(["layer", "prompt"])
    ctl = df[df.vector == "token_control"].set_index(["layer", "prompt"])
    lp = (own.target_logprob - ctl.target_logprob).groupby("layer")
    lower = lp.mean() - Z95 * lp.std(ddof=1).fillna(0.0) / np.sqrt(lp.count())
    acc = (own.score - ctl.score).groupby("layer").mean()
    return [int(layer) for layer in lower[(lower > 0) & (acc >= 0)].index]


def select_local_layer(rows: list[dict], span: str, min_layer: int) -> tuple[int, bool]:
    """The local vector's layer, chosen on the selection split **only among layers where it carries more than its
    answer token** (:func:`token_beating_layers`); among those, :func:`select_layer`. Where no layer does
    (``False``: the local vector is its token at every layer, as on knowledge tasks, whose control is the same
    answer in another context), the best own layer, and the verdicts show local − control ≤ 0."""
    df = pd.DataFrame(rows)
    chosen = df[(df.split == "select") & (df.span == span) & (df.layer >= min_layer) & (df.vector == "local")]
    above = token_beating_layers(rows, span, min_layer)
    if above:
        return select_layer(chosen[chosen.layer.isin(above)]), True
    return select_layer(chosen), False


def unit_local(tr: TaskRun, src: dict, states: dict, control: dict) -> list[dict]:
    """Local vectors (own, Pos Avg, Trial Avg within a mapping) into dummy prompts, with the token-identity control.

    Selection split, in two sweeps: the own vectors and their token-identity control at every layer from
    ``min_local_layer`` on (below it nothing can be selected: at layer 0 a local vector is its answer token's
    embedding, equal to its control), then Pos Avg and Trial Avg at the layers where the own vectors beat their
    token (``local_sweep="beats_token"``; at the local layer when none does) or at every layer (``"all"``). On
    the evaluation split each vector at its own selected layer, the controls at the local vector's layer, and the
    unpatched dummy.

    Null controls keep the prompt in distribution (a norm-matched random vector destroys it: 0.00, below the
    dummy): the token-identity control, the own vectors in shuffled slots, the dummy's slot means, another task's
    local vectors; on categorization also Trial Avg across mappings."""
    L = tr.lm.n_layers
    _, dummy_s = tr.dummy_select
    _, dummy_e = tr.dummy_eval
    rows = tr.clean(dummy_e, experiment="local", vector="dummy", span="none", split="eval", layer=-1)
    control_s, cover_s = token_control(tr, src, states, "select")
    control_e, cover_e = token_control(tr, src, states, "eval")
    swept = list(range(tr.cfg.min_local_layer, L))  # below it a local vector is its token (never selected)
    for span in tr.cfg.spans:
        local_s = states["local_select"]
        own = {"local": local_s, "token_control": control_s}
        sel = layer_rows(tr, dummy_s, own, "answers", {k: swept for k in own}, span, "local", "select")
        layer = {}
        layer["local"], beats_token = select_local_layer(sel, span, tr.cfg.min_local_layer)
        averages = {"pos_avg": pos_avg(local_s), "trial_avg": mapping_trial_avg(tr, src, tr.select[:len(dummy_s)])}
        at_layers = (swept if tr.cfg.local_sweep == "all"
                     else token_beating_layers(sel, span, tr.cfg.min_local_layer) or [layer["local"]])
        sel += layer_rows(tr, dummy_s, averages, "answers", {k: at_layers for k in averages}, span, "local", "select")
        layer.update({k: selected_layer(sel, k, span, tr.cfg.min_local_layer) for k in averages})
        local_e = states["local_eval"]
        evals = {"local": local_e, "token_control": control_e, "pos_avg": pos_avg(local_e),
                 "trial_avg": mapping_trial_avg(tr, src, tr.eval[:len(dummy_e)]),
                 "shuffled_slots": shuffled_slots(local_e, tr.cfg.seed),
                 "slot_mean": states["dummy_eval"].mean(0).expand_as(local_e),
                 "other_task": control["local"].mean((0, 2))[None, :, None, :].expand_as(local_e)}
        at = {k: layer.get(k, layer["local"]) for k in evals}
        if tr.categorization:  # the mapping-mixed average carries no mapping: a null control
            evals["trial_avg_mixed"] = src["trial_avg"]
            at["trial_avg_mixed"] = layer["trial_avg"]
        ev = layer_rows(tr, dummy_e, evals, "answers", {k: [at[k]] for k in evals}, span, "local", "eval")
        rows += sel + [dict(r, beats_token=beats_token) if r["vector"] == "local" else r for r in ev]
    for r in rows:
        if r.get("vector") == "token_control":
            r["coverage"] = cover_s if r["split"] == "select" else cover_e
    return rows


def kofn_values(n: int, which: str = "grid", icl_counts: list[int] | tuple[int, ...] = ()) -> list[int]:
    """The k values of the k-of-n ablation: every k (``"all"``, or n <= 4), else the k the C5 rules read (0, 1,
    2, n/2, n) and the ``icl_counts`` below n (the demonstration counts ICL(k) is run at on the same prompts, so
    the two curves are compared at the same k)."""
    if which == "all" or n <= 4:
        return list(range(n + 1))
    return sorted({0, 1, 2, n // 2, n} | {k for k in icl_counts if 0 <= k < n})


def kofn_slots(seed: int, task: str, prompt: int, k: int, subset: int, n: int) -> list[int]:
    """The ``k`` patched slots (of ``n``) of one k-of-n variant, sorted: each (prompt, k, subset) drawn from its own
    seed, so adding or removing a k of the grid leaves every other k's slots as they were (a shared generator
    shifted them all, and C5's cells moved with the grid)."""
    return sorted(random.Random(f"{seed}/{task}/kofn/{prompt}/{k}/{subset}").sample(range(n), k))


SCORES = ("correct", "target_logprob", "label_correct", "score")  # the scored columns of a row (tr.run)


def unit_kofn(tr: TaskRun, states: dict, layer: int, local: pd.DataFrame | None = None) -> list[dict]:
    """Only k of the n answer positions of each evaluation dummy prompt patched (local vectors, at the local
    vector's selected layer), k in :func:`kofn_values`, ``kofn_subsets`` random subsets per k (each drawn from its
    own seed: adding a k to the grid leaves every other k's subsets as they were), with the n − k
    other slots filled two ways on the same subsets: ``fill="wrong"`` leaves the dummy's random answers there
    (they contradict the task), ``fill="mean"`` mean-ablates them (the dummy's slot mean over prompts; only at the
    k the C5 rules read: 0, 1, 2, n/2, n).

    Three of these variants are variants of the local sweep on the same prompts (``local``: its evaluation rows,
    single-layer span): k = 0 with wrong answers is the unpatched dummy, k = 0 mean-ablated is the ``slot_mean``
    control, k = n is the ``local`` vector at its layer. Their scores are copied from there, not run again."""
    _, dummy = tr.dummy_eval
    own = states["local_eval"][:, layer]  # [P, n, d]
    slot_mean = states["dummy_eval"][:, layer].mean(0)  # [n, d]
    n = own.shape[1]
    mean_ks = {0, 1, 2, n // 2}  # what C5 reads; k = n is the same variant under both fills
    same = {}  # (k, fill) -> the local sweep's vector that is the same variant
    if local is not None:
        at = local[(local.layer == layer) | (local.vector == "dummy")]
        same = {(0, "wrong"): "dummy", (0, "mean"): "slot_mean", (n, "wrong"): "local"}
        same = {key: at[at.vector == v].set_index("prompt") for key, v in same.items() if (at.vector == v).any()}
    variants, meta, copied = [], [], []
    for p in range(len(dummy)):
        answers = torch.tensor(dummy[p].answer_positions, dtype=torch.long)
        for k in kofn_values(n, tr.cfg.kofn_ks, tr.cfg.demo_counts):
            for s in range(tr.cfg.kofn_subsets if 0 < k < n else 1):
                slots = kofn_slots(tr.cfg.seed, tr.name, p, k, s, n)
                rest = [i for i in range(n) if i not in slots]
                fills = {"wrong": (slots, own[p, slots])}
                if k in mean_ks and k < n:
                    fills["mean"] = (slots + rest, torch.cat([own[p, slots], slot_mean[rest]]))
                for fill, (where, vecs) in fills.items():
                    row = dict(experiment="kofn", split="eval", prompt=p, k=k, n=n, subset=s, layer=layer, fill=fill)
                    if (k, fill) in same and p in same[(k, fill)].index:
                        found = same[(k, fill)].loc[p]
                        copied.append(dict(row, **{c: float(found[c]) for c in SCORES
                                                    if c in found.index and pd.notna(found[c])}))
                        continue
                    variants.append(Variant(p, torch.full((len(where),), layer, dtype=torch.long), answers[where],
                                            vecs))
                    meta.append(row)
    rows = (tr.run(dummy, variants, meta, "k-of-n") if variants else []) + copied
    return rows + [dict(r, fill="mean") for r in rows if r["k"] == n]


def loo_group_means(vectors: torch.Tensor, keys: list, target_keys: list) -> dict[int, torch.Tensor]:
    """``{t: [d]}``: for target ``t``, the mean of ``vectors`` (``[P, d]``) over the rows with its key, leaving row
    ``t`` out when ``t < P`` (target ``t`` and row ``t`` share a query: a vector must not carry its own answer). A
    target with no other row of its key is left out."""
    out = {}
    for t, key in enumerate(target_keys):
        idx = [p for p, k in enumerate(keys) if k == key and p != t]
        if idx:
            out[t] = vectors[idx].mean(0)
    return out


def unit_mediation(tr: TaskRun, states: dict, local_layer: int, global_layer: int) -> list[dict]:
    """The **mediation test** of convergence (docs/spec.md A.4): patch the local vectors into the evaluation
    dummy prompts at the local layer, read each dummy's query state at the global layer, and patch their
    (leave-one-out, within-mapping) mean into the zero-shot evaluation prompts like a global vector; beside it the
    same built from the unpatched dummies' query states (the null). Convergence = the local vectors build a
    working global vector. Where the local layer is not below the global one, the patch cannot reach the read
    state and the two are equal by construction. A zero-shot prompt whose mapping no other dummy prompt shares is
    left out (no rows: C6 then says so)."""
    _, dummy = tr.dummy_eval
    P, d = len(dummy), tr.lm.d_model
    local = states["local_eval"][:, local_layer]  # [P, n, d]
    n = local.shape[1]
    edits = Edits.at(rows=[p for p in range(P) for _ in range(n)], layers=[local_layer] * (P * n),
                     positions=[a for prompt in dummy for a in prompt.answer_positions],
                     vectors=local.reshape(-1, d))
    mediated = read_states(tr.lm, [p.ids for p in dummy], [[p.query_position] for p in dummy], [global_layer],
                           edits=edits)[:, 0, 0]
    plain = states["dummy_query_eval"][:, global_layer]
    keys = [mapping_of(tr, t) for t in tr.eval[:P]]
    targets = [mapping_of(tr, t) for t in tr.eval]
    zero = tr.zero_shot("eval")
    variants, meta = [], []
    for name, states_at_query in (("mediated", mediated), ("dummy_query", plain)):
        vecs = loo_group_means(states_at_query, keys, targets)
        for i, prompt in enumerate(zero):
            if i not in vecs:
                continue
            variants.append(Variant(i, torch.tensor([global_layer]), torch.tensor([prompt.query_position]),
                                    vecs[i][None]))
            meta.append(dict(experiment="mediation", vector=name, split="eval", span="single", prompt=i,
                             layer=global_layer, local_layer=local_layer))
    return tr.run(zero, variants, meta, "mediation") if variants else []


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def convergence_rows(local: torch.Tensor, separators: torch.Tensor, query: torch.Tensor, g: torch.Tensor,
                     mu: torch.Tensor) -> list[dict]:
    """Role-matched geometry per prompt and layer, every state centred on ``mu``: the mean centred cosine between
    a prompt's local vectors across slots (local–local), between each demonstration's separator state and the
    global vector (the same job: both predict an answer), and between the prompt's own query state and the global
    vector (the positive reference). Answer states are never compared with query states (different jobs).

    Args:
        local, separators: ``[P, L, n, d]`` answer and separator states of held-out ICL prompts;
        query: ``[P, L, d]`` their query states; g: ``[P, L, d]`` (or ``[L, d]``) the global vector each prompt is
        compared with (built from other prompts); mu: ``[L, d]`` reference mean state.
    """
    P, L, n, _ = local.shape
    g = g.expand(P, *g.shape[-2:]) if g.dim() == 2 else g
    iu = torch.triu_indices(n, n, 1)
    rows = []
    for layer in range(L):
        gc = (g[:, layer] - mu[layer])[:, None]  # [P, 1, d]
        sep = _cos(separators[:, layer] - mu[layer], gc).mean(-1)  # [P]
        own = _cos(query[:, layer] - mu[layer], gc[:, 0])
        unit = torch.nn.functional.normalize(local[:, layer] - mu[layer], dim=-1)
        pair = (unit @ unit.transpose(1, 2))[:, iu[0], iu[1]].mean(-1) if n > 1 else torch.full((P,), float("nan"))
        for p in range(P):
            rows.append(dict(experiment="convergence", split="eval", prompt=p, layer=layer,
                             centred_separator_global=float(sep[p]), centred_query_global=float(own[p]),
                             centred_local_local=float(pair[p])))
    return rows


def unit_convergence(tr: TaskRun, src: dict, states: dict) -> list[dict]:
    """Role-matched convergence geometry (:func:`convergence_rows`) on the evaluation ICL prompts, against the
    global vector of the source prompts (within each prompt's mapping), centred on the mean state over every
    token of the evaluation prompts."""
    local = states["local_eval"]
    g = by_mapping(tr, src["global_per_prompt"], tr.eval[:len(local)])
    return convergence_rows(local, states["separators_eval"], states["query_eval"], g, states["reference_mean"])


def run_analyses(lm, out: Path, names: list[str], cfg: StudyConfig, w: World = World()) -> None:
    """Saliency (one knowledge task + ``simple_string``), dPCA and heads (``simple_string``) into
    ``out/{saliency,dpca,heads}``; resumable. Under torchrun, rank ``i % size`` runs the ``i``-th of the three."""
    from taskvec.analysis.runners import DPCAConfig, HeadsConfig, SaliencyConfig, run_dpca, run_heads, run_saliency

    knowledge = [n for n in names if n in KNOWLEDGE_TASKS][:1]
    cat = "simple_string"
    common = dict(model=cfg.model, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed, separator=cfg.separator)
    step = max(1, lm.n_layers // 6)  # the subspace ablation at 6 layers spread over the depth
    jobs = [lambda: run_saliency(SaliencyConfig(tasks=knowledge + [cat], n_trials=8 if cfg.quick else 20, **common),
                                 out / "saliency", resume=True, lm=lm),
            lambda: run_dpca(DPCAConfig(task=cat, n_trials=24 if cfg.quick else 40,
                                        ablate_layers=list(range(0, lm.n_layers, step)), **common),
                             out / "dpca", resume=True, lm=lm),
            lambda: run_heads(HeadsConfig(task=cat, n_trials=4 if cfg.quick else 8, **common), out / "heads",
                              resume=True, lm=lm)]
    for job in w.share(jobs):
        job()


def _selected_layers(store: RunStore, task: str) -> tuple[int, int]:
    """The local and the global vector's selected layers (single-layer span), as recorded by their units."""
    t = store.table()
    ev = t[(t.task == task) & (t.span == "single") & (t.split == "eval")]
    pick = lambda exp, vec: int(ev[(ev.experiment == exp) & (ev.vector == vec)].layer.iloc[0])  # noqa: E731
    return pick("local", "local"), pick("global", "global")


def _local_eval_rows(store: RunStore, task: str) -> pd.DataFrame:
    """The local sweep's evaluation rows of ``task`` (single-layer span and the unpatched dummy)."""
    t = store.table()
    return t[(t.task == task) & (t.experiment == "local") & (t.split == "eval") & t.span.isin(["single", "none"])]


def has_function_vector(tr: TaskRun) -> bool:
    """Whether the study computes ``tr``'s function vector (``function_vectors``, and ``fv_tasks``: knowledge
    tasks only by default)."""
    return tr.cfg.function_vectors and (tr.cfg.fv_tasks == "all" or not tr.categorization)


def task_cost(tr: TaskRun) -> float:
    """A task's estimated share of the study's time, the order of the ranks' queue (:meth:`World.take`, costliest
    first): its full ICL prompt's length in tokens (local patching and k-of-n re-run the suffix from the first
    answer on), a quarter more with a function vector."""
    return len(tr.eval_prompts[0].ids) * (1.25 if has_function_vector(tr) else 1.0)


def task_files(runs: dict[str, TaskRun]) -> dict[str, dict]:
    """For the run record (``config.json``): each task file of the run by the name it goes by, with its path and
    the file's counts (rows, duplicates merged, conflicts and the rows they dropped, the ``on_conflict`` policy)."""
    return {tr.name: {"path": task_file_path(spec), **(tr.task.file_stats or {})}
            for spec, tr in runs.items() if task_file_path(spec) is not None}


def check_tasks(names: list[str]) -> None:
    """Raise :class:`ConfigError` for a task name that is neither registered nor a file."""
    known = set(list_tasks())
    for name in names:
        if name not in known and not name.startswith("file:") and not Path(name).suffix:
            raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(known))}, all, knowledge, "
                              "categorization (or file:PATH)")


def run_study(cfg: StudyConfig, out: str | Path, resume: bool = False, lm=None) -> Path:
    """Run (or resume) the study into ``out``; returns the run directory. Writes the tables, not ``report.html``:
    :func:`taskvec.run` (:mod:`taskvec.kinds`) is this plus the report.

    The run directory is created only once the config is valid, every task resolves and the model has loaded,
    so a mistyped model or task leaves nothing behind.

    Under ``torchrun`` (docs/distributed.md) every rank calls this with the same config (checked first: ranks that
    disagree stop with one :class:`~taskvec.errors.RankError`). The tasks are dealt round robin over the
    ranks, each rank appending to its own results file; once every rank is done, rank 0 merges the files into
    ``results.jsonl``.
    """
    eff = cfg.effective()
    names = eff.resolved_tasks()
    with world() as w:
        return _run_study(cfg, eff, names, Path(out), resume, lm, w)


def _run_study(cfg: StudyConfig, eff: StudyConfig, names: list[str], out: Path, resume: bool, lm,
               w: World) -> Path:
    w.agree({"config": eff.saved(), "out": str(out), "resume": resume, "versions": versions()})
    # every rank checks before rank 0 writes config.json; a refused resume costs no model load
    w.together(lambda: (check_tasks(names), RunStore.check(out, eff.saved(), resume, (*ADDITIVE, *eff.newer_fields(out)))))
    if lm is None:
        lm = w.together(lambda: cfg.load(w.local_rank))
    runs: dict[str, TaskRun] = {}

    def task_run(name: str) -> TaskRun:
        if name not in runs:
            runs[name] = TaskRun(name, eff, lm)
        return runs[name]

    w.together(lambda: [task_run(name) for name in names])  # fail on a bad task before the run directory exists
    if w.rank == 0:
        store = open_store(eff, out, resume, lm, extra={"requested": cfg.saved(), "task_files": task_files(runs)},
                           additive=ADDITIVE)
    w.barrier()  # config.json is written before the other ranks open the run
    if w.rank > 0:
        store = open_store(eff, out, resume, lm, additive=ADDITIVE, rank=w.rank)
    mine = w.take(names, [task_cost(task_run(n)) for n in names], store.path / A.TAKEN)
    bar = tqdm(mine, total=None if w.distributed else len(names),
               desc=f"tasks of rank {w.rank}" if w.distributed else "tasks")
    for spec in bar:
        tr = task_run(spec)
        name = tr.name  # a task file goes by its stem; its path is in config.json ("task_files")
        bar.set_postfix_str(name)
        tag = dict(task=name, kind=tr.task.kind)
        if tr.categorization:
            tag["labels"] = "/".join(tr.task.labels)
        with_tags = lambda rows: [dict(r, **tag) for r in rows]  # noqa: E731
        store.run_unit(f"{name}/icl", lambda: with_tags(unit_icl(tr)))
        units = [f"{name}/{u}" for u in ("global", "local", "kofn", "mediation", "convergence")]
        if not all(store.done(u) for u in units):
            src = source_vectors(store, tr)
            states = patch_states(store, tr)
            control = source_vectors(store, task_run(_control_task(name, eff)))
            store.run_unit(f"{name}/global", lambda: with_tags(unit_global(tr, src, control)))
            store.run_unit(f"{name}/local", lambda: with_tags(unit_local(tr, src, states, control)))
            local_layer, global_layer = _selected_layers(store, name)
            store.run_unit(f"{name}/kofn", lambda: with_tags(unit_kofn(tr, states, local_layer,
                                                                       _local_eval_rows(store, name))))
            store.run_unit(f"{name}/mediation",
                           lambda: with_tags(unit_mediation(tr, states, local_layer, global_layer)))
            store.run_unit(f"{name}/convergence", lambda: with_tags(unit_convergence(tr, src, states)))
        if has_function_vector(tr):
            store.run_unit(f"{name}/function_vector", lambda: with_tags(
                unit_function_vector(tr, task_run(_control_task(name, eff)))))
        if not store.done(f"{name}/chance"):
            store.append(f"{name}/chance", [dict(experiment="chance", score=chance_level(tr), **tag)])
    if eff.with_analyses:
        run_analyses(lm, store.path / A.ANALYSES, names, eff, w)
    w.barrier()  # every rank has recorded its units
    if w.rank == 0:
        store.merge([task_run(n).name for n in names])
        shutil.rmtree(store.path / A.TAKEN, ignore_errors=True)
    return store.path
