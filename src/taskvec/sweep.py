"""Fast patching sweeps: many (prompt, layer, vector) variants of many prompts in few forward passes.

A *variant* is one prompt with a set of residual-stream writes. Patching at position ``p`` cannot change anything
before ``p``, so for every prompt the tokens before its earliest written position (the *prefix*) are run once, and
their KV cache is shared by all of that prompt's variants; only the suffix is re-run, with the variants of many
prompts stacked into one batch, and logits are computed only at the last position.

* :func:`run_variants` is the engine (any writes, any positions).
* :func:`patch_layers` is the common case: one vector per (layer[, position]) patched at one layer (``span="single"``)
  or at every layer from ``l`` on (``span="from"``), for every layer, scored against the prompts' targets.
* :func:`run_variants_naive` is the reference: one full forward per variant (what most research code does).

Example::

    g = global_vector(...)                                   # [n_layers, d_model]
    table = patch_layers(lm, zero_shot_prompts, g, positions="query")
    table.groupby("layer").correct.mean()
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from taskvec.batching import LAST_LOGITS, check_token_ids, left_pad
from taskvec.errors import ChoiceError, EmptyInputError, PositionError, WidthError
from taskvec.intervene import Edits, backbone, hooked, layer_skipping_ok, run_until_recorded, skipping
from taskvec.models.devices import batch_token_budget
from taskvec.scoring import read_ids, read_logprobs, score, targets_of
from taskvec.unembed import ROW_CHUNK, Unembedding, direct_head_ok


@dataclass
class Variant:
    """One prompt with writes ``h[layers[e]][positions[e]] <- vectors[e]`` (prompt positions).

    ``layers``, ``positions``: ``[E]`` long; ``vectors``: ``[E, d_model]``. ``E = 0`` is the unpatched prompt.
    """

    prompt: int
    layers: torch.Tensor
    positions: torch.Tensor
    vectors: torch.Tensor

    @staticmethod
    def clean(prompt: int, d_model: int) -> "Variant":
        """The unpatched prompt."""
        empty = torch.zeros(0, dtype=torch.long)
        return Variant(prompt, empty, empty, torch.zeros(0, d_model))


@dataclass
class VariantOutput:
    """What each variant predicts at its prompt's last position.

    Attributes:
        top1: ``[V]`` argmax token over the full vocabulary.
        logprobs: ``[V, K]`` log-probabilities of the requested ``read_ids`` (``K = 0`` if none).
        logits: ``[V, vocab]`` full logits, only when asked for (memory!).
    """

    top1: torch.Tensor
    logprobs: torch.Tensor
    logits: torch.Tensor | None = None


def _check(lm, prompts, variants, read_ids) -> None:
    if not prompts or not variants:
        raise EmptyInputError("nothing to run: give at least one prompt and one variant")
    check_token_ids(prompts, lm.model.get_input_embeddings().num_embeddings)
    for v in variants:
        if not 0 <= v.prompt < len(prompts):
            raise PositionError(f"variant refers to prompt {v.prompt}, but there are {len(prompts)} prompts")
        if v.vectors.dim() != 2 or v.vectors.shape[1] != lm.d_model:
            raise WidthError(f"vectors must be [n, {lm.d_model}] for this model, got {list(v.vectors.shape)}")
        if len(v.positions) and (int(v.positions.max()) >= len(prompts[v.prompt]) or int(v.positions.min()) < 0):
            raise PositionError(
                f"position {v.positions.tolist()} is outside prompt {v.prompt} ({len(prompts[v.prompt])} tokens)")
    if read_ids is not None and read_ids.shape[0] != len(variants):
        raise WidthError(f"read_ids has {read_ids.shape[0]} rows for {len(variants)} variants")


def _outputs(logits: torch.Tensor, read: torch.Tensor | None, keep: bool) -> tuple:
    top1, lp = read_logprobs(logits, read)
    return top1, lp, (logits.float().cpu() if keep else None)


def _groups(by_prompt: dict[int, list[int]], length: dict[int, int], start: dict[int, int],
            budget: int) -> list[list[int]]:
    """Prompts cut into groups run together, sorted by the length of the suffix their variants re-run (from the
    first written position on; every variant of a group re-runs the group's longest), a group ending when the next
    prompt would take its rows x full length over ``budget``."""
    groups: list[list[int]] = []
    rows = width = 0
    for p in sorted(by_prompt, key=lambda p: (length[p] - start[p], length[p], p)):
        n, w = len(by_prompt[p]), max(width, length[p])
        if not groups or (rows + n) * w > budget:
            groups.append([])
            rows, w = 0, length[p]
        groups[-1].append(p)
        rows, width = rows + n, w
    return groups


def _bands(order: list[int], first: dict[int, int] | None, min_rows: int = 4) -> list[list[int]]:
    """Split variant indices sorted by first written layer into bands of one first layer each, merging a band of
    fewer than ``min_rows`` rows into the next (a band starts at its lowest first layer, so every row of a band
    that starts below its own first layer recomputes clean layers: one layer per band is the least work)."""
    if first is None:
        return [order]
    bands: list[list[int]] = []
    for i in order:
        if bands and (first[bands[-1][0]] == first[i] or len(bands[-1]) < min_rows):
            bands[-1].append(i)
        else:
            bands.append([i])
    if len(bands) > 1 and len(bands[-1]) < min_rows:
        last = bands.pop()
        bands[-1].extend(last)
    return bands


@torch.no_grad()
def run_variants(
    lm,
    prompts: Sequence[Sequence[int]],
    variants: Sequence[Variant],
    mode: Literal["replace", "add"] = "replace",
    read_ids: torch.Tensor | None = None,
    max_batch_tokens: int | None = None,
    return_logits: bool = False,
    progress: bool | str = False,
    skip_layers: bool = True,
) -> VariantOutput:
    """Run every variant; shared prefixes are computed once per prompt and reused through the KV cache.

    Layers below a variant's first write see the clean prompt, so (``skip_layers``, on models where
    :func:`~taskvec.intervene.layer_skipping_ok` verified it once per loaded model) the clean states are computed
    once per prompt, variants are run in bands sorted by their first written layer, and each band starts at its
    first layer instead of layer 0.

    Args:
        lm: an :class:`~taskvec.models.LM`.
        prompts: token-id lists.
        variants: what to write into which prompt.
        mode: replace ``h_l`` or add to it.
        read_ids: ``[V, K]`` token ids whose log-probabilities to return per variant (targets, label words).
        max_batch_tokens: bound on (rows x sequence length) per forward pass; lower it to save memory (default:
            :func:`~taskvec.models.devices.batch_token_budget`, from the free memory on a GPU).
        return_logits: also return full ``[V, vocab]`` logits.
        progress: show a progress bar (a string is used as its label).
        skip_layers: allow layer skipping (``False`` forces full forwards; the result must not change).

    Returns:
        :class:`VariantOutput` in the order of ``variants``.
    """
    _check(lm, prompts, variants, read_ids)
    if mode not in ("replace", "add"):
        raise ChoiceError(f"mode must be 'replace' or 'add', got {mode!r}")
    model, pad = lm.model, lm.tokenizer.pad_token_id
    max_batch_tokens = max_batch_tokens or batch_token_budget(lm)
    by_prompt: dict[int, list[int]] = defaultdict(list)
    for i, v in enumerate(variants):
        by_prompt[v.prompt].append(i)
    start = {p: min([len(prompts[p]) - 1] + [int(variants[i].positions.min()) for i in idx if len(variants[i].positions)])
             for p, idx in by_prompt.items()}
    groups = _groups(by_prompt, {p: len(prompts[p]) for p in by_prompt}, start, max_batch_tokens)

    V = len(variants)
    direct = direct_head_ok(lm)  # keep final states and unembed them all at the end
    stack = backbone(model)
    final = torch.full((V, lm.d_model), float("nan"), dtype=next(model.parameters()).dtype, device=lm.device)
    top1 = torch.full((V,), -1, dtype=torch.long)  # -1 / NaN until run: a missed variant cannot pass unseen
    lps = torch.full((V, 0 if read_ids is None else read_ids.shape[1]), float("nan"))
    logits_all = [None] * V if return_logits else None
    bar = tqdm(total=V, desc=progress if isinstance(progress, str) else "variants", disable=not progress,
               leave=False)
    for group in groups:
        batch = left_pad([prompts[p] for p in group], pad).to(lm.device)
        local = {p: j for j, p in enumerate(group)}
        split = min(int(batch.offsets[local[p]]) + start[p] for p in group)
        width = batch.input_ids.shape[1] - split
        prefix = None
        if split > 0:  # the decoder stack alone: the prefix's logits are never read
            prefix = stack(input_ids=batch.input_ids[:, :split], attention_mask=batch.attention_mask[:, :split],
                           position_ids=batch.position_ids[:, :split], use_cache=True).past_key_values
        idx = [i for p in group for i in by_prompt[p]]
        first = {i: int(variants[i].layers.min()) if len(variants[i].positions) else 0 for i in idx}
        skip_here = skip_layers and max(first.values()) > 0 and layer_skipping_ok(lm)
        bands = _bands(sorted(idx, key=lambda i: first[i]), first if skip_here else None)
        start_of = {b: first[band[0]] if skip_here else 0 for b, band in enumerate(bands)}
        # a band whose every row replaces every suffix column at the band's first layer never reads its clean
        # start states (the global sweep: the suffix is the query alone): those are not computed
        columns = {i: _columns_at(variants[i], first[i], int(batch.offsets[local[variants[i].prompt]]) - split)
                   for i in idx} if mode == "replace" else {}
        overwritten = {b: all(first[i] == start_of[b] and columns.get(i) == width for i in band)
                       for b, band in enumerate(bands)}
        starts = sorted({start_of[b] for b in start_of if not overwritten[b]} - {0})
        clean = {}
        if starts:  # the clean suffix states at each band's first layer, one row per prompt
            with hooked(lm.profile.layers, record={l: None for l in starts}, stop_after_record=True) as rec:
                run_until_recorded(stack, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=batch.position_ids, use_cache=False)
            clean = {l: rec[l][:, split:] for l in starts}
        for b, band in enumerate(bands):
            start_layer = start_of[b]
            row_prompt = torch.tensor([local[variants[i].prompt] for i in band], device=lm.device)
            cache = None
            if prefix is not None:
                cache = prefix if len(bands) == 1 else copy.deepcopy(prefix)  # the forward appends to it
                # one cache row per variant row: reorder_cache (beam search's row gather) rather than
                # batch_select_indices, which the conv/recurrent cache layers of hybrid families (Qwen3-Next,
                # LFM2, Jamba, Falcon-H1) lack or get wrong; on key/value layers both are the same index_select
                cache.reorder_cache(row_prompt)
            e_rows, e_layers, e_pos, e_vec = [], [], [], []
            for r, i in enumerate(band):  # each variant's writes, in suffix columns
                v = variants[i]
                if len(v.positions):
                    e_rows.append(torch.full((len(v.positions),), r, dtype=torch.long))
                    e_layers.append(v.layers.long())
                    e_pos.append(v.positions.long() + int(batch.offsets[local[v.prompt]]) - split)
                    e_vec.append(v.vectors)
            edits = None
            if e_rows:
                edits = Edits(torch.cat(e_rows), torch.cat(e_layers), torch.cat(e_pos), torch.cat(e_vec), mode)
                edits.validate(lm.n_layers, lm.d_model, len(band), width)
            begin = None
            if start_layer > 0:
                begin = (start_layer, torch.zeros(len(band), width, lm.d_model, dtype=final.dtype, device=lm.device)
                         if overwritten[b] else clean[start_layer][row_prompt])
            inputs = dict(input_ids=batch.input_ids[row_prompt, split:], attention_mask=batch.attention_mask[row_prompt],
                          position_ids=batch.position_ids[row_prompt, split:], past_key_values=cache,
                          use_cache=cache is not None)
            sel = torch.tensor(band)
            with hooked(lm.profile.layers, edits=edits, start=begin), skipping(lm.profile.layers, start_layer):
                if direct:
                    final[sel.to(lm.device)] = stack(**inputs).last_hidden_state[:, -1].to(lm.device)
                else:
                    logits = model(**inputs, logits_to_keep=LAST_LOGITS).logits[:, -1]
            if not direct:
                read = None if read_ids is None else read_ids[band]
                top1[sel], lps[sel] = read_logprobs(logits, read)
                if return_logits:
                    for r, i in enumerate(band):
                        logits_all[i] = logits[r].float().cpu()
        bar.update(len(idx))
    bar.close()
    if direct:  # every variant's prediction in one pass over the unembedding
        head = Unembedding(lm)
        top1, lps = head.read(final, read_ids)
        if return_logits:
            logits_all = list(torch.cat([head.logits(final[r:r + ROW_CHUNK]).cpu() for r in range(0, V, ROW_CHUNK)]))
    if (top1 < 0).any():
        raise RuntimeError(f"internal error: {int((top1 < 0).sum())} variants were not run")
    return VariantOutput(top1, lps, torch.stack(logits_all) if return_logits else None)


def _columns_at(variant: Variant, layer: int, shift: int) -> int:
    """How many distinct suffix columns ``variant`` writes at ``layer`` (its prompt positions + ``shift``)."""
    at = variant.positions[variant.layers == layer] + shift
    return int(torch.unique(at[at >= 0]).numel())


@torch.no_grad()
def run_variants_naive(
    lm,
    prompts: Sequence[Sequence[int]],
    variants: Sequence[Variant],
    mode: Literal["replace", "add"] = "replace",
    read_ids: torch.Tensor | None = None,
    return_logits: bool = False,
    full_logits: bool = True,
) -> VariantOutput:
    """Reference implementation: one full forward pass per variant, hooks on, no cache, no batching.

    ``full_logits=True`` computes logits at every position, as a plain ``model(input_ids)`` call does.
    """
    _check(lm, prompts, variants, read_ids)
    tops, lps, lgs = [], [], []
    for i, v in enumerate(variants):
        ids = torch.tensor([prompts[v.prompt]], device=lm.device)
        edits = Edits(torch.zeros(len(v.positions), dtype=torch.long), v.layers, v.positions, v.vectors, mode)
        with hooked(lm.profile.layers, edits=edits):
            logits = lm.model(input_ids=ids, use_cache=False,
                              logits_to_keep=0 if full_logits else LAST_LOGITS).logits[:, -1]
        t1, lp, lg = _outputs(logits, None if read_ids is None else read_ids[i:i + 1], return_logits)
        tops.append(t1), lps.append(lp), lgs.append(lg)
    return VariantOutput(torch.cat(tops), torch.cat(lps), torch.cat(lgs) if return_logits else None)


def layer_variants(
    n_prompts: int,
    vectors: torch.Tensor,
    positions: torch.Tensor,
    layers: Sequence[int],
    span: Literal["single", "from"] = "single",
) -> list[Variant]:
    """Variants that patch, for each prompt and each layer ``l``, the vectors of layer ``l`` (``span="single"``)
    or of every layer ``l' >= l`` (``span="from"``) at the prompt's positions.

    Args:
        vectors: ``[n_prompts, n_layers, K, d]`` (per-prompt) or ``[n_layers, K, d]`` (shared by all prompts).
        positions: ``[n_prompts, K]`` prompt positions, aligned with ``vectors``' ``K`` axis.
        layers: which layers to sweep.

    Returns:
        ``n_prompts * len(layers)`` variants, prompt-major.
    """
    if span not in ("single", "from"):
        raise ChoiceError(f"span must be 'single' or 'from', got {span!r}")
    if vectors.dim() == 3:
        vectors = vectors.expand(n_prompts, *vectors.shape)
    n_layers, K = vectors.shape[1], positions.shape[1]
    out = []
    for p in range(n_prompts):
        for layer in layers:
            ls = [layer] if span == "single" else list(range(layer, n_layers))
            out.append(Variant(
                p,
                torch.tensor(ls, dtype=torch.long).repeat_interleave(K),
                positions[p].repeat(len(ls)),
                vectors[p, ls].reshape(-1, vectors.shape[-1]),
            ))
    return out


def score_variants(
    lm,
    prompts: Sequence,
    variants: Sequence[Variant],
    mode: Literal["replace", "add"] = "replace",
    max_batch_tokens: int | None = None,
    progress: bool | str = False,
) -> pd.DataFrame:
    """The whole scoring chain for patched variants of :class:`~taskvec.prompts.Prompt` objects: targets -> read
    ids -> :func:`run_variants` -> one row per variant with ``correct``, ``target_logprob`` and (categorization)
    ``label_correct`` (see :mod:`taskvec.scoring`)."""
    targets, label_ids = targets_of(prompts, [v.prompt for v in variants])
    out = run_variants(lm, [p.ids for p in prompts], variants, mode, read_ids(targets, label_ids),
                       max_batch_tokens=max_batch_tokens, progress=progress)
    return score(out.top1, out.logprobs, targets, label_ids)


def patch_layers(
    lm,
    prompts,
    vectors: torch.Tensor,
    positions: str | torch.Tensor = "query",
    layers: Sequence[int] | None = None,
    span: Literal["single", "from"] = "single",
    mode: Literal["replace", "add"] = "replace",
    max_batch_tokens: int | None = None,
    progress: bool | str = False,
) -> pd.DataFrame:
    """Patch vectors into :class:`~taskvec.prompts.Prompt` objects at every layer and score the predictions.

    Args:
        lm: the model.
        prompts: ``list[Prompt]`` (targets and label ids come from them).
        vectors: ``[n_layers, d]`` or ``[n_layers, K, d]`` (shared) or ``[n_prompts, n_layers, K, d]`` (per prompt).
        positions: ``"query"`` (the last token), ``"answers"`` (every demonstration's answer position), or a
            ``[n_prompts, K]`` tensor of prompt positions.
        layers: layers to sweep (default: all).
        span: patch only layer ``l`` (``"single"``) or every layer from ``l`` on (``"from"``).

    Returns:
        a DataFrame with one row per (prompt, layer): ``prompt, layer, correct, target_logprob[, label_correct]``.
    """
    n = len(prompts)
    if n == 0:
        raise EmptyInputError("no prompts to patch")
    if isinstance(positions, str):
        if positions == "query":
            positions = torch.tensor([[p.query_position] for p in prompts])
        elif positions == "answers":
            positions = torch.tensor([p.answer_positions for p in prompts])
        else:
            raise ChoiceError(f"positions must be 'query', 'answers' or a tensor, got {positions!r}")
    if vectors.dim() == 2:
        vectors = vectors[:, None, :]
    if vectors.shape[-2] != positions.shape[1]:
        vectors = vectors.expand(*vectors.shape[:-2], positions.shape[1], vectors.shape[-1])
    layers = list(range(lm.n_layers)) if layers is None else [lm.profile.check_layer(int(l)) for l in layers]
    if vectors.shape[-3] != lm.n_layers:
        raise WidthError(f"vectors must have one entry per layer ({lm.n_layers}), got {vectors.shape[-3]}")
    variants = layer_variants(n, vectors, positions, layers, span)
    df = score_variants(lm, prompts, variants, mode, max_batch_tokens=max_batch_tokens, progress=progress)
    df.insert(0, "layer", [layer for _ in range(n) for layer in layers])
    df.insert(0, "prompt", [p for p in range(n) for _ in layers])
    return df
