"""Vanilla vs TVP-loss over seeds (docs/spec.md B.6): the from-scratch claims as verdicts computed from a run.

One experiment, the same shape as every other: a :class:`ComparisonConfig` → units of work → the run store →
``report.html``. The units are

* ``train/LAYOUT/ARM/seed-S`` — train one model (:func:`taskvec.scratch.train.train`, into
  ``models/LAYOUT-ARM-seed-S``; a killed training resumes from its last checkpoint with the same data stream);
* ``eval/LAYOUT/ARM/seed-S`` — evaluate it (:func:`taskvec.scratch.evaluate.evaluate_model`) twice, on two
  disjoint prompt draws: a **selection** set (the layer sweep only; it picks the layer a vanilla model's vector
  would be searched at) and an **evaluation** set (every analysis). Every number a verdict reads comes from the
  evaluation set; the selection set never scores anything.

:func:`seed_table` gathers one row per (layout, arm, seed, metric); :func:`aggregate` gives mean and a 95%
Student-t interval over seeds; :func:`verdicts` applies the rules of :mod:`taskvec.claims.from_scratch` (fixed
there, in code, before any data is seen; their thresholds, :class:`ScratchClaimRules`, are saved with the run's
config).

Example::

    from taskvec.scratch.comparison import ComparisonConfig, run_comparison
    cfg = ComparisonConfig(train={"task": {"name": "token_offset"}, "n_layer": 4, "n_embd": 64, "steps": 1500},
                           arms=[{"name": "vanilla"}, {"name": "tvp-l1", "tvp_layer": 1}], seeds=[0, 1, 2])
    run_comparison(cfg, "runs/cmp-token", workers=2)          # resumable: run_comparison(..., resume=True)
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import taskvec.artifacts as A
from taskvec.claims import from_scratch as rules_b
from taskvec.claims.from_scratch import (CLAIMS, NOT_REPRODUCED, PAPER_SCALE, ScratchClaimRules, claim_overall,
                                         fmt_seeds, s_defined_for, seed_ci)
from taskvec.claims.rules import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from taskvec.errors import ConfigError, RangeError
from taskvec.experiment import ExperimentConfig
from taskvec.runs import save_table


FIXED = ("layout", "seed", "tvp_layer", "tvp_weight", "tvp_schedule")  # set per arm / layout / seed, not in `train`


class Arm(BaseModel):
    """One kind of model: vanilla (no TVP fields) or a TVP-loss at ``tvp_layer`` with weight and schedule."""

    model_config = ConfigDict(extra="forbid")

    name: str
    tvp_layer: int | None = None
    tvp_weight: float | None = None
    tvp_schedule: str = "constant"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError(f"arm name {v!r} must be letters, digits, '-', '_' or '.' (it names directories)")
        return v

    @property
    def vanilla(self) -> bool:
        return self.tvp_layer is None and not self.tvp_weight




class ComparisonConfig(ExperimentConfig):
    """Every training run and evaluation of a vanilla-vs-TVP comparison over seeds.

    Attributes:
        train: :class:`~taskvec.scratch.train.TrainConfig` fields shared by every model (task, model shape,
            k_max, steps, lr, ...); not ``layout``, ``seed`` or the TVP fields, which come from ``layouts``,
            ``seeds`` and ``arms``.
        arms: the kinds of model; exactly one must be vanilla (the reference of B3–B5).
        layouts: ``x→y`` and/or ``*xy``.
        seeds: training seeds (the seed of the weights' initialisation and of the data stream).
        evaluation: :class:`~taskvec.scratch.evaluate.EvalConfig` fields (``k``, ``n_trials``, ``analyses``, ...);
            not ``models``, ``layer`` or ``seed``.
        select_seed / eval_seed: the prompt draws of the selection and evaluation sets (must differ).
        rules: the verdict thresholds.
    """

    kind: ClassVar[str] = "compare"

    train: dict[str, Any] = Field(default_factory=dict)
    arms: list[Arm] = Field(default_factory=lambda: [Arm(name="vanilla"), Arm(name="tvp", tvp_layer=2)])
    layouts: list[str] = Field(default_factory=lambda: ["x→y", "*xy"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    evaluation: dict[str, Any] = Field(default_factory=lambda: {"analyses": ["layers", "noisy", "ood", "pca"]})
    select_seed: int = 777
    eval_seed: int = 12345
    rules: ScratchClaimRules = Field(default_factory=ScratchClaimRules)

    @field_validator("layouts")
    @classmethod
    def _layouts(cls, v: list[str]) -> list[str]:
        from taskvec.scratch.layouts import canonical

        out = [canonical(x) for x in v]
        if not out or len(set(out)) != len(out):
            raise ValueError(f"give one or more distinct layouts, got {v}")
        if "xy" in out:
            raise ValueError("layout xy has no task-vector slot: use x→y and/or *xy")
        return out

    @model_validator(mode="after")
    def _check(self) -> "ComparisonConfig":
        bad = sorted(set(self.train) & set(FIXED))
        if bad:
            raise ValueError(f"train must not set {', '.join(bad)}: layouts, seeds and arms set them")
        bad = sorted(set(self.evaluation) & {"models", "layer", "seed"})
        if bad:
            raise ValueError(f"evaluation must not set {', '.join(bad)}: the comparison sets them")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"two arms share a name: {names}")
        if sum(a.vanilla for a in self.arms) != 1:
            raise ValueError("give exactly one vanilla arm (no tvp_layer, no tvp_weight): the reference of B3–B5")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"give one or more distinct seeds, got {self.seeds}")
        if min(self.seeds) < 0 or min(self.select_seed, self.eval_seed) < 0:
            raise ValueError(f"seeds must be >= 0, got seeds {self.seeds}, select_seed {self.select_seed}, "
                             f"eval_seed {self.eval_seed}")
        if self.select_seed == self.eval_seed:
            raise ValueError("select_seed and eval_seed must differ: selection and evaluation use disjoint draws")
        for layout in self.layouts:  # every run's config is valid before any work starts
            for arm in self.arms:
                self.train_config(layout, arm, self.seeds[0])
        self.eval_config(None)
        return self

    def train_config(self, layout: str, arm: Arm, seed: int):
        from taskvec.scratch.train import TrainConfig

        fields = {**self.train, "layout": layout, "seed": seed, "tvp_schedule": arm.tvp_schedule}
        if arm.tvp_layer is not None:
            fields["tvp_layer"] = arm.tvp_layer
        if arm.tvp_weight is not None:
            fields["tvp_weight"] = arm.tvp_weight
        try:
            return TrainConfig(**fields)
        except ConfigError as err:  # one line (TrainConfig.config_error), naming the arm
            msg = str(err).removeprefix("bad training config: ")
            raise ValueError(f"arm {arm.name!r}, layout {layout}: {msg}") from None

    def eval_config(self, layer: int | None, seed: int | None = None, analyses: list[str] | None = None):
        from taskvec.scratch.evaluate import EvalConfig

        fields = {**self.evaluation, "layer": layer, "seed": self.eval_seed if seed is None else seed}
        if analyses is not None:
            fields["analyses"] = analyses
        try:
            return EvalConfig(**fields)
        except Exception as err:
            errors = err.errors() if hasattr(err, "errors") else [{"msg": str(err)}]
            msg = errors[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"evaluation: {msg}") from None

    def runs(self) -> list[tuple[str, Arm, int]]:
        """``(layout, arm, seed)`` of every model, in the order they are trained."""
        return [(layout, arm, seed) for seed in self.seeds for layout in self.layouts for arm in self.arms]


def layout_slug(layout: str) -> str:
    """A layout as a directory-name part: ``x→y`` → ``x-y``, ``*xy`` → ``sxy``."""
    return {"x→y": "x-y", "*xy": "sxy"}.get(layout, layout)


def model_dir(out: Path, layout: str, arm: Arm, seed: int) -> Path:
    return Path(out) / A.MODELS / f"{layout_slug(layout)}-{arm.name}-seed-{seed}"


# --------------------------------------------------------------------------------------------- the units


def _train_unit(cfg_json: str, layout: str, arm_json: str, seed: int, run_dir: str) -> list[dict]:
    """Train one model (in a worker process or inline); resumes a run a kill left behind."""
    from taskvec.scratch.train import checkpoints, train, training_curve

    cfg = ComparisonConfig.model_validate_json(cfg_json)
    arm = Arm.model_validate_json(arm_json)
    tcfg = cfg.train_config(layout, arm, seed)
    run = Path(run_dir)
    resume = run.exists() and bool(checkpoints(run))
    if run.exists() and not resume:  # killed before its first checkpoint: nothing to keep
        shutil.rmtree(run)
    train(tcfg, run, resume=resume, progress=False, tensorboard=False)
    curve = training_curve(run)
    tail = curve[curve["step"] > 0.9 * tcfg.steps]  # the last tenth of training
    row = {"layout": layout, "arm": arm.name, "seed": seed, "steps": tcfg.steps,
           "train_icl_err": float(tail["icl_err"].mean())}
    if tcfg.uses_tvp:
        row["train_tvp_loss"] = float(tail["tvp_loss"].mean())
    return [row]


def _eval_unit(cfg_json: str, layout: str, arm_json: str, seed: int, run_dir: str) -> list[dict]:
    """Evaluate one trained model on the selection set (layer sweep) and on the evaluation set (everything)."""
    from taskvec.scratch.evaluate import evaluate_model
    from taskvec.scratch.model import ScratchModel

    cfg = ComparisonConfig.model_validate_json(cfg_json)
    arm = Arm.model_validate_json(arm_json)
    model = ScratchModel.from_pretrained(Path(run_dir) / "model")
    layer = arm.tvp_layer if not arm.vanilla else None
    select = evaluate_model(model, cfg.eval_config(layer, cfg.select_seed, ["layers"]), progress=False)
    selected = int(np.nanargmin(select["layers"]["tvp"]))  # chosen on the selection set only
    full = evaluate_model(model, cfg.eval_config(layer), progress=False)
    return [{"layout": layout, "arm": arm.name, "seed": seed, "selected_layer": selected,
             "select_tvp": select["layers"]["tvp"], "result": full}]


def _in_worker(fn, threads: int, *args) -> tuple[list[dict], float]:
    """A unit in a worker process, with ``threads`` torch threads: its rows and the seconds it took."""
    import time

    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    rows = fn(*args)
    return rows, round(time.perf_counter() - start, 3)


def _units(cfg: ComparisonConfig, out: Path) -> list[tuple[str, str, tuple]]:
    """``(stage, unit name, args)`` of every unit, training first."""
    units = []
    for stage in ("train", "eval"):
        for layout, arm, seed in cfg.runs():
            name = f"{stage}/{layout_slug(layout)}/{arm.name}/seed-{seed}"
            units.append((stage, name, (layout, arm.model_dump_json(), seed, str(model_dir(out, layout, arm, seed)))))
    return units


def check_workers(workers: int, threads: int) -> None:
    """Refuse (one line) fewer than one worker or thread, or more workers than CPU cores (``os.cpu_count()``)."""
    for flag, value in (("--workers", workers), ("--threads", threads)):
        if value < 1:
            raise RangeError(f"{flag} must be >= 1, got {value}")
    cores = os.cpu_count() or 1
    if workers > cores:
        raise RangeError(f"--workers {workers} is more than the {cores} CPU cores here: give at most {cores}")


def run_comparison(cfg: ComparisonConfig, out: str | Path, resume: bool = False, workers: int = 1,
                   threads: int = 1, progress: bool = True) -> Path:
    """Train and evaluate every (layout, arm, seed) of ``cfg`` into the run directory ``out``; returns it.

    Args:
        resume: continue a killed comparison: finished units are read back; an unfinished training resumes from
            its last checkpoint (same data stream). The config must be the same, else a one-line
            :class:`ConfigError`. Without it, an ``out`` that holds a run is refused.
        workers: processes that run units side by side (each with ``threads`` torch threads): on a 2-core CPU,
            ``workers=2, threads=1`` keeps both cores busy without OpenMP threads fighting over them.

    Writes ``config.json``, ``results.jsonl`` (one record per unit, fsynced), ``models/`` (one training run
    directory per model), ``summary.csv`` (:func:`aggregate`) and ``verdicts.csv`` (:func:`verdicts`);
    :func:`taskvec.run` (:mod:`taskvec.kinds`) adds ``report.html``.
    """
    from taskvec.runs import RunStore

    check_workers(workers, threads)
    out = Path(out)
    store = RunStore(out, cfg.saved(), resume=resume, extra={"kind": cfg.kind}, writer=True)
    cfg_json = cfg.model_dump_json()
    todo = [u for u in _units(cfg, out) if not store.done(u[1])]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(_units(cfg, out)), initial=len(_units(cfg, out)) - len(todo), desc="comparison")
    fns = {"train": _train_unit, "eval": _eval_unit}
    import torch

    for stage in ("train", "eval"):  # every model is trained before any is evaluated
        batch = [u for u in todo if u[0] == stage]
        if workers == 1 or len(batch) <= 1:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for _, name, args in batch:
                    if bar is not None:
                        bar.set_postfix_str(name)
                    store.run_unit(name, lambda args=args, f=fns[stage]: f(cfg_json, *args))
                    if bar is not None:
                        bar.update(1)
            finally:
                torch.set_num_threads(before)
            continue
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before the workers start: no spinning on 2 cores
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            started = {pool.submit(_in_worker, fns[stage], threads, cfg_json, *args): name for _, name, args in batch}
            failed: BaseException | None = None
            for fut in as_completed(started):
                name = started[fut]
                try:
                    rows, seconds = fut.result()
                except BaseException as err:  # keep what the other workers finish; raise the first failure after
                    failed = failed or err
                    continue
                store.append(name, rows, seconds=seconds)
                if bar is not None:
                    bar.set_postfix_str(name)
                    bar.update(1)
            if failed is not None:
                raise failed
    if bar is not None:
        bar.close()
    tables = comparison_tables(out)  # the exports, for other tools: the report reads the tables, not these
    save_table(tables["summary"], out / A.SUMMARY)
    save_table(tables["verdicts"], out / A.VERDICTS)
    return out


# --------------------------------------------------------------------------------- tables and verdicts


def _records(store_or_dir) -> list[dict]:
    from taskvec.runs import RunStore

    if isinstance(store_or_dir, RunStore):
        return store_or_dir._records()
    return RunStore._read(Path(store_or_dir) / A.RESULTS)


def seed_table(store_or_dir) -> pd.DataFrame:
    """One row per (layout, arm, seed, metric, layer): every number the comparison measured, long format.

    Metrics: ``icl`` and ``zero_shot`` (layer -1), per layer ``tvp``, ``random``, ``mean``, ``wrong`` and
    ``strength`` (S(l)); ``tvp_selected`` / ``strength_selected`` / ``random_strength_selected`` at the layer the
    selection set chose; ``tvp_lstar`` / ``strength_lstar`` / ``random_strength_lstar`` / ``wrong_strength_lstar`` (S of
    another task's vector: B2's task-specificity control) at the trained l* (L/2 for vanilla) — these have ``layer`` -1 (one row per seed) and the layer in ``at_layer``; ``noisy_icl`` /
    ``noisy_tvp`` (layer = -1, ``p`` set); ``ood_icl`` / ``ood_tvp`` (``shift`` set);
    ``noisy_degradation`` / ``ood_degradation``: the ICL error there − the model's own clean ICL error on the same
    prompts (``clean_icl`` of the row; absent for evaluations that predate it);
    ``pca_probe`` / ``pca_between_within`` per layer; ``train_icl_err`` / ``train_tvp_loss`` (the last tenth of
    training).
    """
    from taskvec.scratch.evaluate import strengths

    rows: list[dict] = []
    for rec in _records(store_or_dir):
        for r in rec["rows"]:
            key = {"layout": r["layout"], "arm": r["arm"], "seed": r["seed"]}

            def add(metric, value, layer=-1, **extra):
                rows.append({**key, "metric": metric, "layer": layer, "value": _num(value), "at_layer": layer,
                             **extra})

            if rec["unit"].startswith("train/"):
                for m in ("train_icl_err", "train_tvp_loss"):
                    if m in r:
                        add(m, r[m])
                continue
            res = r["result"]
            lay = res.get("layers")
            if lay:
                add("icl", lay["icl"])
                add("zero_shot", lay["zero_shot"])
                # S from the errors with today's rule (runs evaluated under an older one read the same)
                strength = strengths(lay["zero_shot"], lay["icl"], lay["tvp"])
                s_random = strengths(lay["zero_shot"], lay["icl"], lay["random"])
                s_wrong = strengths(lay["zero_shot"], lay["icl"], lay["wrong"]) if lay.get("wrong") else None
                for m in ("tvp", "random", "mean", "wrong"):
                    for layer, v in enumerate(lay.get(m, [])):
                        add(m, v, layer)
                for layer, v in enumerate(strength):
                    add("strength", v, layer)
                for where, layer in (("selected", r["selected_layer"]), ("lstar", res["layer"])):
                    # one row per seed whatever layer it is at (seeds may select different layers): layer -1
                    at = {"at_layer": layer}
                    add(f"tvp_{where}", lay["tvp"][layer], **at)
                    add(f"strength_{where}", strength[layer], **at)
                    add(f"random_strength_{where}", s_random[layer], **at)
                    if s_wrong is not None:
                        add(f"wrong_strength_{where}", s_wrong[layer], **at)
            for analysis, by in (("noisy", "p"), ("ood", "shift")):
                for row in res.get(analysis, []):
                    add(f"{analysis}_icl", row["icl"], **{by: row[by]})
                    add(f"{analysis}_tvp", row["tvp_layer"], at_layer=res["layer"], **{by: row[by]})
                    if "clean_icl" in row:  # evaluations before the degradation rule did not record it
                        add(f"{analysis}_degradation", _num(row["icl"]) - _num(row["clean_icl"]), **{by: row[by]})
            pca = res.get("pca")
            if isinstance(pca, dict):
                for layer, sep in enumerate(pca.get("layers", [])):
                    add("pca_probe", sep.get("probe_acc"), layer)
                    add("pca_between_within", sep.get("between_within"), layer)
    cols = ["layout", "arm", "seed", "metric", "layer", "value", "at_layer", "p", "shift"]
    return pd.DataFrame(rows, columns=cols)


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def aggregate(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95% Student-t interval and number of seeds per (layout, arm, metric, layer, p, shift)."""
    if table.empty:
        return pd.DataFrame(columns=["layout", "arm", "metric", "layer", "p", "shift", "mean", "low", "high", "n"])
    keys = ["layout", "arm", "metric", "layer", "p", "shift"]
    t = table.fillna({"p": -1.0, "shift": ""})
    rows = []
    for key, g in t.groupby(keys, sort=False):
        m, lo, hi = seed_ci(g["value"])
        rows.append({**dict(zip(keys, key)), "mean": m, "low": lo, "high": hi,
                     "n": int(np.isfinite(g["value"]).sum())})
    out = pd.DataFrame(rows)
    out["p"] = out["p"].where(out["p"] >= 0)
    return out




















def below_paper_scale(cfg: ComparisonConfig) -> str:
    """Why ``cfg``'s models are far below the paper's scale (fewer than :data:`PAPER_SCALE` layers or steps), or
    ``""`` when they are not."""
    from taskvec.scratch.model import PRESETS

    tcfg = cfg.train_config(cfg.layouts[0], next(a for a in cfg.arms if a.vanilla), cfg.seeds[0])
    n_layer = tcfg.n_layer or PRESETS[tcfg.preset]["n_layer"]
    if n_layer >= PAPER_SCALE[0] and tcfg.steps >= PAPER_SCALE[1]:
        return ""
    return (f"{n_layer} layers, {tcfg.steps:,} steps: far below the paper's scale (≥ {PAPER_SCALE[0]} layers, "
            f"≥ {PAPER_SCALE[1]:,} steps)")












def verdicts(table: pd.DataFrame, cfg: ComparisonConfig) -> pd.DataFrame:
    """The from-scratch claims as verdicts for the seed ``table`` of the comparison ``cfg``:
    :func:`taskvec.claims.from_scratch.verdicts` with ``cfg``'s layouts, arms, rules and scale."""
    return rules_b.verdicts(table, layouts=list(cfg.layouts), vanilla=next(a for a in cfg.arms if a.vanilla).name,
                            tvp_arms=[a.name for a in cfg.arms if not a.vanilla], rules=cfg.rules,
                            scale=below_paper_scale(cfg))


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)




