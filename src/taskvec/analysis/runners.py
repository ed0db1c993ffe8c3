"""Run the three analyses into a run directory (:class:`~taskvec.runs.RunStore`): config, append-only results,
tables (parquet) and figures (PNG + SVG). The CLI (:mod:`taskvec.analysis.cli`) and a study's
``--with-analyses`` call these.

Each function returns the run directory. Units (resumable with ``resume=True``):
``saliency/<task>/<chunk>``, ``dpca/<task>/<table>``, ``heads/<task>/<mode>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

import taskvec.artifacts as A
from taskvec.analysis.tables import (DPCA_PARTS, dpca_tables, head_rankings, heads_tables, one_row,
                                     saliency_tables)
from taskvec.experiment import ModelExperimentConfig, nonempty_separator, open_store
from taskvec.runs import RunStore, save_table, write_text_atomic


def _check_task(name: str) -> str:
    """An unknown task or a malformed task file fails while the config is validated (before a model loads)."""
    from taskvec.tasks import get_task

    get_task(name)
    return name


class SaliencyConfig(ModelExperimentConfig):
    """Saliency flows per task (see :mod:`taskvec.analysis.saliency`)."""

    kind: ClassVar[str] = "saliency"
    tasks: list[str] = Field(default_factory=lambda: ["simple_string"], min_length=1)
    n_trials: int = Field(20, ge=1, description="prompts per task")
    n_demos: int | None = Field(None, ge=1, description="demonstrations per prompt (default: the task's; saliency "
                                "flows from the answers, so at least 1)")
    seed: int = Field(0, ge=0)
    loss: Literal["auto", "vocab", "label"] = "auto"
    batch_size: int = Field(4, ge=1, description="prompts per forward/backward (bounds peak memory)")
    separator: str = "is"

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        return [_check_task(t) for t in v]

    @field_validator("separator")
    @classmethod
    def _separator(cls, v: str) -> str:
        return nonempty_separator(v)


class DPCAConfig(ModelExperimentConfig):
    """dPCA by length and label with subspace ablation (see :mod:`taskvec.analysis.dpca`)."""

    kind: ClassVar[str] = "dpca"
    task: str = "simple_string"
    n_trials: int = Field(40, ge=1, description="trials (at least the number of length x class conditions)")
    n_demos: int | None = Field(None, ge=1, description="demonstrations per prompt (their answer states are "
                                "analysed)")
    seed: int = Field(0, ge=0)
    k: int | None = Field(None, ge=1, description="axes per marginalization to project out (default: each whole "
                          "subspace, levels - 1 axes)")
    layers: list[int] | None = Field(None, description="layers to analyse (default all)")
    ablate_layers: list[int] | None = Field(None, description="layers of the subspace ablation (default: layers; "
                                            "[] skips it)")
    regularizer: float = Field(1e-4, ge=0, allow_inf_nan=False, description="dPCA ridge lambda (times ||X||^2)")
    shrinkage: float | Literal["auto"] = Field("auto", description="covariance shrinkage: auto (Ledoit-Wolf) or "
                                               "a weight in [0, 1]")
    separator: str = "is"
    n_boot: int = Field(200, ge=1)
    probe_folds: int = Field(5, ge=2)
    task_params: dict = Field(default_factory=dict, description="passed to the task, e.g. {'short': [2, 3]}")

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        from taskvec.tasks import get_task

        _check_task(v)
        if get_task(v).kind != "categorization":
            raise ValueError(f"dPCA separates string length from label: task {v!r} is a knowledge task with no labels; "
                             "give a categorization task, e.g. simple_string")
        return v

    @field_validator("separator")
    @classmethod
    def _separator(cls, v: str) -> str:
        return nonempty_separator(v)

    @field_validator("shrinkage")
    @classmethod
    def _shrinkage(cls, v):
        if v != "auto" and not 0.0 <= v <= 1.0:  # NaN fails this too
            raise ValueError(f"--shrinkage must be 'auto' or a number in [0, 1], got '{v:g}'")
        return v

    @field_validator("layers", "ablate_layers")
    @classmethod
    def _layers(cls, v, info):
        if v is not None and any(layer < 0 for layer in v):
            raise ValueError(f"layer {min(v)} is out of range: layers count from 0")
        if v is not None and not v and info.field_name == "layers":
            raise ValueError("--layers is empty: give the layers to analyse, e.g. '0-5', or leave it out for all")
        return v


class HeadsConfig(ModelExperimentConfig):
    """Per-head effects at the query and attention to answers (see :mod:`taskvec.analysis.heads`)."""

    kind: ClassVar[str] = "heads"
    task: str = "simple_string"
    n_trials: int = Field(8, ge=1)
    n_demos: int | None = Field(None, ge=1, description="demonstrations per prompt (the query's attention to "
                                "their answers is measured)")
    seed: int = Field(0, ge=0)
    modes: list[Literal["mean", "patch", "writers", "readers", "function_vector"]] = Field(
        default_factory=lambda: ["mean", "patch"], min_length=1,
        description="mean, patch: heads at the query; writers, readers: heads that write the local vectors at "
                    "the answer positions / read them into the query; function_vector: each head's average "
                    "indirect effect on shuffled-label prompts (Todd et al.), ranked beside the others")
    layers: list[int] | None = Field(None, description="layers whose heads to test (default all)")
    heads: list[int] | None = Field(None, description="head indices to test in each layer (default all)")
    top: int = Field(10, ge=1, description="heads listed in heads_top.csv (and per role in heads_local_top.csv)")
    separator: str = "is"
    local_layer: int | None = Field(None, ge=0, description="writers/readers: the layer of the local vectors "
                                    "(default: chosen by local patching on n_select other trials)")
    n_select: int = Field(8, ge=1, description="writers/readers: trials the local layer is chosen on (disjoint "
                          "seed from the analysed prompts)")
    min_local_layer: int = Field(1, ge=0, description="lowest local layer the choice may take (at layer 0 a "
                                 "local vector is its answer token's embedding)")
    null_task: str = Field("auto", description="writers/readers null control: the task whose head means replace "
                           "the heads' outputs ('auto': antonyms for country_capital, else country_capital; "
                           "'none': no null)")

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        return _check_task(v)

    @field_validator("separator")
    @classmethod
    def _separator(cls, v: str) -> str:
        return nonempty_separator(v)

    @field_validator("null_task")
    @classmethod
    def _null_task(cls, v: str) -> str:
        return v if v in ("auto", "none") else _check_task(v)

    @model_validator(mode="after")
    def _layer_list(self) -> "HeadsConfig":
        if self.layers is not None:
            if not self.layers:
                raise ValueError("--layers is empty: give the layers whose heads to test, e.g. '0-5'")
            if min(self.layers) < 0:
                raise ValueError(f"--layers: layer {min(self.layers)} is out of range: layers count from 0")
        if self.heads is not None:
            if not self.heads:
                raise ValueError("--heads is empty: give head indices, e.g. '0-3', or leave it out for all")
            if min(self.heads) < 0:
                raise ValueError(f"--heads: head {min(self.heads)} is out of range: heads count from 0")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"--modes {','.join(self.modes)} repeats a mode: give each once")
        return self

    def null(self) -> str | None:
        """The null control's task (None: no null)."""
        if self.null_task == "none":
            return None
        if self.null_task == "auto":
            return "antonyms" if self.task == "country_capital" else "country_capital"
        return self.null_task


