"""The local-vs-global task-vector study (SPEC A.1-A.4): one config -> units of work -> run store -> report.

Per task, the units are:

``{task}/icl``          few-shot ICL accuracy vs number of demonstrations (0 = zero-shot)
``{task}/vectors``      global and local states of ``n_trials`` ICL prompts (safetensors in ``vectors/``)
``{task}/global``       global vector patched into zero-shot prompts at every layer (+ random, other-task)
``{task}/local``        local vectors (own, Pos Avg, Trial Avg, random, other-task) patched into dummy prompts
                        with random answers at every layer (+ the unpatched dummy)
``{task}/kofn``         only k of the n answer positions patched, at the best local layer, k = 0..n
``{task}/convergence``  cosine similarity of local vectors to the global vector and to each other, per layer

Example::

    from taskvec.study import StudyConfig, run_study
    run_dir = run_study(StudyConfig(model="smollm2-135m", tasks=["antonyms"], quick=True), "runs/demo")
"""
from __future__ import annotations

import random
from functools import cached_property
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from taskvec.errors import ConfigError
from taskvec.prompts import Template, build_prompts, check_aligned, dummy_trials, zero_shot
from taskvec.runs import RunStore
from taskvec.sweep import Variant, patch_layers, read_ids_for, run_variants, score
from taskvec.tasks import first_token_id, list_tasks, task_for
from taskvec.vectors import load_vectors, norm_matched_random, pos_avg, read_icl_states, save_vectors, trial_avg

KNOWLEDGE_TASKS = ["country_capital", "antonyms", "english_french", "present_past", "lowercase_uppercase"]
CATEGORIZATION_TASKS = ["simple_string", "digit", "two_d"]


class StudyConfig(BaseModel):
    """Everything that decides the study's numbers (saved as the run's config)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "gemma3-270m"
    tasks: list[str] = Field(default_factory=lambda: ["all"])
    seed: int = 0
    n_trials: int = Field(50, ge=2, description="ICL prompts per task (global vectors, ICL accuracy)")
    n_patch_trials: int = Field(8, ge=1, description="dummy prompts per task for local patching")
    n_demos: int | None = Field(None, ge=1, le=64, description="demonstrations per prompt (default: the task's)")
    separator: str = "is"
    joiner: str = "\n"
    task_params: dict[str, dict] = Field(default_factory=dict, description="per-task parameters, e.g. labels")
    demo_counts: list[int] = Field(default_factory=lambda: [0, 1, 2, 4, 8], description="ICL vs #demos")
    spans: list[Literal["single", "from"]] = Field(default_factory=lambda: ["single"])
    kofn_subsets: int = Field(1, ge=1, description="random subsets per k in the k-of-n ablation")
    control_stride: int = Field(2, ge=1, description="layer stride of the random / other-task control curves")
    control_task: str = Field("auto", description="task whose vectors serve as the other-task control")
    quick: bool = False
    with_analyses: bool = Field(False, description="also run saliency, dPCA and head analyses into analyses/")
    max_batch_tokens: int = 12_000

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one task")
        return v

    @classmethod
    def from_dict(cls, data: dict) -> "StudyConfig":
        """Validate a dict (e.g. a YAML file); a mistake raises :class:`ConfigError` naming the field."""
        from pydantic import ValidationError

        try:
            return cls(**data)
        except ValidationError as err:
            e = err.errors()[0]
            where = ".".join(str(x) for x in e["loc"]) or "config"
            raise ConfigError(f"study config field {where!r}: {e['msg']}") from None

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

    def effective(self) -> "StudyConfig":
        """The config with ``quick`` applied (fewer trials, fewer demo counts)."""
        if not self.quick:
            return self
        return self.model_copy(update=dict(n_trials=min(self.n_trials, 12), n_patch_trials=min(self.n_patch_trials, 6),
                                           demo_counts=[0, 2], kofn_subsets=1, control_stride=max(self.control_stride, 3)))


class _TaskRun:
    """What the units of one task share: its task object, trials and prompts."""

    def __init__(self, name: str, cfg: StudyConfig, lm):
        self.name, self.cfg, self.lm = name, cfg, lm
        self.task = task_for(name, lm.tokenizer, **cfg.task_params.get(name, {}))
        self.template = Template(cfg.separator, cfg.joiner)
        self.trials = self.task.sample_trials(cfg.n_trials, cfg.n_demos, seed=cfg.seed)
        self.eval_trials = self.task.sample_trials(cfg.n_trials, cfg.n_demos, seed=cfg.seed + 10_007)
        self.categorization = self.task.kind == "categorization"

    @cached_property
    def icl(self):
        return build_prompts(self.lm, self.trials, self.template)

    def layers(self, vector: str) -> list[int]:
        """Every layer for the task's own vectors; every ``control_stride``-th (and the last) for controls."""
        n = self.lm.n_layers
        if vector in ("random", "other_task"):
            return sorted(set(range(0, n, self.cfg.control_stride)) | {n - 1})
        return list(range(n))

    def rows(self, df: pd.DataFrame, **tags) -> list[dict]:
        df = df.copy()
        df["score"] = df["label_correct"] if self.categorization else df["correct"]
        for k, v in tags.items():
            df[k] = v
        return df.to_dict("records")

    def clean_scores(self, prompts) -> pd.DataFrame:
        variants = [Variant.clean(i, self.lm.d_model) for i in range(len(prompts))]
        targets = torch.tensor([p.target_id for p in prompts])
        labels = torch.tensor([p.label_ids for p in prompts]) if self.categorization else None
        out = run_variants(self.lm, [p.ids for p in prompts], variants, read_ids=read_ids_for(targets, labels),
                           max_batch_tokens=self.cfg.max_batch_tokens)
        df = score(out, targets, labels)
        df.insert(0, "prompt", range(len(prompts)))
        return df

    @cached_property
    def dummy_prompts(self):
        """``(icl, dummy)``: dummy prompts (random answers) aligned with the first ``n_patch_trials`` ICL prompts."""
        n = min(self.cfg.n_patch_trials, len(self.trials))
        trials, icl = self.trials[:n], self.icl[:n]
        pools = [self.task.answer_pool(t) for t in trials]
        out = []
        for i in range(n):
            for attempt in range(8):
                d = build_prompts(self.lm, dummy_trials([trials[i]], [pools[i]], self.cfg.seed + 31 * i + attempt,
                                                        self.lm.tokenizer), self.template)[0]
                if len(d) == len(icl[i]) and d.answer_positions == icl[i].answer_positions:
                    break
            out.append(d)
        check_aligned(icl, out)
        return icl, out