def statistic_shown(r) -> str:
    """A verdict row's statistic as the Markdown summary shows it: B1 with both layouts' S beside the difference
    (its verdict rests on both), an S-based claim with how many seeds have S when some do not."""
    if r.claim == "B1":
        return f"{r.statistic} ({r.detail})"
    if pd.notna(r.seeds_with_s) and r.seeds_with_s < r.seeds:
        return f"{r.statistic} ({s_defined_for(r.seeds_with_s, r.seeds)})"
    return r.statistic


def verdict_shown(r, scale: str) -> str:
    """A verdict row's verdict as the summaries show it: B1 not supported by models far below the paper's scale
    (``scale``: :func:`below_paper_scale`) is :data:`NOT_REPRODUCED` — small models at a few thousand steps that
    grow no vector say nothing against the paper's 12-layer, 300k-step ones."""
    return NOT_REPRODUCED if r.claim == "B1" and r.verdict == NOT_SUPPORTED and scale else r.verdict


def task_label(cfg: ComparisonConfig) -> str:
    """The run's task as the summaries name it: linear regression always with its dimension ("linear regression
    (d = 1)": not the paper's d = 20)."""
    task = cfg.train_config(cfg.layouts[0], next(a for a in cfg.arms if a.vanilla), cfg.seeds[0]).task
    return f"linear regression (d = {task.d})" if task.name == "linear_regression" else task.name