def _model(cfg, lm):
    """The loaded model (``lm`` if given: it must be ``cfg.model``), layers of the config checked against it."""
    from taskvec.errors import RangeError

    lm = lm or cfg.load()
    for name in ("layers", "ablate_layers", "local_layer"):
        value = getattr(cfg, name, None)
        for layer in [value] if isinstance(value, int) else value or []:
            lm.profile.check_layer(layer)
    if getattr(cfg, "heads", None):
        from taskvec.analysis.heads import head_geometry

        n_heads = head_geometry(lm)[1]
        if max(cfg.heads) >= n_heads:
            raise RangeError(f"--heads: head {max(cfg.heads)} is out of range: this model has heads "
                             f"0..{n_heads - 1} in each layer")
    k = getattr(cfg, "k", None)
    if k is not None and k > lm.d_model:
        raise RangeError(f"--k {k} is above the model's width (d_model = {lm.d_model}): give at most {lm.d_model}")
    return lm


def _trials(lm, task_name: str, n_trials: int, n_demos: int | None, seed: int, separator: str,
            task_params: dict | None = None):
    """``(task, trials, template)`` of an analysis: the task fitted to ``lm``'s tokenizer, its seeded trials."""
    from taskvec.prompts import Template
    from taskvec.tasks import task_for

    task = task_for(task_name, lm.tokenizer, **(task_params or {}))
    return task, task.sample_trials(n_trials, n_demos, seed=seed), Template(separator=separator)