def chance_level(task_run: _TaskRun) -> float:
    """Chance of the reported score: 1/2 for two labels; 1/(number of distinct answers' first tokens) otherwise."""
    if task_run.categorization:
        return 0.5
    pool = task_run.task.answer_pool(task_run.trials[0])
    return 1.0 / len({first_token_id(task_run.lm.tokenizer, a) for a in pool})


def _control_task(name: str, cfg: StudyConfig) -> str:
    if cfg.control_task != "auto":
        return cfg.control_task
    return "antonyms" if name == "country_capital" else "country_capital"


def _vectors(store: RunStore, tr: _TaskRun) -> dict[str, torch.Tensor]:
    path = store.path / "vectors" / f"{tr.name}.safetensors"

    def compute() -> list[dict]:
        g, local = read_icl_states(tr.lm, tr.icl)
        save_vectors(path, {"global_per_prompt": g, "global": g.mean(0), "local": local,
                            "trial_avg": trial_avg(local)},
                     {"model": tr.cfg.model, "task": tr.name, "shape_local": "[P, L, n, d]",
                      "seed": tr.cfg.seed, "separator": tr.cfg.separator})
        return []

    if not path.exists():
        store.append(f"{tr.name}/vectors", compute())
    elif not store.done(f"{tr.name}/vectors"):
        store.append(f"{tr.name}/vectors", [])
    return load_vectors(path)[0]


def unit_icl(tr: _TaskRun) -> list[dict]:
    rows = []
    counts = sorted(set(tr.cfg.demo_counts) | {len(tr.trials[0].demos)})
    for k in counts:
        if k > len(tr.trials[0].demos):
            continue
        trials = zero_shot(tr.trials) if k == 0 else tr.trials
        prompts = build_prompts(tr.lm, trials, tr.template, n_demos=k)
        rows += tr.rows(tr.clean_scores(prompts), experiment="icl", n_demos=k)
    return rows