def _run_label(name: str, cfg: ComparisonConfig) -> str:
    """A run's column in :func:`verdict_overview`: its name, with the task's dimension for linear regression."""
    label = task_label(cfg)
    if not label.startswith("linear regression") or "d =" in name:
        return name
    return label if name.replace("_", " ") == "linear regression" else f"{name} ({label})"




def _agg_cell(agg: pd.DataFrame, layout: str, arm: str, metric: str, **where) -> str:
    g = agg[(agg.layout == layout) & (agg.arm == arm) & (agg.metric == metric)]
    for k, val in where.items():
        g = g[np.isclose(g[k].astype(float), val)] if isinstance(val, float) else g[g[k] == val]
    if g.empty:
        return "–"
    r = g.iloc[0]
    return fmt_seeds(r["mean"], r["low"], r["high"])


def _probe(table: pd.DataFrame, layout: str, arm: Arm, sel: pd.DataFrame) -> str:
    """PCA analysis: held-out linear-probe accuracy of θ by task at l* (vanilla: each seed's selected layer)."""
    t = table[(table.layout == layout) & (table.arm == arm.name) & (table.metric == "pca_probe")]
    at = {s: arm.tvp_layer for s in t.seed.unique()} if arm.tvp_layer is not None else dict(zip(sel.seed, sel.layer))
    vals = np.array([r.value for r in t.itertuples() if at.get(r.seed) == r.layer], dtype=float)
    return fmt_seeds(*seed_ci(vals)) if len(vals) and np.isfinite(vals).all() else "–"