def _prompts(lm, task_name: str, n_trials: int, n_demos: int | None, seed: int, separator: str):
    """:func:`_trials` and their prompts."""
    from taskvec.prompts import build_prompts

    task, trials, template = _trials(lm, task_name, n_trials, n_demos, seed, separator)
    return task, trials, template, build_prompts(lm, trials, template)


def _figures(out: Path) -> Path:
    path = out / A.FIGURES
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_saliency(cfg: SaliencyConfig, out: str | Path, resume: bool = False, lm=None,
                 progress: bool = True) -> Path:
    """Saliency flows per task -> ``saliency.parquet``, ``saliency_per_layer.csv``,
    ``figures/saliency_<task>.png|svg``. Units: ``saliency/<task>/<chunk>``."""
    from taskvec.analysis.saliency import plot_flows, saliency
    from taskvec.batching import chunks

    RunStore.check(out, cfg.saved(), resume, cfg.newer_fields(out))
    lm = _model(cfg, lm)
    per_task = {t: _prompts(lm, t, cfg.n_trials, cfg.n_demos, cfg.seed, cfg.separator)[3] for t in cfg.tasks}
    store = open_store(cfg, out, resume, lm)  # once every task's prompts are built
    for task_name, prompts in per_task.items():
        for i, rng in enumerate(chunks(len(prompts), cfg.batch_size)):
            def unit(rng=rng):
                res = saliency(lm, [prompts[j] for j in rng], loss=cfg.loss, batch_size=cfg.batch_size)
                df = res.flows.assign(prompt=res.flows.prompt + rng.start, task=task_name, loss=res.loss)
                return df.to_dict("records")
            store.run_unit(f"saliency/{task_name}/{i}", unit)
            if progress:
                print(f"saliency {task_name}: prompts {rng.stop}/{len(prompts)}", flush=True)
    tables = saliency_tables(store.path)
    save_table(tables["saliency"], store.path / A.SALIENCY)
    per_layer = tables["per_layer"]
    for task_name, pl in per_layer.groupby("task"):
        pl = pl.drop(columns="task").reset_index(drop=True)
        plot_flows(pl, _figures(store.path) / f"saliency_{task_name}", title=f"saliency flows: {task_name} ({lm.name})")
        plot_flows(pl, _figures(store.path) / f"saliency_{task_name}_share", normalize=True,
                   title=f"saliency flow shares: {task_name} ({lm.name})")
    save_table(per_layer, store.path / A.SALIENCY_PER_LAYER)
    return store.path