def unit_global(tr: _TaskRun, vec: dict, control: dict) -> list[dict]:
    prompts = build_prompts(tr.lm, zero_shot(tr.eval_trials), tr.template)
    g = vec["global"]
    rows = []
    for name, vectors in [("global", g), ("random", norm_matched_random(g, tr.cfg.seed)),
                          ("other_task", control["global"])]:
        for span in tr.cfg.spans:
            df = patch_layers(tr.lm, prompts, vectors, "query", layers=tr.layers(name), span=span,
                              max_batch_tokens=tr.cfg.max_batch_tokens, progress=f"{tr.name} global/{name}")
            rows += tr.rows(df, experiment="global", vector=name, span=span)
    return rows


def unit_local(tr: _TaskRun, vec: dict, control: dict) -> list[dict]:
    icl, dummy = tr.dummy_prompts
    n = len(dummy)
    local = vec["local"][:n]  # [P, L, n, d]
    ctrl = control["local"].mean((0, 2))[None, :, None, :].expand_as(local)  # other task's mean local vector
    rows = tr.rows(tr.clean_scores(dummy), experiment="local", vector="dummy", span="none", layer=-1)
    for name, vectors in [("local", local), ("pos_avg", pos_avg(local)), ("trial_avg", vec["trial_avg"]),
                          ("random", norm_matched_random(local, tr.cfg.seed)), ("other_task", ctrl)]:
        for span in tr.cfg.spans:
            df = patch_layers(tr.lm, dummy, vectors, "answers", layers=tr.layers(name), span=span,
                              max_batch_tokens=tr.cfg.max_batch_tokens, progress=f"{tr.name} local/{name}")
            rows += tr.rows(df, experiment="local", vector=name, span=span)
    return rows


def best_layer(table: pd.DataFrame, task: str, experiment: str, vector: str) -> int:
    """Layer with the highest mean score for a (task, experiment, vector) curve (single-layer span)."""
    sel = table[(table.task == task) & (table.experiment == experiment) & (table.vector == vector)
                & (table.span == "single")]
    if sel.empty:
        raise ConfigError(f"no {experiment}/{vector} results for {task} yet")
    return int(sel.groupby("layer").score.mean().idxmax())


def unit_kofn(tr: _TaskRun, vec: dict, layer: int) -> list[dict]:
    icl, dummy = tr.dummy_prompts
    local = vec["local"][: len(dummy), layer]  # [P, n, d]
    n = local.shape[1]
    rng = random.Random(tr.cfg.seed)
    variants, meta = [], []
    for p in range(len(dummy)):
        for k in range(n + 1):
            for s in range(tr.cfg.kofn_subsets if 0 < k < n else 1):
                slots = sorted(rng.sample(range(n), k))
                pos = torch.tensor([dummy[p].answer_positions[i] for i in slots], dtype=torch.long)
                variants.append(Variant(p, torch.full((k,), layer, dtype=torch.long), pos, local[p, slots]))
                meta.append(dict(prompt=p, k=k, subset=s))
    targets = torch.tensor([dummy[m["prompt"]].target_id for m in meta])
    labels = torch.tensor([dummy[m["prompt"]].label_ids for m in meta]) if tr.categorization else None
    out = run_variants(tr.lm, [d.ids for d in dummy], variants, read_ids=read_ids_for(targets, labels),
                       max_batch_tokens=tr.cfg.max_batch_tokens, progress=f"{tr.name} k-of-n")
    df = pd.concat([pd.DataFrame(meta), score(out, targets, labels)], axis=1)
    return tr.rows(df, experiment="kofn", layer=layer)


