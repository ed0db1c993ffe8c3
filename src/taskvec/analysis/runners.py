"""Run the three analyses into a run directory (:class:`~taskvec.runs.RunStore`): config, append-only results,
tables (parquet) and figures (PNG + SVG). The CLI (:mod:`taskvec.analysis.cli`) and a study's
``--with-analyses`` call these.

Each function returns the run directory. Units (resumable with ``resume=True``):
``saliency/<task>/<chunk>``, ``dpca/<task>``, ``heads/<task>/<mode>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from taskvec.experiment import ModelExperimentConfig, open_store
from taskvec.runs import RunStore


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
    n_demos: int | None = Field(None, ge=0, description="demonstrations per prompt (default: the task's)")
    seed: int = Field(0, ge=0)
    loss: Literal["auto", "vocab", "label"] = "auto"
    batch_size: int = Field(4, ge=1, description="prompts per forward/backward (bounds peak memory)")
    separator: str = "is"

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        return [_check_task(t) for t in v]


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
        return _check_task(v)

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
    modes: list[Literal["mean", "patch"]] = Field(default_factory=lambda: ["mean", "patch"], min_length=1)
    layers: list[int] | None = Field(None, description="layers whose heads to test (default all)")
    top: int = Field(10, ge=1, description="heads listed in heads_top.csv")
    separator: str = "is"

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        return _check_task(v)

    @model_validator(mode="after")
    def _layer_list(self) -> "HeadsConfig":
        if self.layers is not None:
            if not self.layers:
                raise ValueError("--layers is empty: give the layers whose heads to test, e.g. '0-5'")
            if min(self.layers) < 0:
                raise ValueError(f"--layers: layer {min(self.layers)} is out of range: layers count from 0")
        return self


def _model(cfg, lm):
    """The loaded model (``lm`` if given: it must be ``cfg.model``), layers of the config checked against it."""
    from taskvec.errors import RangeError

    lm = lm or cfg.load()
    for name in ("layers", "ablate_layers"):
        for layer in getattr(cfg, name, None) or []:
            lm.profile.check_layer(layer)
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
    path = out / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_saliency(cfg: SaliencyConfig, out: str | Path, resume: bool = False, lm=None,
                 progress: bool = True) -> Path:
    """Saliency flows per task -> ``saliency.parquet``, ``saliency_per_layer.csv``,
    ``figures/saliency_<task>.png|svg``, ``report.html``. Units: ``saliency/<task>/<chunk>``."""
    from taskvec.analysis.saliency import plot_flows, saliency
    from taskvec.batching import chunks

    RunStore.check(out, cfg.saved(), resume)
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
    table = store.table()
    table.to_parquet(store.path / "saliency.parquet")
    per_layer = []
    from taskvec.analysis.saliency import FLOWS, SaliencyResult

    for task_name, g in table.groupby("task"):
        pl = SaliencyResult(g[["prompt", "layer", *FLOWS]], str(g.loss.iloc[0])).flows_per_layer()
        per_layer.append(pl.assign(task=task_name))
        plot_flows(pl, _figures(store.path) / f"saliency_{task_name}", title=f"saliency flows: {task_name} ({lm.name})")
        plot_flows(pl, _figures(store.path) / f"saliency_{task_name}_share", normalize=True,
                   title=f"saliency flow shares: {task_name} ({lm.name})")
    pd.concat(per_layer).to_csv(store.path / "saliency_per_layer.csv", index=False)
    return _reported(store.path)


def run_dpca(cfg: DPCAConfig, out: str | Path, resume: bool = False, lm=None, progress: bool = True) -> Path:
    """dPCA + Mahalanobis + subspace ablation with controls and probes + C8 statistics. Unit: ``dpca/<task>``.

    ``k=None`` (default) ablates the whole marginal subspaces (length: ``n_lengths - 1`` axes, label:
    ``n_labels - 1``); an int ``k`` takes ``min(k, levels - 1)`` axes of both. Writes:

    * ``dpca_per_layer.csv``: variance split, dPCA explained variance, Mahalanobis (plug-in and cross-validated);
    * ``dpca_ablation.parquet``: per (prompt, layer, ablate) local-patching scores, with the subspace ``dim``;
    * ``dpca_ablation_summary.csv``: per (layer, ablate) accuracy with 95% Wilson interval and the cost
      (none - ablated) with a paired bootstrap interval;
    * ``dpca_probes.csv``: per (layer, ablate, factor) cross-validated probe accuracy with chance and majority;
    * ``dpca_c8.json``: :func:`~taskvec.analysis.dpca.c8_statistics`;
    * ``dpca_baselines.json``; ``figures/dpca_<task>.png|svg``; ``report.html``.
    """
    import json

    from taskvec.analysis.dpca import DPCAResult, ablation_summary, dpca_analysis
    from taskvec.report.dpca_figures import plot_dpca

    RunStore.check(out, cfg.saved(), resume)
    lm = _model(cfg, lm)
    task_name = cfg.task
    task, trials, template = _trials(lm, task_name, cfg.n_trials, cfg.n_demos, cfg.seed, cfg.separator,
                                     cfg.task_params)
    store = open_store(cfg, out, resume, lm)  # once the task and its trials are drawn

    def unit():
        res = dpca_analysis(lm, trials, task=task, template=template, layers=cfg.layers, k=cfg.k,
                            regularizer=cfg.regularizer, shrinkage=cfg.shrinkage, ablate_layers=cfg.ablate_layers,
                            seed=cfg.seed, progress=progress, n_boot=cfg.n_boot, probe_folds=cfg.probe_folds)
        rows = [dict(r, table="per_layer") for r in res.per_layer.to_dict("records")]
        rows += [dict(r, table="ablation") for r in res.ablation.to_dict("records")]
        rows += [dict(r, table="probe") for r in res.probes.to_dict("records")]
        rows.append({"table": "baselines", **res.baselines})
        rows.append({"table": "c8", "c8_json": json.dumps(res.c8)})
        return rows

    store.run_unit(f"dpca/{task_name}", unit)
    table = store.table()

    def part(name: str) -> pd.DataFrame:
        df = table[table.table == name].dropna(axis=1, how="all").drop(columns=["table", "unit"], errors="ignore")
        for col in ("layer", "prompt", "dim", "n_folds", "n_samples", "n_levels", "dim_length", "dim_label"):
            if col in df:  # jsonl round trip with NaN-padded rows makes ints floats
                df[col] = df[col].astype(int)
        return df.reset_index(drop=True)

    per_layer, ablation, probes = part("per_layer"), part("ablation"), part("probe")
    baselines = part("baselines").iloc[0].to_dict()
    c8_rows = table[table.table == "c8"] if "c8_json" in table else pd.DataFrame()
    c8 = json.loads(c8_rows["c8_json"].iloc[0]) if len(c8_rows) else {}
    per_layer.to_csv(store.path / "dpca_per_layer.csv", index=False)
    ablation.to_parquet(store.path / "dpca_ablation.parquet")
    (store.path / "dpca_baselines.json").write_text(json.dumps(baselines, indent=2))
    (store.path / "dpca_c8.json").write_text(json.dumps(c8, indent=2))
    probes.to_csv(store.path / "dpca_probes.csv", index=False)
    if not ablation.empty:
        ablation_summary(ablation, seed=cfg.seed).to_csv(store.path / "dpca_ablation_summary.csv", index=False)
    res = DPCAResult(per_layer, ablation, baselines, probes=probes, c8=c8)
    plot_dpca(res, _figures(store.path) / f"dpca_{task_name}", title=f"dPCA: {task_name} ({lm.name})")
    return _reported(store.path)


def run_heads(cfg: HeadsConfig, out: str | Path, resume: bool = False, lm=None, progress: bool = True) -> Path:
    """Per-head mean-ablation / ICL->dummy patching effects and attention to answers -> ``heads.parquet``,
    ``heads_summary.csv``, ``heads_top.csv``, ``figures/heads_<mode>.png|svg``, ``report.html``.
    Units: ``heads/<task>/<mode>``, ``heads/<task>/attention``."""
    from taskvec.analysis.heads import attention_to_answers, head_effects, plot_heads, summarize, top_heads
    from taskvec.prompts import build_prompts, check_aligned, dummy_trials

    RunStore.check(out, cfg.saved(), resume)
    lm = _model(cfg, lm)
    task_name, modes = cfg.task, cfg.modes
    task, trials, template, prompts = _prompts(lm, task_name, cfg.n_trials, cfg.n_demos, cfg.seed, cfg.separator)
    dummies = None
    if "patch" in modes:
        dummies = build_prompts(lm, dummy_trials(trials, [task.answer_pool(t) for t in trials], cfg.seed,
                                                 lm.tokenizer), template)
        check_aligned(prompts, dummies)
    store = open_store(cfg, out, resume, lm)  # once the prompts are built and aligned
    for mode in modes:
        store.run_unit(f"heads/{task_name}/{mode}",
                       lambda mode=mode: head_effects(lm, prompts, dummies, mode=mode, layers=cfg.layers)
                       .to_dict("records"))
        if progress:
            print(f"heads {task_name}: {mode} done", flush=True)
    store.run_unit(f"heads/{task_name}/attention", lambda: attention_to_answers(lm, prompts).to_dict("records"))
    table = store.table()
    effects = table[table.unit.str.endswith(("/mean", "/patch"))].dropna(axis=1, how="all")
    effects.to_parquet(store.path / "heads.parquet")
    attn = table[table.unit.str.endswith("/attention")].dropna(axis=1, how="all").drop(columns=["unit"])
    parts = [g for _, g in effects.groupby("mode")] + [attn]
    summary = summarize(*parts)
    summary.to_csv(store.path / "heads_summary.csv", index=False)
    by = "patch_effect" if "patch_effect" in summary else "mean_effect"
    top_heads(summary, cfg.top, by=by).to_csv(store.path / "heads_top.csv", index=False)
    for mode in modes:
        plot_heads(summary, _figures(store.path) / f"heads_{mode}", value=f"{mode}_effect",
                   title=f"{mode} effect per head: {task_name} ({lm.name})")
    plot_heads(summary, _figures(store.path) / "heads_attention", value="attn_to_answers",
               title=f"query attention on answers: {task_name} ({lm.name})")
    return _reported(store.path)


def _reported(run_dir: Path) -> Path:
    """Write the run's ``report.html`` (the one report writer) and return the run directory."""
    from taskvec.report import write_report

    write_report(run_dir)
    return run_dir