def run_dpca(cfg: DPCAConfig, out: str | Path, resume: bool = False, lm=None, progress: bool = True) -> Path:
    """dPCA + Mahalanobis + subspace ablation with controls and probes + C8 statistics. One analysis, stored as one
    unit per table: ``dpca/<task>/<part>`` for each part of :data:`~taskvec.analysis.tables.DPCA_PARTS`.

    ``k=None`` (default) ablates the whole marginal subspaces (length: ``n_lengths - 1`` axes, label:
    ``n_labels - 1``); an int ``k`` takes ``min(k, levels - 1)`` axes of both. Writes:

    * ``dpca_per_layer.csv``: variance split, dPCA explained variance, Mahalanobis (plug-in and cross-validated);
    * ``dpca_ablation.parquet``: per (prompt, layer, ablate) local-patching scores, with the subspace ``dim``;
    * ``dpca_ablation_summary.csv``: per (layer, ablate) accuracy with 95% Wilson interval and the cost
      (none - ablated) with a paired bootstrap interval;
    * ``dpca_probes.csv``: per (layer, ablate, factor) cross-validated probe accuracy with chance and majority;
    * ``dpca_c8.json``: :func:`~taskvec.analysis.dpca.c8_statistics`;
    * ``dpca_baselines.json`` (the figure ``figures/dpca_<task>.png|svg`` is drawn by the report).
    """
    import json

    from taskvec.analysis.dpca import dpca_analysis

    RunStore.check(out, cfg.saved(), resume, cfg.newer_fields(out))
    lm = _model(cfg, lm)
    task_name = cfg.task
    task, trials, template = _trials(lm, task_name, cfg.n_trials, cfg.n_demos, cfg.seed, cfg.separator,
                                     cfg.task_params)
    store = open_store(cfg, out, resume, lm)  # once the task and its trials are drawn

    units = {part: f"dpca/{task_name}/{part}" for part in DPCA_PARTS}  # one analysis, a unit per table

    def analysis() -> dict[str, list[dict]]:
        res = dpca_analysis(lm, trials, task=task, template=template, layers=cfg.layers, k=cfg.k,
                            regularizer=cfg.regularizer, shrinkage=cfg.shrinkage, ablate_layers=cfg.ablate_layers,
                            seed=cfg.seed, progress=progress, n_boot=cfg.n_boot, probe_folds=cfg.probe_folds)
        rows = {"per_layer": res.per_layer.to_dict("records"), "ablation": res.ablation.to_dict("records"),
                "probes": res.probes.to_dict("records"), "baselines": [res.baselines], "c8": [{"c8": res.c8}]}
        return {units[part]: rows[part] for part in DPCA_PARTS}

    store.run_units(list(units.values()), analysis)
    tables = dpca_tables(store.path)  # the exports, for other tools: the report reads the tables, not these
    save_table(tables["per_layer"], store.path / A.DPCA_PER_LAYER)
    save_table(tables["ablation"], store.path / A.DPCA_ABLATION)
    write_text_atomic(store.path / A.DPCA_BASELINES, json.dumps(one_row(tables["baselines"]), indent=2))
    write_text_atomic(store.path / A.DPCA_C8, json.dumps(one_row(tables["c8"]), indent=2))
    save_table(tables["probes"], store.path / A.DPCA_PROBES)
    if not tables["ablation"].empty:
        save_table(tables["ablation_summary"], store.path / A.DPCA_ABLATION_SUMMARY)
    return store.path


def _aligned_dummies(lm, task, trials, prompts, template, seed: int):
    """Dummy prompts aligned with ``prompts``: the one seeded draw over all trials (as ever), and where a
    tokenizer merges a trial's dummy differently, that trial redrawn (up to 8 times, as the study does)."""
    from taskvec.prompts import build_prompts, check_aligned, dummy_trials

    pools = [task.answer_pool(t) for t in trials]
    dummies = build_prompts(lm, dummy_trials(trials, pools, seed, lm.tokenizer), template)
    for i, (p, d) in enumerate(zip(prompts, dummies)):
        attempt = 0
        while (len(d) != len(p) or d.answer_positions != p.answer_positions) and attempt < 8:
            d = build_prompts(lm, dummy_trials([trials[i]], [pools[i]], seed + 31 * i + attempt + 1, lm.tokenizer),
                              template)[0]
            attempt += 1
        dummies[i] = d
    check_aligned(prompts, dummies)
    return dummies


def select_local_layer(lm, cfg: HeadsConfig, task, template) -> list[dict]:
    """Local patching (each ICL prompt's own local vectors into its dummy prompt at the answer positions) at every
    layer from ``min_local_layer`` on, on ``n_select`` trials drawn with another seed than the analysed ones:
    rows ``prompt, layer, correct, target_logprob[, label_correct], score``. The local layer is the best by
    :func:`taskvec.scoring.select_layer` (selection is not evaluation: these trials are not analysed)."""
    from taskvec.intervene import read_states
    from taskvec.prompts import build_prompts
    from taskvec.scoring import main_column
    from taskvec.sweep import patch_layers

    trials = task.sample_trials(cfg.n_select, cfg.n_demos, seed=cfg.seed + 10_007)
    prompts = build_prompts(lm, trials, template)
    dummies = _aligned_dummies(lm, task, trials, prompts, template, cfg.seed + 10_007)
    if not prompts[0].answer_positions:
        from taskvec.errors import EmptyInputError

        raise EmptyInputError("the prompts have no demonstrations: local vectors need at least one")
    local = read_states(lm, [p.ids for p in prompts], [p.answer_positions for p in prompts])  # [P, L, n, d]
    layers = list(range(min(cfg.min_local_layer, lm.n_layers - 1), lm.n_layers))
    df = patch_layers(lm, dummies, local, positions="answers", layers=layers)
    df["score"] = df[main_column(task.kind == "categorization")]
    return df.to_dict("records")


