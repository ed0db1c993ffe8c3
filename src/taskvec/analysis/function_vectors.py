"""Function vectors (Todd et al., *Function Vectors in Large Language Models*, ICLR 2024; docs/spec.md A.9).

1. **Head means** ``ā[l, h]``: every attention head's output at the last token (the ``heads.{l}`` site, the input of
   the attention output projection, ``[H, hd]`` per layer), averaged over ICL prompts of the task
   (:func:`mean_head_outputs`).
2. **Causal indirect effect** of head ``(l, h)`` (:func:`indirect_effects`): in an ICL prompt whose demonstration
   answers are shuffled (:func:`shuffled_label_prompts`), replace the head's last-token output by ``ā[l, h]``;
   ``CIE = P(target | patched) - P(target | shuffled)``, probabilities over the full vocabulary. The scan is batched
   through :func:`taskvec.analysis.heads._run_head_variants`: each prompt's prefix runs once and its KV cache serves
   one single-token row per (layer, head). :func:`average_indirect_effects` averages over prompts (AIE, with
   Student-t intervals) and, with a ``task`` column, over tasks (the "universal" heads).
3. **Function vector** ``v = Σ_{(l,h) in top-k by AIE} c[l, h]`` where ``c[l, h]`` is the head mean written through
   its column block of the output projection (:func:`head_contributions`, no bias) (:func:`function_vector`).
4. **Evaluations**: ``v`` added to ``h_l`` (the input of decoder layer ``l``) at the query of zero-shot and
   shuffled-label prompts, at every layer (:func:`fv_layer_sweep`, :func:`fv_sweeps`); natural-text templates with
   greedy generation (:func:`natural_text_scores`).

Example::

    trials = task.sample_trials(20, 10, seed=0)
    icl = build_prompts(lm, trials)
    shuffled = shuffled_label_prompts(lm, trials, seed=0)
    means = mean_head_outputs(lm, icl)                           # [L, H, hd]
    aie = average_indirect_effects(indirect_effects(lm, icl, shuffled, head_means=means))
    fv, top = function_vector(lm, means, aie, k=10)              # [d_model], [(layer, head)] * 10
    sweep = fv_layer_sweep(lm, build_prompts(lm, zero_shot(trials)), fv)

Conventions to know: ``h_l`` is the *input* of layer ``l`` (Todd et al.'s code edits the *output* of layer ``l``,
our ``h_{l+1}``). The contribution ``c[l, h]`` is the head's term in the residual stream: its block of the output
projection, and in families that normalize or scale the attention output before the residual add (Gemma 2/3's
post-attention norm, OLMo 2, Granite's ``residual_multiplier``) that block through the norm's gain and scale at these
head outputs (:func:`head_contributions`; ``residual=False`` gives the bare projection Todd et al. sum, which on
gemma3-270m yields a vector that does nothing at any layer).
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from taskvec.errors import ConfigError, EmptyInputError, LayerError, RangeError, WidthError
from taskvec.prompts import Prompt, Template, build_prompts, zero_shot
from taskvec.tasks.base import Example, Trial

HEAD_FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
                 "gemma3", "phi3", "olmo2", "granite", "cohere2", "stablelm", "starcoder2", "smollm3",
                 "glm4", "gpt_oss", "falcon_h1", "gpt2", "gpt_neox", "opt", "gptj")
"""Model families whose every decoder layer exposes per-head attention outputs (an output projection taskvec finds);
checked against the tiny models in tests/test_function_vectors.py. Not Gemma 4 (its full-attention layers have a
wider head than its sliding ones), hybrids with conv or state-space layers (LFM2, Jamba, Qwen3-Next), nor Phi, Falcon,
BLOOM or GPT-Neo (an output projection taskvec does not look for)."""


class HeadsUnsupportedError(ConfigError):
    """A model whose attention does not expose per-head outputs (hybrid conv/SSM layers, an unknown projection)."""


def geometry(lm) -> tuple[list[nn.Module], int, int]:
    """``(out_projections, n_heads, head_dim)``; a model without per-head outputs is a one-line
    :class:`HeadsUnsupportedError` naming the supported families."""
    from taskvec.analysis.heads import head_geometry

    family = getattr(getattr(lm, "profile", None), "family", None) or type(lm.model).__name__
    try:
        projs, H, hd = head_geometry(lm)
        widths = sorted({_in_width(p) for p in projs})
        if widths != [H * hd]:
            raise ConfigError(f"the output projections' input widths differ across layers ({widths}): the heads "
                              "are not one shape in every layer")
        return projs, H, hd
    except ConfigError as err:
        reason = " ".join(str(err).split())
        raise HeadsUnsupportedError(
            f"{family} does not expose per-head attention outputs ({reason}); function vectors and head effects "
            f"need one of: {', '.join(HEAD_FAMILIES)}") from None


def _in_width(proj: nn.Module) -> int:
    return proj.in_features if hasattr(proj, "in_features") else proj.weight.shape[0]  # GPT-2 Conv1D: [in, out]


def _check_heads(lm, layers: Sequence[int] | None, heads: Sequence[int] | None) -> tuple[list[int], list[int]]:
    _, H, _ = geometry(lm)
    layers = list(range(lm.n_layers)) if layers is None else [lm.profile.check_layer(int(l)) for l in layers]
    if not layers:
        raise LayerError("no layers to test: give layer indices, or none for all")
    heads = list(range(H)) if heads is None else [int(h) for h in heads]
    if not heads:
        raise RangeError("no heads to test: give head indices, or none for all")
    bad = next((h for h in heads if not 0 <= h < H), None)
    if bad is not None:
        raise RangeError(f"head {bad} is out of range: this model has heads 0..{H - 1} in each layer")
    return layers, heads


def _check_vector(lm, fv: torch.Tensor) -> torch.Tensor:
    fv = torch.as_tensor(fv)
    if fv.dim() != 1 or fv.shape[0] != lm.d_model:
        raise WidthError(f"the function vector must have shape [{lm.d_model}] (d_model), got {list(fv.shape)}")
    if not torch.isfinite(fv).all():
        from taskvec.errors import NonFiniteError

        raise NonFiniteError("the function vector has NaN or inf entries")
    return fv.float()


# ------------------------------------------------------------------ prompts
def shuffled_trials(trials: Sequence[Trial], seed: int = 0) -> list[Trial]:
    """The same trials with each trial's demonstration answers permuted among its demonstrations (one seeded
    permutation per trial; inputs, order and the query untouched). A trial with fewer than two demonstrations is
    returned as is."""
    rng = random.Random(seed)
    out = []
    for t in trials:
        order = list(range(len(t.demos)))
        rng.shuffle(order)
        demos = tuple(Example(ex.input, t.demos[j].output, t.demos[j].label) for ex, j in zip(t.demos, order))
        out.append(replace(t, demos=demos))
    return out


def shuffled_label_prompts(lm, trials: Sequence[Trial], template: Template = Template(), seed: int = 0,
                           n_demos: int | None = None) -> list[Prompt]:
    """ICL prompts of ``trials`` with shuffled labels (:func:`shuffled_trials`), built by
    :func:`taskvec.prompts.build_prompts`; each prompt's target is its query's answer, as in the ICL prompt."""
    if len(trials) == 0:
        raise EmptyInputError("no trials to build shuffled-label prompts from")
    return build_prompts(lm, shuffled_trials(trials, seed), template, n_demos)


# ------------------------------------------------------------------ head means and contributions
def mean_head_outputs(lm, prompts: Sequence[Prompt]) -> torch.Tensor:
    """``ā``: every head's last-token output averaged over ``prompts``: ``[n_layers, n_heads, head_dim]`` float32."""
    from taskvec.analysis.heads import record_head_outputs

    if len(prompts) == 0:
        raise EmptyInputError("no ICL prompts to average head outputs over")
    geometry(lm)
    return record_head_outputs(lm, list(prompts)).mean(0)