def markdown_summary(run_dir: str | Path) -> str:
    """The verdicts and the headline numbers of a comparison run as Markdown tables (what docs/findings.md
    quotes), computed from the run directory alone. Each cell is ``mean [95% interval over seeds]``."""
    cfg, table = load(run_dir)
    agg = aggregate(table)
    v = verdicts(table, cfg)
    scale = below_paper_scale(cfg)
    statistic = [statistic_shown(r) for r in v.itertuples()]
    v_rows = pd.DataFrame({"claim": v.claim, "layout": v.layout, "arm": v.arm, "statistic": statistic,
                           "estimate [95% CI]": [fmt_seeds(r.estimate, r.low, r.high) for r in v.itertuples()],
                           "verdict": ["**" + verdict_shown(r, scale) + "**" for r in v.itertuples()]})
    rows, p = [], cfg.rules.noisy_p
    for layout in cfg.layouts:
        for arm in cfg.arms:
            sel = table[(table.layout == layout) & (table.arm == arm.name) & (table.metric == "strength_selected")]
            sel = sel.rename(columns={"layer": "_", "at_layer": "layer"})
            cell = lambda metric, **where: _agg_cell(agg, layout, arm.name, metric, **where)  # noqa: E731
            rows.append({"layout": layout, "arm": arm.name, "ICL(k)": cell("icl"), "zero-shot": cell("zero_shot"),
                         "l*": arm.tvp_layer if arm.tvp_layer is not None else "–",
                         "TVP(l*)": cell("tvp_lstar"), "S(l*)": cell("strength_lstar"),
                         "selected layers": ",".join(str(int(x)) for x in sel.sort_values("seed").layer),
                         "S(selected)": cell("strength_selected"),
                         "random S": cell("random_strength_lstar" if arm.tvp_layer is not None
                                          else "random_strength_selected"),
                         f"ICL, {p:.0%} noisy": cell("noisy_icl", p=p),
                         f"{p:.0%} noisy − clean": cell("noisy_degradation", p=p),
                         "θ probe acc.": _probe(table, layout, arm, sel)})
    return (_md_table(v_rows) + "\n\n" + _md_table(pd.DataFrame(rows)) + "\n")


