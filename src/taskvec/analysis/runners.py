"""Run the three analyses into a run directory (:class:`~taskvec.runs.RunStore`): config, append-only results,
tables (parquet) and figures (PNG + SVG). The CLI (:mod:`taskvec.analysis.cli`) and a study's
``--with-analyses`` call these.

Each function returns the run directory. Units (resumable with ``resume=True``):
``saliency/<task>/<chunk>``, ``dpca/<task>``, ``heads/<task>/<mode>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from taskvec.runs import RunStore


def _prompts(lm, task_name: str, n_trials: int, n_demos: int | None, seed: int, separator: str):
    from taskvec.prompts import Template, build_prompts
    from taskvec.tasks import task_for

    task = task_for(task_name, lm.tokenizer)
    trials = task.sample_trials(n_trials, n_demos, seed=seed)
    template = Template(separator=separator)
    return task, trials, template, build_prompts(lm, trials, template)


def _figures(out: Path) -> Path:
    path = out / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_saliency(lm, out: str | Path, tasks: Sequence[str] = ("simple_string",), n_trials: int = 20,
                 n_demos: int | None = None, seed: int = 0, loss: str = "auto", batch_size: int = 4,
                 separator: str = "is", resume: bool = False, progress: bool = True) -> Path:
    """Saliency flows per task (SPEC A.5) -> ``saliency.parquet``, ``saliency_per_layer.csv``,
    ``figures/saliency_<task>.png|svg``."""
    from taskvec.analysis.saliency import plot_flows, saliency
    from taskvec.batching import chunks

    config = {"analysis": "saliency", "model": lm.name, "tasks": list(tasks), "n_trials": n_trials,
              "n_demos": n_demos, "seed": seed, "loss": loss, "separator": separator}
    store = RunStore(out, config, resume=resume)
    for task_name in tasks:
        _, _, _, prompts = _prompts(lm, task_name, n_trials, n_demos, seed, separator)
        for i, rng in enumerate(chunks(len(prompts), batch_size)):
            def unit(rng=rng):
                res = saliency(lm, [prompts[j] for j in rng], loss=loss, batch_size=batch_size)
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
    return store.path


def run_dpca(lm, out: str | Path, task_name: str = "simple_string", n_trials: int = 40, n_demos: int | None = None,
             seed: int = 0, k: int | None = None, layers: Sequence[int] | None = None,
             ablate_layers: Sequence[int] | None = None, regularizer: float = 1e-4, shrinkage: float | str = "auto",
             separator: str = "is", resume: bool = False, progress: bool = True, n_boot: int = 200,
             probe_folds: int = 5, task_params: dict | None = None) -> Path:
    """dPCA + Mahalanobis + subspace ablation with controls and probes + C8 statistics (SPEC A.6, A.8).

    ``k=None`` (default) ablates the whole marginal subspaces (length: ``n_lengths - 1`` axes, label:
    ``n_labels - 1``); an int ``k`` takes ``min(k, levels - 1)`` axes of both. ``task_params`` are passed to
    :func:`~taskvec.tasks.task_for` (e.g. ``{"short": (2, 3), "long": (8, 9)}``). Writes:

    * ``dpca_per_layer.csv``: variance split, dPCA explained variance, Mahalanobis (plug-in and cross-validated);
    * ``dpca_ablation.parquet``: per (prompt, layer, ablate) local-patching scores, with the subspace ``dim``;
    * ``dpca_ablation_summary.csv``: per (layer, ablate) accuracy with 95% Wilson interval and the cost
      (none - ablated) with a paired bootstrap interval;
    * ``dpca_probes.csv``: per (layer, ablate, factor) cross-validated probe accuracy with chance and majority;
    * ``dpca_c8.json``: :func:`~taskvec.analysis.dpca.c8_statistics`;
    * ``dpca_baselines.json``; ``figures/dpca_<task>.png|svg``.
    """
    import json

    from taskvec.analysis.dpca import DPCAResult, ablation_summary, dpca_analysis, plot_dpca

    config = {"analysis": "dpca", "model": lm.name, "task": task_name, "n_trials": n_trials, "n_demos": n_demos,
              "seed": seed, "k": k, "layers": list(layers) if layers is not None else None,
              "ablate_layers": list(ablate_layers) if ablate_layers is not None else None,
              "regularizer": regularizer, "shrinkage": shrinkage, "separator": separator, "n_boot": n_boot,
              "probe_folds": probe_folds, "task_params": dict(task_params or {})}
    store = RunStore(out, config, resume=resume)

    def unit():
        if task_params:
            from taskvec.prompts import Template
            from taskvec.tasks import task_for

            task = task_for(task_name, lm.tokenizer, **task_params)
            trials, template = task.sample_trials(n_trials, n_demos, seed=seed), Template(separator=separator)
        else:
            task, trials, template, _ = _prompts(lm, task_name, n_trials, n_demos, seed, separator)
        res = dpca_analysis(lm, trials, task=task, template=template, layers=layers, k=k, regularizer=regularizer,
                            shrinkage=shrinkage, ablate_layers=ablate_layers, seed=seed, progress=progress,
                            n_boot=n_boot, probe_folds=probe_folds)
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
        ablation_summary(ablation, seed=seed).to_csv(store.path / "dpca_ablation_summary.csv", index=False)
    res = DPCAResult(per_layer, ablation, baselines, probes=probes, c8=c8)
    plot_dpca(res, _figures(store.path) / f"dpca_{task_name}", title=f"dPCA: {task_name} ({lm.name})")
    return store.path


def run_heads(lm, out: str | Path, task_name: str = "simple_string", n_trials: int = 8, n_demos: int | None = None,
              seed: int = 0, modes: Sequence[str] = ("mean", "patch"), layers: Sequence[int] | None = None,
              top: int = 10, separator: str = "is", resume: bool = False, progress: bool = True) -> Path:
    """Per-head mean-ablation / ICL->dummy patching effects and attention to answers (SPEC B.7) ->
    ``heads.parquet``, ``heads_summary.csv``, ``heads_top.csv``, ``figures/heads_<mode>.png|svg``."""
    from taskvec.analysis.heads import attention_to_answers, head_effects, plot_heads, summarize, top_heads
    from taskvec.prompts import build_prompts, check_aligned, dummy_trials

    config = {"analysis": "heads", "model": lm.name, "task": task_name, "n_trials": n_trials, "n_demos": n_demos,
              "seed": seed, "modes": list(modes), "layers": list(layers) if layers is not None else None,
              "separator": separator}
    store = RunStore(out, config, resume=resume)
    task, trials, template, prompts = _prompts(lm, task_name, n_trials, n_demos, seed, separator)
    dummies = None
    if "patch" in modes:
        dummies = build_prompts(lm, dummy_trials(trials, [task.answer_pool(t) for t in trials], seed, lm.tokenizer),
                                template)
        check_aligned(prompts, dummies)
    for mode in modes:
        store.run_unit(f"heads/{task_name}/{mode}",
                       lambda mode=mode: head_effects(lm, prompts, dummies, mode=mode, layers=layers)
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
    top_heads(summary, top, by=by).to_csv(store.path / "heads_top.csv", index=False)
    for mode in modes:
        plot_heads(summary, _figures(store.path) / f"heads_{mode}", value=f"{mode}_effect",
                   title=f"{mode} effect per head: {task_name} ({lm.name})")
    plot_heads(summary, _figures(store.path) / "heads_attention", value="attn_to_answers",
               title=f"query attention on answers: {task_name} ({lm.name})")
    return store.path