def unit_convergence(tr: _TaskRun, vec: dict) -> list[dict]:
    local, g = vec["local"], vec["global_per_prompt"]  # [P, L, n, d], [P, L, d]
    cos = torch.nn.functional.cosine_similarity
    slot_mean, g_mean = local.mean(0), g.mean(0)  # [L, n, d], [L, d]
    rows = []
    n = local.shape[2]
    iu = torch.triu_indices(n, n, 1)
    for layer in range(local.shape[1]):
        to_global = cos(slot_mean[layer], g_mean[layer][None], dim=-1)  # [n]
        unit = torch.nn.functional.normalize(slot_mean[layer], dim=-1)
        pair = (unit @ unit.T)[iu[0], iu[1]]
        per_trial = cos(local[:, layer], g[:, layer, None], dim=-1)  # [P, n]
        rows.append(dict(experiment="convergence", layer=layer, local_global=float(to_global.mean()),
                         local_local=float(pair.mean()) if n > 1 else float("nan"),
                         local_global_per_trial=float(per_trial.mean()),
                         last_slot_global=float(to_global[-1])))
    return rows


def run_analyses(lm, out: Path, names: list[str], cfg: StudyConfig) -> None:
    """Saliency (one knowledge task + the first categorization task), dPCA and heads (categorization task with
    string lengths, ``simple_string`` when in the study) into ``out/{saliency,dpca,heads}``; resumable."""
    from taskvec.analysis.runners import run_dpca, run_heads, run_saliency

    knowledge = [n for n in names if n in KNOWLEDGE_TASKS][:1]
    cat = "simple_string"
    n = 8 if cfg.quick else 20
    run_saliency(lm, out / "saliency", knowledge + [cat], n_trials=n, seed=cfg.seed, separator=cfg.separator,
                 resume=True)
    step = max(1, lm.n_layers // 6)  # the subspace ablation at 6 layers spread over the depth
    run_dpca(lm, out / "dpca", cat, n_trials=24 if cfg.quick else 40, seed=cfg.seed, separator=cfg.separator,
             ablate_layers=list(range(0, lm.n_layers, step)), resume=True)
    run_heads(lm, out / "heads", cat, n_trials=4 if cfg.quick else 8, seed=cfg.seed, separator=cfg.separator,
              resume=True)


def run_study(cfg: StudyConfig, out: str | Path, resume: bool = False, lm=None, report: bool = True) -> Path:
    """Run (or resume) the study into ``out``; returns the run directory. Writes ``report.html`` at the end."""
    from taskvec.models import load_model

    eff = cfg.effective()
    names = eff.resolved_tasks()
    known = set(list_tasks())
    for name in names:
        if name not in known and not name.startswith("file:") and not Path(name).suffix:
            raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(known))}, all, knowledge, "
                              "categorization (or file:PATH)")
    store = RunStore(out, cfg.model_dump(), resume=resume)
    lm = lm or load_model(cfg.model)
    runs: dict[str, _TaskRun] = {}

    def task_run(name: str) -> _TaskRun:
        if name not in runs:
            runs[name] = _TaskRun(name, eff, lm)
        return runs[name]

    bar = tqdm(names, desc="tasks")
    for name in bar:
        bar.set_postfix_str(name)
        tr = task_run(name)
        tag = dict(task=name, kind=tr.task.kind)
        if tr.categorization:
            tag["labels"] = "/".join(tr.task.labels)
        with_tags = lambda rows: [dict(r, **tag) for r in rows]  # noqa: E731
        store.run_unit(f"{name}/icl", lambda: with_tags(unit_icl(tr)))
        units = [f"{name}/{u}" for u in ("global", "local", "kofn", "convergence")]
        if all(store.done(u) for u in units):
            continue
        vec = _vectors(store, tr)
        control = _vectors(store, task_run(_control_task(name, eff)))
        store.run_unit(f"{name}/global", lambda: with_tags(unit_global(tr, vec, control)))
        store.run_unit(f"{name}/local", lambda: with_tags(unit_local(tr, vec, control)))
        if not store.done(f"{name}/kofn"):
            layer = best_layer(store.table(), name, "local", "local")
            store.run_unit(f"{name}/kofn", lambda: with_tags(unit_kofn(tr, vec, layer)))
        store.run_unit(f"{name}/convergence", lambda: with_tags(unit_convergence(tr, vec)))
        store.append(f"{name}/chance", [dict(experiment="chance", score=chance_level(tr), **tag)]) \
            if not store.done(f"{name}/chance") else None
    if eff.with_analyses:
        run_analyses(lm, store.path / "analyses", names, eff)
    if report:
        from taskvec.report.local_global import write_report

        write_report(store.path)
    return store.path
