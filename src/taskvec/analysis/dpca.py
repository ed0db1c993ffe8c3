"""Demixed PCA of answer-position states by string length and class (docs/spec.md A.6, claim C8; Kobak et al. 2016).

The experiment (:func:`dpca_analysis`, :class:`DPCAResult`); its pieces live by idea in
:mod:`~taskvec.analysis.demix` (dPCA numerics), :mod:`~taskvec.analysis.geometry` (Mahalanobis, crossnobis),
:mod:`~taskvec.analysis.subspaces` (ablation subspaces), :mod:`~taskvec.analysis.probes` (probes, one layer's
analysis) and :mod:`~taskvec.analysis.dpca_c8` (the numbers C8 reads); figures in :mod:`taskvec.report.dpca_figures`.

For categorization prompts (``simple_string``) the local vector of demonstration ``i`` at layer ``l`` is ``h_l`` at
its answer position. Each such state is one *sample* with three factors: the **length** of the demonstration's
string (``trial.meta["length"][i]``), its **class** (``trial.meta["class"][i]``: short / long for
``simple_string``) and its label **word** (``demo.output``). The class -> word mapping is random per trial, so the
word is a token identity crossed with the class across trials; it is *not* demixed, only its separability is
reported (``maha_word*``, C8's ``word_ratio``). In code, tables and ablation names the class factor keeps the name
``label`` (``var_label``, ``maha_label``, ablation ``label``): it always means the **class**.

Design. When every length has one class (``simple_string``: class = short / long is a function of the length),
length is **nested** in class (:func:`is_nested`): the cell means (one cell per length, weighted equally) are split
into ``label`` = the class means and ``length`` = the deviations of each length from its class mean (length
*within* class); there is no interaction. Otherwise (length crossed with class) the cells are length x class and
the split is the usual ``length``, ``label``, ``interaction``. Per layer we report:

* **marginal variance**: the variance of the cell means split into the ``length``, ``label`` (class) and
  ``interaction`` marginalizations (fractions summing to 1), and ``between_fraction`` = variance of the cell means
  / total sample variance;
* **dPCA explained variance** of the ablation subspace of each marginalization (reference implementation, PyPI
  ``dPCA`` 1.0.5, fixed ridge ``regularizer`` = lambda, applied by dPCA as ``lambda * ||X||^2``; crossed design:
  ``labels="sd"``; nested design: the same closed-form solver given the nested marginalizations). Each
  marginalization is fitted with as many components as it has dimensions (:func:`marginal_ranks`);
* **Mahalanobis distances** between group means (plug-in, ``maha_*``): for lengths (mean over pairs of lengths of
  the same class when nested, all pairs when crossed), for classes and for words, using the pooled within-group
  covariance regularized by shrinkage towards ``trace/d * I`` (Ledoit-Wolf weight by default) plus a tiny ridge
  ``1e-6 * trace/d`` so that a singular covariance (e.g. layer 0, where every answer state of one word is the same
  embedding) stays invertible. They are computed exactly in the span of the centred samples (at most ``n``
  dimensions instead of ``d``; see :func:`span_coordinates`). ``maha_*_cv``: the cross-validated distance of
  :func:`crossnobis` (2 folds of trials, one noise covariance for all factors);
* **subspace ablation** (:data:`ABLATIONS`): a subspace is projected out of every local vector of one layer around
  the layer's grand mean, ``v' = v - Q Q^T (v - mean)`` (``Q`` orthonormal), and local patching (ICL local vectors
  into dummy prompts with random answers, at the answer positions, one layer at a time) is re-measured, with 95%
  Wilson intervals. By default the **whole** marginal subspace is removed: ``length`` = all length axes,
  ``label`` = all class axes; ``length_1`` = the top length axis only; ``random_length`` / ``random_label`` =
  seeded random subspaces of the same dimension. ``k`` (a sweep) takes the top ``min(k, rank)`` axes of both;
* **linear probes** (:func:`probe_accuracy`): cross-validated (stratified, grouped by trial, seeded) logistic
  regression accuracy of length and of class from the (ablated) answer-position states at each ablated layer;
* **C8** (:func:`c8_statistics`): with the early window fixed by depth before the data (layers ``[1, ceil(L/3))``)
  and the late window the last third, late/early separability ratios of length, class and word, where the length
  separability peaks (with a bootstrap region), and the late-vs-early length-ablation cost.

Example::

    task = get_task("simple_string")
    trials = task.sample_trials(40, 16, seed=0)
    result = dpca_analysis(lm, trials, task=task, ablate_layers=[3, 9, 15])
    result.per_layer            # layer, var_length, var_label (class), ..., maha_length, maha_label, maha_word, ...
    result.ablation_summary()   # layer, ablate, dim, accuracy, low, high, cost, cost_low, cost_high
    result.probes               # layer, ablate, dim, factor (length | label = class), accuracy, chance, ...
    result.c8                   # length_ratio, class_ratio, word_ratio, length_peak, ablation_cost, ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from taskvec.analysis.demix import _single_thread, is_nested
from taskvec.analysis.dpca_c8 import ablation_summary, c8_statistics
from taskvec.analysis.probes import analyze_layer, probe_accuracy
from taskvec.analysis.subspaces import (ABLATIONS, _fold_fitter, ablation_dims, ablation_subspaces, project_out,
                                        refit_ablation)
from taskvec.errors import ConfigError, EmptyInputError, TooFewTrialsError

# the experiment's public names, and the pieces it is made of (their homes: demix, geometry, subspaces, probes,
# dpca_c8; figures in taskvec.report.dpca_figures)
__all__ = ["DPCAResult", "answer_factors", "dpca_analysis", "ablation_summary", "c8_statistics", "analyze_layer",
           "probe_accuracy", "project_out", "ablation_dims", "ablation_subspaces", "refit_ablation", "is_nested",
           "TooFewTrialsError"]


@dataclass
class DPCAResult:
    """Results of :func:`dpca_analysis`.

    Attributes:
        per_layer: one row per layer: ``layer, var_length, var_label, var_interaction, between_fraction,
            dpca_length, dpca_label, dpca_interaction, dim_length, dim_label, maha_length, maha_label, maha_word,
            maha_length_cv, maha_label_cv, maha_word_cv`` (``label`` = the class; ``word`` = the label word).
        ablation: one row per (prompt, layer, ablate) with ``ablate`` in :data:`ABLATIONS`: ``dim, correct,
            label_correct, target_logprob`` (empty when no ablation was run).
        baselines: ``{"icl": acc, "dummy": acc, "chance": 1/n_labels}`` label-restricted accuracies.
        probes: one row per (ablated layer, ablate, factor), ``factor`` in ``length`` / ``label`` (the class):
            ``layer, ablate, dim, factor, accuracy, accuracy_sd,
            n_folds, n_samples, n_levels, chance, majority`` (:func:`probe_accuracy`).
        c8: :func:`c8_statistics` (empty when not computed).
        encoders: ``{layer: {marginalization: [d, k_m]}}`` dPCA axes.
        config: the parameters used.
    """

    per_layer: pd.DataFrame
    ablation: pd.DataFrame
    baselines: dict
    encoders: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    probes: pd.DataFrame = field(default_factory=pd.DataFrame)
    c8: dict = field(default_factory=dict)

    def ablation_per_layer(self) -> pd.DataFrame:
        """Mean label-restricted (and full-vocabulary) accuracy per (layer, ablate)."""
        if self.ablation.empty:
            return self.ablation
        cols = [c for c in ("label_correct", "correct") if c in self.ablation]
        return self.ablation.groupby(["layer", "ablate"])[cols].mean().reset_index()

    def ablation_summary(self, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
        """:func:`ablation_summary` of :attr:`ablation` (Wilson intervals, paired bootstrap costs)."""
        return ablation_summary(self.ablation, n_boot, seed)


def answer_factors(trials: Sequence, n_answers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (trial, demo) factors, flattened trial-major: ``length`` (``meta["length"]``), ``class``
    (``meta["class"]``, else the demo's ``label``: the class the trial's random class -> word mapping maps to a
    word) and ``word`` (the demo's output word). Each ``[n_trials * n_answers]``."""
    lengths, classes, words = [], [], []
    for t, trial in enumerate(trials):
        if "length" not in trial.meta:
            raise ConfigError(f"trial {t} has no meta['length']: dPCA needs a simple_string-style task")
        demos = trial.demos[:n_answers]
        cls = list(trial.meta["class"][:n_answers]) if "class" in trial.meta else [d.label for d in demos]
        if any(c is None for c in cls):
            raise ConfigError(f"trial {t} has no class per demonstration: dPCA needs a categorization task")
        lengths += list(trial.meta["length"][:n_answers])
        classes += cls
        words += [d.output for d in demos]
    return np.asarray(lengths), np.asarray(classes), np.asarray(words)