def verdict_overview(run_dirs: dict[str, str | Path]) -> str:
    """Every claim's verdict across several comparison runs as Markdown: a table with a row per (claim, layout, arm,
    condition) and a column per run (``{"token_offset": "runs/compare_token_offset", ...}``; linear regression's
    column names its d, :func:`task_label`), each cell ``verdict (estimate)`` (:func:`verdict_shown`); then one row
    per claim with its cells counted and its overall verdict (:func:`claim_overall`). Computed from the run
    directories alone, like :func:`markdown_summary`."""
    cells: dict[tuple[str, str, str, str], dict[str, str]] = {}
    raw: dict[str, list[str]] = {}
    labels, scales = {}, []
    for name, run_dir in run_dirs.items():
        cfg, table = load(run_dir)
        labels[name], scale = _run_label(name, cfg), below_paper_scale(cfg)
        scales.append(scale)
        for r in verdicts(table, cfg).itertuples():
            est = f"{r.estimate:.2f}" if math.isfinite(r.estimate) else "–"
            cond = r.condition if isinstance(r.condition, str) else ""
            cells.setdefault((r.claim, r.layout, r.arm, cond), {})[name] = f"{verdict_shown(r, scale)} ({est})"
            raw.setdefault(r.claim, []).append(r.verdict)
    rows = [{"claim": c, "layout": layout, "arm": arm, "condition": cond or "–",
             **{labels[n]: got.get(n, "–") for n in run_dirs}}
            for (c, layout, arm, cond), got in sorted(cells.items(), key=lambda kv: kv[0][0])]
    overall = []
    for claim, got in sorted(raw.items()):
        verdict, why = claim_overall(got)
        if claim == "B1" and verdict == NOT_SUPPORTED and all(scales):
            verdict = NOT_REPRODUCED
        overall.append({"claim": claim, "text": CLAIMS[claim], **{x: got.count(x) for x in
                        (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)}, "overall": f"{verdict} ({why})" if why else verdict})
    return _md_table(pd.DataFrame(rows)) + "\n\n" + _md_table(pd.DataFrame(overall)) + "\n"


