"""The heads that write and read the local vectors (docs/analyses.md#heads): which attention heads put task
information at the demonstrations' answer positions (writers) and which move it from there to the query (readers),
each by mean-ablating one head at a time and measuring what local patching loses; and how the top sets of writers,
readers and the function vector's heads overlap (:func:`head_overlap`). The query-position head effects are
:mod:`taskvec.analysis.heads`, whose head outputs and batched variants this module reuses.

Example::

    writers = writer_effects(lm, icl_prompts, dummy_prompts, local_layer=6, mean_from=source_prompts)
    readers = reader_effects(lm, icl_prompts, dummy_prompts, local_layer=6)
    head_overlap({"writers": local_summary(writers), "readers": local_summary(readers)}, n=10)
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch

from taskvec.analysis.heads import _run_head_variants, head_geometry, record_head_outputs
from taskvec.batching import left_pad
from taskvec.errors import AlignmentError, ConfigError, EmptyInputError, LayerError, RangeError
from taskvec.hooks import Hooks
from taskvec.intervene import hooked

Role = Literal["writers", "readers"]


def _head_edit_hooks(lm, rows: torch.Tensor, layers: torch.Tensor, cols: torch.Tensor, heads: torch.Tensor,
                     values: torch.Tensor) -> Hooks:
    """``heads.{l}`` functions that replace head ``heads[e]`` of layer ``layers[e]`` in batch row ``rows[e]`` at
    column ``cols[e]`` by ``values[e]`` (``[E, hd]``); out of place."""
    hooks = Hooks(lm)
    for layer in torch.unique(layers).tolist():
        sel = (layers == layer).nonzero().squeeze(-1)
        r, c, h, v = rows[sel], cols[sel], heads[sel], values[sel]

        def fn(z: torch.Tensor, r=r, c=c, h=h, v=v) -> torch.Tensor:  # [B, T, H, hd]
            return z.index_put((r.to(z.device), c.to(z.device), h.to(z.device)), v.to(device=z.device, dtype=z.dtype))
        hooks.add(f"heads.{layer}", fn)
    return hooks


@torch.no_grad()
def record_head_outputs_at(lm, prompts: Sequence, positions: Sequence[Sequence[int]] | None = None,
                           batch_size: int = 8) -> torch.Tensor:
    """Every head's output at given positions of each prompt (default: its demonstrations' answer positions).

    Returns:
        ``[n_prompts, K, n_layers, n_heads, head_dim]`` float tensor (K positions per prompt, the same K for all).
    """
    if len(prompts) == 0:
        raise EmptyInputError("no prompts to record head outputs from")
    positions = [list(p.answer_positions) for p in prompts] if positions is None else [list(x) for x in positions]
    if len({len(x) for x in positions}) != 1:
        raise AlignmentError("every prompt needs the same number of positions to record head outputs at")
    K = len(positions[0])
    projs, H, hd = head_geometry(lm)
    out = torch.empty(len(prompts), K, len(projs), H, hd)
    for start in range(0, len(prompts), batch_size):
        group = prompts[start:start + batch_size]
        batch = left_pad([p.ids for p in group], lm.tokenizer.pad_token_id).to(lm.device)
        cols = torch.tensor(positions[start:start + len(group)], device=lm.device) + batch.offsets[:, None]
        rows = torch.arange(len(group), device=lm.device)[:, None]
        hooks = Hooks(lm)
        for layer in range(len(projs)):
            hooks.add(f"heads.{layer}", lambda z, layer=layer: hooks.recorded.__setitem__(
                layer, z[rows, cols].detach().float().cpu()))
        with hooks:
            lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)
        out[start:start + len(group)] = torch.stack([hooks.recorded[l] for l in range(len(projs))], 2)
    return out


def _slot_means(recorded: torch.Tensor, n: int) -> torch.Tensor:
    """``[n, L, H, hd]``: per-slot means over prompts of ``recorded`` (``[P, K, L, H, hd]``); where ``K != n`` (the
    mean's prompts have another number of demonstrations) the mean over every slot, for each slot."""
    if recorded.shape[1] == n:
        return recorded.mean(0)
    return recorded.mean((0, 1))[None].expand(n, *recorded.shape[2:])


def _check_local(lm, prompts, dummies, local_layer: int, layers, heads, role: str):
    """Validated ``(local_layer, layers, skipped_layers, heads)`` of a writers/readers analysis (one-line errors)."""
    if role not in ("writers", "readers"):
        raise ConfigError(f"role must be 'writers' or 'readers', got {role!r}")
    if len(prompts) == 0:
        raise EmptyInputError("no prompts for the local-vector head analysis")
    if dummies is None or len(dummies) != len(prompts):
        raise AlignmentError("the local-vector head analysis needs dummy prompts aligned one to one with the ICL "
                             f"prompts (got {0 if dummies is None else len(dummies)} for {len(prompts)})")
    n = len(prompts[0].answer_positions)
    if n == 0:
        raise EmptyInputError("the prompts have no demonstrations (n_demos = 0): local vectors live at the "
                              "demonstrations' answer positions; give at least one demonstration")
    if any(len(p.answer_positions) != n for p in prompts):
        raise AlignmentError("every ICL prompt needs the same number of demonstrations (per-slot head means)")
    for i, (p, d) in enumerate(zip(prompts, dummies)):
        if len(d) != len(p) or list(d.answer_positions) != list(p.answer_positions) or d.target_id != p.target_id:
            raise AlignmentError(f"prompt {i}: the dummy prompt does not match the ICL prompt (same length, answer "
                                 "positions and target needed)")
    profile = lm.profile
    if isinstance(local_layer, bool) or not isinstance(local_layer, (int, np.integer)):
        raise LayerError(f"local_layer must be a layer index, got {local_layer!r}")
    local_layer = profile.check_layer(int(local_layer))
    if role == "writers" and local_layer == 0:
        raise LayerError("local layer 0: no head lies below it, so none can write the local vectors; give a "
                         "local layer >= 1")
    asked = list(range(lm.n_layers)) if layers is None else [profile.check_layer(int(l)) for l in layers]
    ok = (lambda l: l < local_layer) if role == "writers" else (lambda l: l >= local_layer)
    kept, skipped = [l for l in asked if ok(l)], [l for l in asked if not ok(l)]
    if not kept:
        where = f"below the local layer {local_layer}" if role == "writers" else f"at or above the local layer {local_layer}"
        raise LayerError(f"no layer {where} to test {role} in (asked: {asked[0]}..{asked[-1]}): {role} heads "
                         f"must lie {where}")
    _, H, _ = head_geometry(lm)
    heads = list(range(H)) if heads is None else [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < H]
    if bad:
        raise RangeError(f"head {bad[0]} is out of range: this model has heads 0..{H - 1} in each layer")
    if not heads:
        raise RangeError("no heads to test: give head indices, or none for all")
    return local_layer, kept, skipped, heads


@torch.no_grad()
def _ablated_local_states(lm, prompts, means: torch.Tensor, grid: list[tuple[int, int]], local_layer: int,
                          max_batch_tokens: int | None = None, skip_layers: bool = True) -> torch.Tensor:
    """``[P, G, n, d]``: ``h_{local_layer}`` at each ICL prompt's answer positions with head ``grid[g]`` (layer,
    head) replaced at every answer position by ``means[slot, layer, head]`` (``[n, L, H, hd]``).

    Rows (prompt, head) of prompts of one exact length share a batch (no padding, no mask); rows are sorted by
    the head's layer and a batch starts at its first row's layer from the clean states (layers below run as the
    identity, where :func:`~taskvec.intervene.layer_skipping_ok` verified that), and stops at the local layer."""
    from collections import defaultdict

    from taskvec.intervene import backbone, layer_skipping_ok, run_until_recorded, skipping
    from taskvec.models.devices import batch_token_budget

    P, G, n = len(prompts), len(grid), len(prompts[0].answer_positions)
    out = torch.empty(P, G, n, lm.d_model)
    stack, blocks = backbone(lm.model), lm.profile.layers
    budget = max_batch_tokens or batch_token_budget(lm)
    skip = skip_layers and any(l > 0 for l, _ in grid) and layer_skipping_ok(lm)
    by_length: dict[int, list[int]] = defaultdict(list)
    for p, prompt in enumerate(prompts):
        by_length[len(prompt)].append(p)
    order = sorted(range(G), key=lambda g: grid[g])
    for T, group in sorted(by_length.items()):
        ids = torch.tensor([prompts[p].ids for p in group], device=lm.device)
        answers = torch.tensor([prompts[p].answer_positions for p in group])
        rows = [(j, g) for g in order for j in range(len(group))]  # layer-major
        per = max(1, budget // T)
        batches = [rows[i:i + per] for i in range(0, len(rows), per)]
        starts = sorted({grid[b[0][1]][0] for b in batches} - {0}) if skip else []
        clean = {}
        if starts:
            with hooked(blocks, record={l: None for l in starts}, stop_after_record=True) as rec:
                run_until_recorded(stack, input_ids=ids, use_cache=False)
            clean = dict(rec)
        for chunk in batches:
            js = torch.tensor([j for j, _ in chunk])
            first = grid[chunk[0][1]][0] if skip else 0
            e_rows = torch.arange(len(chunk)).repeat_interleave(n)
            e_layers = torch.tensor([grid[g][0] for _, g in chunk]).repeat_interleave(n)
            e_heads = torch.tensor([grid[g][1] for _, g in chunk]).repeat_interleave(n)
            e_cols = answers[js].reshape(-1)
            slots = torch.arange(n).repeat(len(chunk))
            e_vals = means[slots, e_layers, e_heads]
            begin = (first, clean[first][js.to(lm.device)]) if first > 0 else None
            with _head_edit_hooks(lm, e_rows, e_layers, e_cols, e_heads, e_vals), \
                    hooked(blocks, record={local_layer: answers[js].to(lm.device)}, stop_after_record=True,
                           start=begin) as rec, skipping(blocks, first):
                run_until_recorded(stack, input_ids=ids[js.to(lm.device)], use_cache=False)
            got = rec[local_layer].float().cpu()
            for r, (j, g) in enumerate(chunk):
                out[group[j], g] = got[r]
    return out


def _effects(scores: pd.DataFrame, base: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """Per row: baseline columns and ``effect = baseline - ablated`` (target log-prob) and ``acc_effect`` (the
    main accuracy: label-restricted where the prompts have labels)."""
    acc = "label_correct" if "label_correct" in scores else "correct"
    out = pd.DataFrame(index=scores.index)
    for col in [c for c in ("target_logprob", "correct", "label_correct") if c in scores]:
        out[f"{prefix}baseline_{col.replace('target_', '')}"] = base[col].to_numpy()
    out[f"{prefix}effect"] = base["target_logprob"].to_numpy() - scores["target_logprob"].to_numpy()
    out[f"{prefix}acc_effect"] = base[acc].to_numpy() - scores[acc].to_numpy()
    return out


def writer_effects(
    lm,
    prompts: Sequence,
    dummies: Sequence,
    local_layer: int,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    mean_from: Sequence | None = None,
    max_batch_tokens: int | None = None,
    skip_layers: bool = True,
) -> pd.DataFrame:
    """Heads that **write** the local vectors (paper A's open question 3; docs/spec.md A.9).

    For each head ``(l, h)`` with ``l < local_layer`` and each ICL prompt: mean-ablate the head at all of the
    demonstrations' answer positions (its output there replaced, slot by slot, by its mean over the ``mean_from``
    prompts at that slot; default the ICL prompts themselves), read the local vectors ``h_{local_layer}`` at the
    answer positions that the ablated prompt produces, and patch them into the dummy prompt (same inputs, random
    answers) at the answer positions, as the study's local patching does. Scored at the query:

    ``effect = lp(dummy + clean local vectors) - lp(dummy + local vectors formed under the ablation)`` (target
    log-probability; ``acc_effect`` the same in accuracy, label-restricted for categorization): positive when the
    head helps write the local vectors. Heads at layers ``>= local_layer`` cannot change ``h_{local_layer}``: they
    are left out (listed in ``table.attrs["skipped_layers"]``).

    **Null control** (``mean_from`` = another task's ICL prompts, built with the same template and number of
    demonstrations): the head's output is replaced by its mean over another task's prompts at the same slot. The
    substitute is a real output of the same head at the same kind of position, so every layer above sees input in
    the model's distribution (a random head-swap would feed head h's block of the output projection another
    head's output, off distribution; zeros or noise too). Own-task mean-ablation removes only what varies from
    prompt to prompt (the answer's identity, the pairing); the other task's mean also removes what the task's
    prompts share. A head whose effect is the same under both carries nothing task-specific; a head whose
    own-task effect is 0 but whose other-task effect is large carries task-level content.

    Args:
        lm: the model.
        prompts: ICL prompts (all with the same number of demonstrations).
        dummies: dummy prompts aligned with ``prompts`` (same length, answer positions and target).
        local_layer: the layer whose local vectors are formed and patched (``>= 1``).
        layers: layers whose heads to test (default all below ``local_layer``; others are left out).
        heads: head indices to test in each layer (default all).
        mean_from: prompts the head means come from (default ``prompts``).
        max_batch_tokens: rows x tokens per forward (default :func:`~taskvec.models.devices.batch_token_budget`).
        skip_layers: start each batch at its first ablated layer (where verified); ``False`` runs every layer.

    Returns:
        one row per (prompt, layer, head): ``prompt, layer, head, role, correct, target_logprob[, label_correct],
        baseline_logprob, baseline_correct[, baseline_label_correct], effect, acc_effect``; ``attrs["baseline"]``
        (records, one per prompt: ``pd.DataFrame(table.attrs["baseline"])``): the dummy patched with the clean
        local vectors (``local_*``, the positive control) and unpatched (``dummy_*``); ``attrs["local_layer"]``.
    """
    from taskvec.intervene import read_states
    from taskvec.sweep import Variant, score_variants

    local_layer, layers, skipped, heads = _check_local(lm, prompts, dummies, local_layer, layers, heads, "writers")
    n = len(prompts[0].answer_positions)
    means = _slot_means(record_head_outputs_at(lm, list(mean_from) if mean_from is not None else prompts), n)
    grid = [(l, h) for l in layers for h in heads]
    answers = torch.tensor([p.answer_positions for p in prompts])
    clean = read_states(lm, [p.ids for p in prompts], answers, [local_layer])[:, 0]  # [P, n, d]
    ablated = _ablated_local_states(lm, prompts, means, grid, local_layer, max_batch_tokens, skip_layers)
    at = torch.full((n,), local_layer, dtype=torch.long)
    variants, meta = [], []
    for p in range(len(prompts)):
        variants += [Variant(p, at, answers[p], clean[p]), Variant.clean(p, lm.d_model)]
        meta += [(p, -1, -1), (p, -2, -2)]
        for g, (l, h) in enumerate(grid):
            variants.append(Variant(p, at, answers[p], ablated[p, g]))
            meta.append((p, l, h))
    scores = score_variants(lm, dummies, variants, max_batch_tokens=max_batch_tokens)
    scores.insert(0, "head", [m[2] for m in meta])
    scores.insert(0, "layer", [m[1] for m in meta])
    scores.insert(0, "prompt", [m[0] for m in meta])
    return _finish(scores, "writers", local_layer, skipped)


def _finish(scores: pd.DataFrame, role: str, local_layer: int, skipped: list[int],
            unpatched: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of heads with their effects against each prompt's clean row (``layer == -1``); ``layer == -2``: the
    unpatched dummy (the positive control's floor)."""
    clean = scores[scores.layer == -1].set_index("prompt")
    dummy = scores[scores.layer == -2].set_index("prompt")
    heads = scores[scores.layer >= 0].reset_index(drop=True)
    base = clean.loc[heads.prompt].reset_index(drop=True)
    table = pd.concat([heads, _effects(heads, base)], axis=1)
    if unpatched is not None:
        u = unpatched[unpatched.layer >= 0].set_index(["prompt", "layer", "head"])
        u_clean = unpatched[unpatched.layer == -1].set_index("prompt")
        u = u.loc[list(zip(table.prompt, table.layer, table["head"]))].reset_index(drop=True)
        ub = u_clean.loc[table.prompt].reset_index(drop=True)
        extra = _effects(u, ub, prefix="unpatched_")
        table = pd.concat([table, extra[["unpatched_effect", "unpatched_acc_effect"]]], axis=1)
    table.insert(3, "role", role)
    cols = [c for c in ("correct", "target_logprob", "label_correct") if c in clean]
    baseline = pd.concat([clean[cols].add_prefix("local_"), dummy[cols].add_prefix("dummy_")], axis=1)
    # plain records, not a DataFrame: pandas compares attrs when frames are concatenated
    table.attrs.update(baseline=baseline.reset_index().to_dict("records"), local_layer=local_layer,
                       skipped_layers=skipped)
    return table


def reader_effects(
    lm,
    prompts: Sequence,
    dummies: Sequence,
    local_layer: int,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    mean_from: Sequence | None = None,
    max_rows: int = 256,
    unpatched: bool = True,
) -> pd.DataFrame:
    """Heads that **read** the local vectors into the query (paper A's open question 3; docs/spec.md A.9).

    In the dummy prompt patched with the ICL prompt's clean local vectors at ``local_layer`` (the study's local
    patching), mean-ablate head ``(l, h)`` at the query position only (its output replaced by its mean query
    output over the ``mean_from`` prompts, default the ICL prompts) and score at the query:

    ``effect = lp(patched dummy) - lp(patched dummy, head ablated)``: positive when the head moves the local
    vectors' information to the query. Heads at layers ``>= local_layer`` are tested (``h_l`` is the *input* of
    layer ``l``, so the heads of the local layer itself already attend to the patched states); heads below it
    are left out (``table.attrs["skipped_layers"]``). The query is the last token, so every prompt's patched prefix
    is run once and its KV cache serves one single-token row per head (as :func:`head_effects` does).

    With ``unpatched=True`` the same ablation is also run in the unpatched dummy (``unpatched_effect``,
    ``unpatched_acc_effect``): a head that matters at the query whatever the answers carry shows it there too;
    ``effect - unpatched_effect`` is what the head does with the patched information. The null control
    (``mean_from`` another task's ICL prompts) is as in :func:`writer_effects`.

    Returns:
        one row per (prompt, layer, head), columns as :func:`writer_effects` (plus the ``unpatched_*`` ones).
    """
    from taskvec.intervene import read_states

    local_layer, layers, skipped, heads = _check_local(lm, prompts, dummies, local_layer, layers, heads, "readers")
    mean = record_head_outputs(lm, list(mean_from) if mean_from is not None else prompts).mean(0)  # [L, H, hd]
    values = mean[None].expand(len(prompts), *mean.shape)
    answers = torch.tensor([p.answer_positions for p in prompts])
    clean = read_states(lm, [p.ids for p in prompts], answers, [local_layer])[:, 0]  # [P, n, d]
    patched = _run_head_variants(lm, list(dummies), values, layers, max_rows, heads, prefix=(local_layer, clean))
    plain = _run_head_variants(lm, list(dummies), values, layers if unpatched else [], max_rows, heads)
    floor = plain[plain.layer == -1].assign(layer=-2, head=-2)
    scores = pd.concat([patched, floor], ignore_index=True)
    return _finish(scores, "readers", local_layer, skipped, plain if unpatched else None)


def local_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (``role``[, ``mean_from``], layer, head): mean effects over prompts with 95% Student-t intervals
    (:func:`taskvec.stats.t_ci`; NaN with one prompt): ``effect, effect_low, effect_high, acc_effect,
    acc_effect_low, acc_effect_high, n_prompts`` and, for readers, ``unpatched_effect`` and ``transfer_effect``
    (``effect - unpatched_effect``, paired per prompt) with their intervals."""
    from taskvec.stats import or_nan, t_ci

    keys = [k for k in ("role", "mean_from", "layer", "head") if k in table]
    rows = []
    for key, g in table.groupby(keys, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        values = {"effect": g.effect, "acc_effect": g.acc_effect}
        if "unpatched_effect" in g and g.unpatched_effect.notna().any():
            values["unpatched_effect"] = g.unpatched_effect
            values["transfer_effect"] = g.effect - g.unpatched_effect
        for name, v in values.items():
            m, lo, hi = or_nan(t_ci, v.to_numpy(dtype=float))
            row.update({name: m, f"{name}_low": lo, f"{name}_high": hi})
        row["n_prompts"] = int(g.prompt.nunique())
        rows.append(row)
    return pd.DataFrame(rows)


def head_overlap(named: dict[str, pd.DataFrame], n: int = 10, by: str = "effect") -> pd.DataFrame:
    """Overlap of the top-``n`` heads of each pair of rankings (e.g. writers, readers, query heads).

    Args:
        named: ``{name: frame}``, each with ``layer, head`` and the column ``by`` (largest first) over the heads
            it tested.
        n: heads per top set.

    Returns:
        one row per pair: ``a, b, n_top, shared, jaccard, tested_both`` (heads both rankings tested),
        ``expected_shared`` (the chance overlap of random top sets of the same sizes) and ``shared_heads``
        (``"layer.head"``). Writers (below the local layer) and readers (at or above it) test disjoint heads:
        their overlap is 0 by construction (``tested_both`` 0).
    """
    if n < 1:
        raise RangeError(f"n = {n}: give at least one head per top set")
    tops, tested = {}, {}
    for name, df in named.items():
        if by not in df:
            raise ConfigError(f"ranking {name!r} has no column {by!r}")
        df = df.dropna(subset=[by])
        tested[name] = set(zip(df.layer.astype(int), df["head"].astype(int)))
        top = df.sort_values(by, ascending=False).head(n)
        tops[name] = set(zip(top.layer.astype(int), top["head"].astype(int)))
    rows = []
    names = list(named)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = tops[a] & tops[b]
            union = tops[a] | tops[b]
            both = tested[a] & tested[b]
            expected = (len(both) * len(tops[a]) * len(tops[b]) / (len(tested[a]) * len(tested[b]))
                        if tested[a] and tested[b] else float("nan"))
            rows.append(dict(a=a, b=b, n_top=n, shared=len(shared), jaccard=len(shared) / len(union) if union else
                             float("nan"), tested_both=len(both), expected_shared=expected,
                             shared_heads=" ".join(f"{l}.{h}" for l, h in sorted(shared))))
    return pd.DataFrame(rows)