def dpca_analysis(
    lm,
    trials: Sequence,
    task=None,
    template=None,
    layers: Sequence[int] | None = None,
    k: int | None = None,
    n_components: int | None = None,
    regularizer: float = 1e-4,
    shrinkage: float | str = "auto",
    ablate_layers: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    probe_folds: int = 5,
    probe_C: float = 1.0,
    c8: bool = True,
    n_boot: int = 200,
    c8_options: dict | None = None,
) -> DPCAResult:
    """dPCA, Mahalanobis distances, subspace ablation with controls and probes, and the C8 statistics on the
    answer-position states of categorization prompts.

    Args:
        lm: the model.
        trials: categorization trials with ``meta["length"]`` (``simple_string``); at least as many trials as
            conditions (lengths when length is nested in class, as in ``simple_string``; length x class cells
            otherwise).
        task: the task (its ``answer_pool`` draws the dummy prompts' random answers; default: each trial's labels).
        template: a :class:`~taskvec.prompts.Template` (default ``"{x} is {y}"``).
        layers: layers to analyze (default all).
        k: axes per marginalization in the ablation subspaces; ``None`` (default) = the whole marginal subspace
            (:func:`marginal_ranks`); an int takes ``min(k, rank)`` for length and for class alike.
        n_components: cap on the dPCA components fitted per marginalization (default: their full dimension).
        regularizer: dPCA's ridge lambda (fixed; see module docstring).
        shrinkage: covariance shrinkage for Mahalanobis (``"auto"`` = Ledoit-Wolf, or a weight in [0, 1]).
        ablate_layers: layers at which to run the subspace ablation and the probes (default: ``layers``; ``[]``
            skips both).
        seed: seed of the dummy answers, the random control subspaces, the probe folds and the C8 split/bootstrap.
        batch_size: prompts per forward pass when reading states.
        probe_folds, probe_C: folds and inverse L2 strength of :func:`probe_accuracy`.
        c8: compute :func:`c8_statistics` (``n_boot`` resamples; ``c8_options`` are further keyword arguments,
            e.g. ``{"early_window": [1, 4]}``).

    Returns:
        a :class:`DPCAResult`.
    """
    from taskvec.intervene import read_states
    from taskvec.prompts import Template, build_prompts, check_aligned, dummy_trials
    if len(trials) == 0:
        raise EmptyInputError("no trials for dPCA")
    if k is not None and k < 1:
        raise ConfigError(f"k must be >= 1 (or None for the whole marginal subspace), got {k}")
    template = template or Template()
    layers = list(range(lm.n_layers)) if layers is None else [lm.profile.check_layer(int(l)) for l in layers]
    ablate_layers = layers if ablate_layers is None else [lm.profile.check_layer(int(l)) for l in ablate_layers]
    prompts = build_prompts(lm, trials, template)
    n_answers = {len(p.answer_positions) for p in prompts}
    if len(n_answers) != 1:
        raise ConfigError(f"all trials need the same number of demonstrations, got {sorted(n_answers)}")
    K = n_answers.pop()
    length, label, word = answer_factors(trials, K)  # label = the class of each demonstration
    trial_id = np.repeat(np.arange(len(trials)), K)
    nested = is_nested(length, label)
    n_len, n_lab = len(set(length.tolist())), len(set(label.tolist()))
    n_conditions = n_len if nested else n_len * n_lab
    if len(trials) < n_conditions:
        raise TooFewTrialsError(
            f"{len(trials)} trials for {n_conditions} ({'length' if nested else 'length x class'}) conditions: "
            "dPCA needs at least as many trials as conditions")
    dims = ablation_dims(n_len, n_lab, k, nested)
    positions = torch.tensor([p.answer_positions for p in prompts])
    states = read_states(lm, [p.ids for p in prompts], positions, batch_size=batch_size)  # [P, L, K, d]
    flat = lambda t, layer: t[:, layer].reshape(-1, lm.d_model)  # noqa: E731  [P * K, d], trial-major
    rows, encoders = [], {}
    from tqdm.auto import tqdm

    for layer in tqdm(layers, disable=not progress, desc="dpca", leave=False):
        row, enc = analyze_layer(flat(states, layer).numpy(), length, label, k, n_components, regularizer,
                                 shrinkage, None, seed, trial_id, word)
        rows.append({"layer": layer, **row})
        encoders[layer] = enc
    per_layer = pd.DataFrame(rows)

    ablation, probes = pd.DataFrame(), pd.DataFrame()
    baselines: dict = {"chance": 1.0 / max(1, len(prompts[0].label_ids or [0, 0]))}
    if ablate_layers:
        pools = [task.answer_pool(t) if task is not None else list(t.label_words or []) for t in trials]
        dummies = build_prompts(lm, dummy_trials(trials, pools, seed, lm.tokenizer), template)
        check_aligned(prompts, dummies)
        ablated: dict[str, dict[int, torch.Tensor]] = {name: {} for name in ABLATIONS if name in dims}
        dim_of, probe_rows = {}, []
        for layer in tqdm(ablate_layers, disable=not progress, desc="ablate/probe", leave=False):
            if layer not in encoders:
                encoders[layer] = analyze_layer(flat(states, layer).numpy(), length, label, k, n_components,
                                                regularizer, shrinkage, None, seed)[1]
            center = flat(states, layer).mean(0)
            with _single_thread():
                bases = ablation_subspaces(encoders[layer], dims, lm.d_model, seed=[seed, layer])
            X_layer = flat(states, layer).numpy().astype(np.float64)
            fold_fit = _fold_fitter(X_layer, length, label, regularizer, seed, encoders[layer])
            for name, basis in bases.items():
                ablated[name][layer] = project_out(states[:, layer], basis, center)  # [P, K, d], for patching
                dim_of[(layer, name)] = int(basis.shape[1])
                # probes: dPCA subspaces are re-fitted within each training fold (see probe_accuracy);
                # random subspaces do not depend on the data
                if name in ("length", "length_1", "label"):
                    m = "label" if name == "label" else "length"
                    X, abl = X_layer, refit_ablation(X_layer, length, label, m, int(basis.shape[1]), _fit=fold_fit)
                else:
                    X, abl = ablated[name][layer].reshape(-1, lm.d_model).numpy(), None
                for factor, y in (("length", length), ("label", label)):
                    probe_rows.append({"layer": layer, "ablate": name, "dim": int(basis.shape[1]), "factor": factor,
                                       **probe_accuracy(X, y, trial_id, probe_folds, seed, probe_C, abl)})
        probes = pd.DataFrame(probe_rows)
        ablation, baselines["dummy"] = _patch_ablated(lm, dummies, ablated, dim_of, progress)
        baselines.update(_baseline_accuracy(lm, prompts))
    c8_stats: dict = {}
    if c8:
        X_all = states[:, layers].permute(0, 2, 1, 3).reshape(len(prompts) * K, len(layers), lm.d_model).numpy()
        try:
            c8_stats = c8_statistics(X_all, length, label, trial_id, layers, lm.n_layers,
                                     ablation if not ablation.empty else None, shrinkage, word=word, n_boot=n_boot,
                                     seed=seed, task=getattr(task, "name", None), **(c8_options or {}))
        except TooFewTrialsError as err:
            c8_stats = {"task": getattr(task, "name", None), "reason": str(err), "length_ratio": None,
                        "class_ratio": None, "word_ratio": None, "length_peak": None, "ablation_cost": None}
    config = {"k": k, "ablation_dims": dims, "n_components": n_components, "regularizer": regularizer,
              "shrinkage": shrinkage, "layers": layers, "ablate_layers": list(ablate_layers), "seed": seed,
              "n_trials": len(trials), "n_demos": K, "n_conditions": n_conditions, "n_lengths": n_len,
              "n_labels": n_lab, "label_factor": "class", "design": "nested" if nested else "crossed", "probe_folds": probe_folds, "probe_C": probe_C, "n_boot": n_boot,
              "separator": template.separator}
    return DPCAResult(per_layer, ablation, baselines, encoders, config, probes, c8_stats)