def _local_unit(lm, role: str, prompts, dummies, local_layer: int, cfg: HeadsConfig, mean_from, label: str):
    """One writers/readers unit: head rows and (``record="baseline"``) the per-prompt positive-control rows."""
    from taskvec.analysis.local_heads import reader_effects, writer_effects

    fn = writer_effects if role == "writers" else reader_effects
    table = fn(lm, prompts, dummies, local_layer, layers=cfg.layers, heads=cfg.heads, mean_from=mean_from)
    rows = table.assign(mean_from=label, record="head", local_layer=local_layer).to_dict("records")
    rows += [dict(r, role=role, mean_from=label, record="baseline", local_layer=local_layer)
             for r in table.attrs["baseline"]]
    return rows


def run_heads(cfg: HeadsConfig, out: str | Path, resume: bool = False, lm=None, progress: bool = True) -> Path:
    """Per-head mean-ablation / ICL->dummy patching effects and attention to answers -> ``heads.parquet``,
    ``heads_summary.csv``, ``heads_top.csv``, ``figures/heads_<mode>.png|svg``.
    Units: ``heads/<task>/<mode>``, ``heads/<task>/attention``.

    Modes ``writers`` / ``readers`` (heads that write the local vectors at the answer positions / read them into
    the query: :func:`~taskvec.analysis.local_heads.writer_effects`,
    :func:`~taskvec.analysis.local_heads.reader_effects`),
    each with its null (head means from ``null_task``'s prompts) -> ``heads_local.parquet``,
    ``heads_local_summary.csv`` (t intervals over prompts), ``heads_local_top.csv``, ``heads_local_baselines.csv``
    (the positive control: clean local patch vs the unpatched dummy), ``heads_overlap.csv`` (top-``top`` overlap
    of writers, readers and the query heads of mode ``mean``), ``figures/heads_{writers,readers}.png|svg``.
    Units: ``heads/<task>/local_layer`` (unless ``local_layer`` is given), ``heads/<task>/<role>``,
    ``heads/<task>/<role>_null``."""
    from taskvec.analysis.heads import attention_to_answers, head_effects, plot_heads

    RunStore.check(out, cfg.saved(), resume, cfg.newer_fields(out))
    lm = _model(cfg, lm)
    task_name, modes = cfg.task, cfg.modes
    query_modes = [m for m in modes if m in ("mean", "patch")]
    roles = [m for m in modes if m in ("writers", "readers")]
    task, trials, template, prompts = _prompts(lm, task_name, cfg.n_trials, cfg.n_demos, cfg.seed, cfg.separator)
    if roles and not prompts[0].answer_positions:
        from taskvec.errors import EmptyInputError

        raise EmptyInputError("writers/readers need demonstrations (n_demos >= 1): local vectors live at their "
                              "answer positions")
    dummies = None
    if "patch" in modes or roles:
        dummies = _aligned_dummies(lm, task, trials, prompts, template, cfg.seed)
    null_prompts, null_name = None, cfg.null() if roles else None
    if null_name:
        null_task = task_for_name(lm, null_name)
        null_trials = null_task.sample_trials(cfg.n_trials, len(trials[0].demos), seed=cfg.seed)
        from taskvec.prompts import build_prompts

        null_prompts = build_prompts(lm, null_trials, template)
    store = open_store(cfg, out, resume, lm)  # once the prompts are built and aligned
    for mode in query_modes:
        store.run_unit(f"heads/{task_name}/{mode}",
                       lambda mode=mode: head_effects(lm, prompts, dummies, mode=mode, layers=cfg.layers,
                                                      heads=cfg.heads).to_dict("records"))
        if progress:
            print(f"heads {task_name}: {mode} done", flush=True)
    local_layer = cfg.local_layer
    if roles:
        if local_layer is None:
            from taskvec.scoring import select_layer

            store.run_unit(f"heads/{task_name}/local_layer", lambda: select_local_layer(lm, cfg, task, template))
            t = store.table()
            local_layer = select_layer(t[t.unit == f"heads/{task_name}/local_layer"])
            if progress:
                print(f"heads {task_name}: local layer {local_layer} (chosen on {cfg.n_select} other trials)",
                      flush=True)
        for role in roles:
            store.run_unit(f"heads/{task_name}/{role}", lambda role=role: _local_unit(
                lm, role, prompts, dummies, local_layer, cfg, None, "own"))
            if null_prompts is not None:
                store.run_unit(f"heads/{task_name}/{role}_null", lambda role=role: _local_unit(
                    lm, role, prompts, dummies, local_layer, cfg, null_prompts, f"other:{null_name}"))
            if progress:
                print(f"heads {task_name}: {role} done", flush=True)
    if "function_vector" in modes:
        store.run_unit(f"heads/{task_name}/function_vector", lambda: _fv_unit(lm, trials, prompts, template, cfg))
        if progress:
            print(f"heads {task_name}: function_vector done", flush=True)
    store.run_unit(f"heads/{task_name}/attention", lambda: attention_to_answers(lm, prompts).to_dict("records"))
    tables = heads_tables(store.path)  # the exports, for other tools: the report reads the tables, not these
    if len(tables["effects"]):
        save_table(tables["effects"], store.path / A.HEADS)
    summary = tables["summary"]
    save_table(summary, store.path / A.HEADS_SUMMARY)
    if query_modes:
        save_table(tables["top"], store.path / A.HEADS_TOP)
    for mode in query_modes:
        plot_heads(summary, _figures(store.path) / f"heads_{mode}", value=f"{mode}_effect",
                   title=f"{mode} effect per head: {task_name} ({lm.name})")
    plot_heads(summary, _figures(store.path) / "heads_attention", value="attn_to_answers",
               title=f"query attention on answers: {task_name} ({lm.name})")
    if roles:
        _local_outputs(store.path, tables, cfg, lm.name, lm.n_layers)
    if "function_vector" in modes:
        save_table(tables["function_vector"], store.path / A.HEADS_FUNCTION_VECTOR)
    if len(head_rankings(tables, modes)) > 1:
        save_table(tables["overlap"], store.path / A.HEADS_OVERLAP)
    return store.path