def output_norm(lm, layer: int) -> nn.Module | None:
    """The norm decoder layer ``layer`` applies to its attention output before the residual add (Gemma 2/3's and
    OLMo 2's ``post_attention_layernorm``, GLM-4's ``post_self_attn_layernorm``), or ``None`` (Llama's
    ``post_attention_layernorm`` is the MLP's input norm: a layer with an ``input_layernorm`` and no
    ``pre_feedforward_layernorm`` has none)."""
    block = lm.profile.layers[layer]
    if getattr(block, "post_self_attn_layernorm", None) is not None:
        return block.post_self_attn_layernorm
    norm = getattr(block, "post_attention_layernorm", None)
    if norm is not None and (hasattr(block, "pre_feedforward_layernorm") or not hasattr(block, "input_layernorm")):
        return norm
    return None


@torch.no_grad()
def head_contributions(lm, head_means: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """Each head's output written through its block of the output projection (no bias), and with ``residual``
    (default) on into the residual stream.

    For ``nn.Linear`` (weight ``[d_model, H*hd]``) head ``h`` owns the columns ``h*hd:(h+1)*hd``; for GPT-2's
    ``Conv1D`` (weight ``[H*hd, d_model]``) the same rows. Any other module is applied to the one-block input and
    its output at zero input (the bias) subtracted.

    ``residual=True``: where a layer normalizes its attention output before adding it to the residual stream
    (Gemma 2/3, OLMo 2, GLM-4: :func:`output_norm`), the RMS norm of the whole output ``o = Σ_h c_h + bias`` is a gain
    ``g`` over a scalar ``rms(o)``, so ``norm(o) = Σ_h g ⊙ c_h / rms(o) + g ⊙ bias / rms(o)`` exactly: head ``h``'s
    term ``g ⊙ c_h / rms(o)`` is its contribution to the residual stream at these head outputs. Granite's
    ``residual_multiplier`` scales it. Elsewhere the projection's block is the residual term itself. (Todd et al.
    sum the projection's blocks; on a post-norm model those miss the norm's gain and scale.)

    The norm's scale belongs to one forward pass: on a post-norm model pass every prompt's head outputs
    (``[P, L, H, hd]``, :func:`taskvec.analysis.heads.record_head_outputs`) to get the mean over prompts of each
    head's term; the terms of the mean output overshoot (the mean of the prompts' outputs is shorter than each, so
    its ``1 / rms`` is larger: 7,600 against residual norms of 4,000-5,000 on gemma3-270m). Without a norm the two
    are equal (the map is linear).

    Args:
        head_means: ``[n_layers, n_heads, head_dim]``, or ``[n_prompts, n_layers, n_heads, head_dim]`` (the
            result is then the mean over prompts of each prompt's terms).

    Returns:
        ``[n_layers, n_heads, d_model]`` float32 on the CPU.
    """
    projs, H, hd = geometry(lm)
    head_means = torch.as_tensor(head_means).float().cpu()
    if head_means.dim() == 4 and tuple(head_means.shape[1:]) == (len(projs), H, hd):
        if len(head_means) == 0:
            raise EmptyInputError("no prompts' head outputs to write through the output projection")
        return torch.stack([head_contributions(lm, m, residual) for m in head_means]).mean(0)
    if tuple(head_means.shape) != (len(projs), H, hd):
        raise WidthError(f"head means must have shape [{len(projs)}, {H}, {hd}] (layers, heads, head_dim) or "
                         f"[prompts, {len(projs)}, {H}, {hd}], got {list(head_means.shape)}")
    out = torch.empty(len(projs), H, lm.d_model)
    for l, proj in enumerate(projs):
        a = head_means[l]  # [H, hd]
        bias = getattr(proj, "bias", None)
        if isinstance(proj, nn.Linear):
            W = proj.weight.detach().float().cpu().reshape(-1, H, hd)  # [d, H, hd]
            out[l] = torch.einsum("dhk,hk->hd", W, a)
        elif type(proj).__name__ == "Conv1D":
            W = proj.weight.detach().float().cpu().reshape(H, hd, -1)  # [H, hd, d]
            out[l] = torch.einsum("hkd,hk->hd", W, a)
        else:
            p = next(proj.parameters())
            x = torch.block_diag(*a).to(device=p.device, dtype=p.dtype)  # [H, H*hd], row h = block h
            zero = proj(torch.zeros_like(x[:1]))
            out[l] = (proj(x) - zero).float().cpu()
            bias = zero[0]
        norm = output_norm(lm, l) if residual else None
        if norm is not None:
            whole = out[l].sum(0) + (bias.detach().float().cpu() if bias is not None else 0.0)
            eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
            q = next(norm.parameters())
            v = out[l]  # g ⊙ v = norm(v) · rms(v), with the module's own gain and eps
            gained = norm(v.to(device=q.device, dtype=q.dtype)).float().cpu() * torch.sqrt(
                v.pow(2).mean(-1, keepdim=True) + eps)
            out[l] = gained / torch.sqrt(whole.pow(2).mean() + eps)
    multiplier = getattr(getattr(lm.model, "config", None), "residual_multiplier", None) if residual else None
    if multiplier is not None:
        out *= float(multiplier)
    return out


# ------------------------------------------------------------------ causal indirect effects
def indirect_effects(
    lm,
    icl_prompts: Sequence[Prompt],
    shuffled_prompts: Sequence[Prompt],
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_rows: int = 256,
    head_means: torch.Tensor | None = None,
    task: str | None = None,
) -> pd.DataFrame:
    """Causal indirect effect of every (layer, head) on shuffled-label prompts.

    ``cie = P(target | shuffled prompt, head (l, h)'s last-token output replaced by ā[l, h]) - P(target | shuffled
    prompt)``, probabilities of each prompt's target token over the full vocabulary (float32 softmax). Each shuffled
    prompt's prefix runs once; its KV cache serves one single-token row per (layer, head) plus a clean row
    (:func:`taskvec.analysis.heads._run_head_variants`), ``max_rows`` rows per forward.

    Args:
        icl_prompts: the ICL prompts ``ā`` is averaged over (ignored when ``head_means`` is given).
        shuffled_prompts: the prompts the heads are patched in (:func:`shuffled_label_prompts`).
        layers, heads: which heads to scan (default all).
        head_means: ``[L, H, hd]`` from :func:`mean_head_outputs`, to reuse; or ``[P, L, H, hd]``, one per shuffled
            prompt (e.g. the mean over the ICL prompts that share its label mapping).
        task: written in a ``task`` column (for averaging over tasks).

    Returns:
        one row per (prompt, layer, head): ``[task,] prompt, layer, head, p_patched, p_shuffled, cie``.
    """
    from taskvec.analysis.heads import _run_head_variants

    if len(shuffled_prompts) == 0:
        raise EmptyInputError("no shuffled-label prompts to patch heads in")
    layers, heads = _check_heads(lm, layers, heads)
    if max_rows < 1:
        raise RangeError(f"max_rows = {max_rows}: give at least 1")
    projs, H, hd = geometry(lm)
    means = mean_head_outputs(lm, icl_prompts) if head_means is None else torch.as_tensor(head_means).float()
    P = len(shuffled_prompts)
    if tuple(means.shape) not in ((len(projs), H, hd), (P, len(projs), H, hd)):
        raise WidthError(f"head means must have shape [{len(projs)}, {H}, {hd}] (or [{P}, {len(projs)}, {H}, {hd}], "
                         f"one per shuffled prompt), got {list(means.shape)}")
    values = means if means.dim() == 4 else means[None].expand(P, *means.shape)
    table = _run_head_variants(lm, list(shuffled_prompts), values, layers, max_rows, heads)
    clean = table[table.layer == -1].set_index("prompt")
    rows = table[table.layer >= 0].reset_index(drop=True)
    out = pd.DataFrame({"prompt": rows.prompt.astype(int), "layer": rows.layer.astype(int),
                        "head": rows["head"].astype(int),
                        "p_patched": np.exp(rows.target_logprob.to_numpy(dtype=np.float64)),
                        "p_shuffled": np.exp(clean.target_logprob.loc[rows.prompt].to_numpy(dtype=np.float64))})
    out["cie"] = out.p_patched - out.p_shuffled
    if task is not None:
        out.insert(0, "task", task)
    return out


def average_indirect_effects(table: pd.DataFrame) -> pd.DataFrame:
    """AIE per (layer, head) with 95% Student-t intervals (:func:`taskvec.stats.t_ci`; NaN with one value).

    Without a ``task`` column (or with one task): the mean CIE over prompts, interval over prompts, ``n`` prompts.
    With several tasks (the "universal" heads): each task's mean over its prompts, then the mean over tasks,
    interval over the task means, ``n`` tasks.

    Returns:
        ``layer, head, aie, aie_low, aie_high, n``, largest ``aie`` first.
    """
    from taskvec.stats import or_nan, t_ci

    if table.empty:
        raise EmptyInputError("no indirect effects to average")
    if "task" in table and table.task.nunique() > 1:
        unit = table.groupby(["task", "layer", "head"], sort=True).cie.mean().reset_index()
    else:
        unit = table
    rows = []
    for (layer, head), g in unit.groupby(["layer", "head"], sort=True):
        m, lo, hi = or_nan(t_ci, g.cie.to_numpy(dtype=float))
        rows.append(dict(layer=int(layer), head=int(head), aie=m, aie_low=lo, aie_high=hi, n=len(g)))
    out = pd.DataFrame(rows)
    return out.sort_values(["aie", "layer", "head"], ascending=[False, True, True], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------ the function vector
def top_heads(aie: pd.DataFrame | torch.Tensor, k: int = 10) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest AIE (ties: lower layer, then lower head). ``aie``: a frame with ``layer,
    head, aie`` (:func:`average_indirect_effects`) or an ``[L, H]`` tensor."""
    if isinstance(aie, pd.DataFrame):
        missing = {"layer", "head", "aie"} - set(aie.columns)
        if missing:
            raise ConfigError(f"the AIE table needs columns layer, head, aie (missing {', '.join(sorted(missing))})")
        df = aie[["layer", "head", "aie"]].dropna(subset=["aie"])
    else:
        t = torch.as_tensor(aie, dtype=torch.float64)
        if t.dim() != 2:
            raise WidthError(f"an AIE tensor must be [layers, heads], got {list(t.shape)}")
        L, H = t.shape
        df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                           "aie": t.reshape(-1).numpy()})
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(df):
        raise RangeError(f"k = {k} is out of range: choose 1..{len(df)} (the heads ranked by AIE)")
    df = df.sort_values(["aie", "layer", "head"], ascending=[False, True, True], kind="stable").head(int(k))
    return [(int(l), int(h)) for l, h in zip(df.layer, df["head"])]


def function_vector(lm, head_means: torch.Tensor, aie: pd.DataFrame | torch.Tensor,
                    k: int = 10) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The sum of the top-``k`` heads' mean contributions (:func:`head_contributions`).

    Args:
        head_means: ``[L, H, hd]`` (:func:`mean_head_outputs`), or every prompt's ``[P, L, H, hd]``
            (:func:`taskvec.analysis.heads.record_head_outputs`; what a post-norm model such as Gemma needs, see
            :func:`head_contributions`).
        aie: :func:`average_indirect_effects` (or an ``[L, H]`` tensor); ``k`` must be in ``1..`` its heads.

    Returns:
        ``(fv [d_model] float32, [(layer, head), ...] largest AIE first)``.
    """
    projs, H, _ = geometry(lm)
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > len(projs) * H:
        raise RangeError(f"k = {k} is out of range: this model has {len(projs) * H} heads ({len(projs)} layers x "
                         f"{H}); choose 1..{len(projs) * H}")
    chosen = top_heads(aie, k)
    bad = next(((l, h) for l, h in chosen if not (0 <= l < len(projs) and 0 <= h < H)), None)
    if bad is not None:
        raise RangeError(f"head {bad[0]}.{bad[1]} in the AIE table is not a head of this model "
                         f"({len(projs)} layers x {H} heads)")
    contrib = head_contributions(lm, head_means)
    fv = torch.stack([contrib[l, h] for l, h in chosen]).sum(0)
    return fv, chosen


# ------------------------------------------------------------------ evaluations
def fv_layer_sweep(lm, prompts: Sequence[Prompt], fv: torch.Tensor, layers: Sequence[int] | None = None,
                   max_batch_tokens: int | None = None) -> pd.DataFrame:
    """``fv`` added to ``h_l`` at each prompt's query (last token), one layer at a time, every layer in ``layers``
    (default all) in one batched sweep (:func:`taskvec.sweep.patch_layers`, ``mode="add"``).

    Returns:
        one row per (prompt, layer): ``prompt, layer, correct, target_logprob[, label_correct], p_target``.
    """
    from taskvec.sweep import patch_layers

    fv = _check_vector(lm, fv)
    vectors = fv[None].expand(lm.n_layers, lm.d_model)
    df = patch_layers(lm, list(prompts), vectors, "query", layers, mode="add", max_batch_tokens=max_batch_tokens)
    df["p_target"] = np.exp(df.target_logprob.to_numpy(dtype=np.float64))
    return df


def fv_sweeps(lm, trials: Sequence[Trial], fv: torch.Tensor, template: Template = Template(),
              layers: Sequence[int] | None = None, seed: int = 0) -> pd.DataFrame:
    """:func:`fv_layer_sweep` on the zero-shot prompts (no demonstrations) and the shuffled-label prompts of
    ``trials``, stacked with a ``prompts`` column (``"zero_shot"`` / ``"shuffled"``); the unpatched scores of each
    prompt are in ``attrs["clean"]`` (records: ``prompts, prompt, correct, target_logprob``)."""
    from taskvec.intervene import patched_logits
    from taskvec.scoring import read_ids, read_logprobs, score, targets_of

    sets = {"zero_shot": build_prompts(lm, zero_shot(trials), template),
            "shuffled": shuffled_label_prompts(lm, trials, template, seed)}
    parts, clean = [], []
    for name, prompts in sets.items():
        parts.append(fv_layer_sweep(lm, prompts, fv, layers).assign(prompts=name))
        targets, labels = targets_of(prompts)
        top1, lp = read_logprobs(patched_logits(lm, [p.ids for p in prompts]), read_ids(targets, labels))
        clean.append(score(top1, lp, targets, labels).assign(prompts=name, prompt=range(len(prompts))))
    out = pd.concat(parts, ignore_index=True)
    out.attrs["clean"] = pd.concat(clean, ignore_index=True).to_dict("records")
    return out


@torch.no_grad()
def greedy_generate(lm, ids: Sequence[Sequence[int]], n_tokens: int, layer: int | None = None,
                    vectors: torch.Tensor | None = None, steps: Literal["first", "every"] = "first") -> torch.Tensor:
    """Greedy continuation of left-padded prompts with a KV cache, optionally adding ``vectors[b]`` (``[B, d]``) to
    ``h_layer`` at the last column of row ``b``.

    ``steps="first"``: added only on the first forward pass, at the prompt's last token; the generated tokens see
    it through the cached keys and values of that position (Todd et al.'s definition: the vector at the last prompt
    token). ``steps="every"``: also added at each generated token's position (what a hook left on during HF
    ``generate`` with ``idx=-1`` does, as Todd et al.'s released code does).

    Returns:
        ``[B, n_tokens]`` token ids.
    """
    from taskvec.batching import left_pad
    from taskvec.hooks import Hooks

    if n_tokens < 1:
        raise RangeError(f"n_tokens = {n_tokens}: generate at least 1 token")
    if steps not in ("first", "every"):
        raise ConfigError(f"steps must be 'first' or 'every', got {steps!r}")
    batch = left_pad([list(x) for x in ids], lm.tokenizer.pad_token_id).to(lm.device)
    mask, pos = batch.attention_mask, batch.position_ids
    hooks = Hooks(lm)
    state = {"step": 0}
    if vectors is not None:
        layer = lm.profile.check_layer(int(layer))

        def add(h: torch.Tensor) -> torch.Tensor | None:
            if state["step"] > 0 and steps == "first":
                return None
            h = h.clone()
            h[:, -1] += vectors.to(device=h.device, dtype=h.dtype)
            return h
        hooks.add(f"h.{layer}", add)
    out_tokens = []
    with hooks:
        out = lm.model(input_ids=batch.input_ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       logits_to_keep=1)
        for step in range(n_tokens):
            tok = out.logits[:, -1].argmax(-1)
            out_tokens.append(tok.cpu())
            if step == n_tokens - 1:
                break
            state["step"] = step + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = pos[:, -1:] + 1
            out = lm.model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos,
                           past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
    return torch.stack(out_tokens, 1)


def _pairs(items) -> list[tuple[str, str]]:
    pairs = []
    for it in items:
        if isinstance(it, Trial):
            it = it.query
        if isinstance(it, Example):
            pairs.append((it.input, it.output))
        else:
            x, y = it
            pairs.append((str(x), str(y)))
    return pairs


def natural_text_scores(lm, items: Sequence, template: str, fv: torch.Tensor, layer: int, n_tokens: int = 5,
                        steps: Literal["first", "every"] = "first", batch_size: int = 16) -> pd.DataFrame:
    """Natural-text evaluation: greedy generation of ``n_tokens`` tokens after ``template`` (``{x}`` replaced by
    the input), without and with ``fv`` added to ``h_layer`` at the prompt's last token.

    The vector is added **only on the first forward pass** (at the last prompt token) by default; later tokens
    inherit it through the KV cache. ``steps="every"`` also adds it at every generated token
    (:func:`greedy_generate`). A continuation is correct when the answer (stripped, case-insensitive) appears in it
    (decoded, case-insensitive): multi-token answers are fine.

    Args:
        items: ``(x, answer)`` pairs, :class:`~taskvec.tasks.base.Example` objects or trials (their queries).
        template: e.g. ``'The word "{x}" means'``.

    Returns:
        one row per (item, condition): ``item, input, answer, condition`` (``"clean"`` / ``"fv"``),
        ``continuation, correct``.
    """
    if "{x}" not in template:
        raise ConfigError(f"natural-text template {template!r} has no {{x}} placeholder for the input")
    fv = _check_vector(lm, fv)
    layer = lm.profile.check_layer(int(layer) if isinstance(layer, np.integer) else layer)
    pairs = _pairs(items)
    if not pairs:
        raise EmptyInputError("no items for the natural-text evaluation")
    tok, bos = lm.tokenizer, lm.profile.bos
    texts = [bos.prefix_text + template.replace("{x}", x) for x, _ in pairs]
    ids = [list(tok(t, add_special_tokens=bos.add_special_tokens).input_ids) for t in texts]
    rows = []
    for start in range(0, len(ids), max(1, batch_size)):
        group = ids[start:start + batch_size]
        n = len(group)
        vecs = torch.cat([torch.zeros(n, lm.d_model), fv[None].expand(n, lm.d_model)])
        gen = greedy_generate(lm, group + group, n_tokens, layer, vecs, steps)
        for j in range(2 * n):
            i = start + (j % n)
            x, y = pairs[i]
            text = tok.decode(gen[j].tolist(), skip_special_tokens=True)
            rows.append(dict(item=i, input=x, answer=y, condition="clean" if j < n else "fv", continuation=text,
                             correct=float(y.strip().lower() in text.lower())))
    return pd.DataFrame(rows).sort_values(["condition", "item"], kind="stable").reset_index(drop=True)