def _patch_ablated(lm, dummies, ablated: dict, dim_of: dict, progress) -> tuple[pd.DataFrame, float]:
    """Local patching of every (ablation, layer, prompt) and the unpatched dummy prompts in one
    :func:`~taskvec.sweep.run_variants` call (each prompt's prefix and clean states are computed once for all).

    Returns:
        ``(rows, dummy_accuracy)``: rows ``prompt, layer, ablate, dim, correct, target_logprob[, label_correct]``
        (ablations in :data:`ABLATIONS` order, then prompt, then layer) and the unpatched dummy accuracy."""
    from taskvec.scoring import main_column
    from taskvec.sweep import Variant, score_variants

    variants, meta = [], []
    for name, per_layer in ablated.items():
        for layer, vecs in per_layer.items():
            for p, prompt in enumerate(dummies):
                pos = torch.tensor(prompt.answer_positions, dtype=torch.long)
                variants.append(Variant(p, torch.full((len(pos),), layer, dtype=torch.long), pos, vecs[p]))
                meta.append((p, layer, name, dim_of[(layer, name)]))
    variants += [Variant.clean(p, lm.d_model) for p in range(len(dummies))]
    df = score_variants(lm, dummies, variants, progress="ablation patching" if progress else False)
    clean = df.iloc[len(meta):]
    dummy_acc = float(clean[main_column(dummies[0].label_ids is not None)].mean())
    df = df.iloc[:len(meta)].reset_index(drop=True)
    head = pd.DataFrame(meta, columns=["prompt", "layer", "ablate", "dim"])
    df = pd.concat([head, df], axis=1)
    df["_order"] = df["ablate"].map({a: i for i, a in enumerate(ABLATIONS)})
    df = df.sort_values(["_order", "prompt", "layer"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return df, dummy_acc


def _baseline_accuracy(lm, prompts) -> dict:
    """Label-restricted accuracy of the (unpatched) ICL prompts."""
    from taskvec.scoring import main_column
    from taskvec.sweep import Variant, score_variants

    res = score_variants(lm, prompts, [Variant.clean(i, lm.d_model) for i in range(len(prompts))])
    return {"icl": float(res[main_column(prompts[0].label_ids is not None)].mean())}