def load(run_dir: str | Path) -> tuple[ComparisonConfig, pd.DataFrame]:
    """The config and :func:`seed_table` of a comparison run directory."""
    return config_of(run_dir), seed_table(run_dir)


def config_of(run_dir: str | Path) -> ComparisonConfig:
    """The :class:`ComparisonConfig` saved in a comparison run directory's ``config.json``."""
    saved = json.loads((Path(run_dir) / A.CONFIG).read_text())
    return ComparisonConfig.model_validate(saved["config"])


def comparison_tables(run_dir: str | Path) -> A.Tables:
    """The tables of a comparison run directory, from its run store (lazy, :class:`~taskvec.artifacts.Tables`):
    ``seeds`` (:func:`seed_table`: one row per layout, arm, seed, metric, layer), ``summary`` (:func:`aggregate`:
    ``summary.csv``) and ``verdicts`` (:func:`verdicts`: ``verdicts.csv``)."""
    run_dir = Path(run_dir)
    t = A.Tables({"seeds": lambda: seed_table(run_dir), "summary": lambda: aggregate(t["seeds"]),
                  "verdicts": lambda: verdicts(t["seeds"], config_of(run_dir))})
    return t


__all__ = ["Arm", "ComparisonConfig", "run_comparison", "seed_table", "aggregate", "verdicts", "comparison_tables",
           "config_of", "below_paper_scale", "task_label", "load", "markdown_summary", "verdict_overview"]