def _fv_unit(lm, trials, prompts, template, cfg: HeadsConfig) -> list[dict]:
    """The indirect-effect scan of the heads run: head means over its ICL prompts, each head patched into the same
    trials with their demonstration answers shuffled (:mod:`taskvec.analysis.function_vectors`)."""
    from taskvec.analysis.function_vectors import indirect_effects, shuffled_label_prompts

    shuffled = shuffled_label_prompts(lm, trials, template, seed=cfg.seed)
    return indirect_effects(lm, prompts, shuffled, layers=cfg.layers, heads=cfg.heads).to_dict("records")


def task_for_name(lm, name: str):
    """The task ``name`` fitted to ``lm``'s tokenizer."""
    from taskvec.tasks import task_for

    return task_for(name, lm.tokenizer)


def _local_outputs(path: Path, tables, cfg: HeadsConfig, model: str, n_layers: int) -> None:
    """The writers/readers exports and figures of a heads run (see :func:`run_heads`), from its tables
    (:func:`~taskvec.analysis.tables.heads_tables`)."""
    from taskvec.analysis.heads import plot_heads

    save_table(tables["local"], path / A.HEADS_LOCAL)
    save_table(tables["local_summary"], path / A.HEADS_LOCAL_SUMMARY)
    save_table(tables["local_top"], path / A.HEADS_LOCAL_TOP)
    save_table(tables["local_baselines"], path / A.HEADS_LOCAL_BASELINES)
    local_layer = int(tables["local"].local_layer.iloc[0])
    named = {k: v for k, v in head_rankings(tables, cfg.modes).items() if k in ("writers", "readers")}
    for role, g in named.items():
        grid = pd.DataFrame({"layer": np.repeat(np.arange(n_layers), g["head"].max() + 1),
                             "head": np.tile(np.arange(g["head"].max() + 1), n_layers)})
        grid = grid.merge(g[["layer", "head", "effect"]], on=["layer", "head"], how="left")
        plot_heads(grid, _figures(path) / f"heads_{role}", value="effect",
                   title=f"{role} of local vectors (layer {local_layer}): {cfg.task} ({model})")
