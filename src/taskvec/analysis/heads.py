"""Head-level attribution (docs/spec.md B.7): which attention heads carry task information into the query.

A head's output is its slice of the input of the attention output projection (``o_proj`` in Llama/Gemma/Qwen,
``c_proj`` in GPT-2, ``dense`` in GPT-NeoX, ``out_proj`` in OPT): ``z[..., h*hd:(h+1)*hd]``. We intervene on it
**at the query position only** (the last token), so every variant shares the prompt's prefix: the prefix is run
once per prompt and its KV cache is reused by a batch of ``n_layers x n_heads`` single-token rows, one per head.

Two interventions, both scored at the query (target log-probability, argmax accuracy, label-restricted accuracy):

* ``mode="mean"``: in the ICL prompt, replace head ``(l, h)``'s query output by its mean over the ICL prompts
  (mean-ablation). ``effect = clean - ablated`` target log-prob: positive when the head helps.
* ``mode="patch"``: in the *dummy* prompt (same inputs, random answers), write the head's query output from the
  ICL prompt. ``effect = patched - dummy`` target log-prob: positive when the head alone carries the task
  information (read from the demonstrations) into the query.

:func:`attention_to_answers` adds, per head, the attention mass of the query on the answer positions (eager
attention) — heads with a large patch effect *and* attention on the answers are the ones that move the local
vectors' information to the query.

Example::

    table = head_effects(lm, icl_prompts, dummy_prompts, mode="patch")
    summary = summarize(table, attention_to_answers(lm, icl_prompts))
    plot_heads(summary, "out/heads", value="patch_effect")
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from taskvec.batching import LAST_LOGITS, left_pad
from taskvec.errors import AlignmentError, ConfigError, EmptyInputError, LayerError, PositionError, RangeError
from taskvec.hooks import Hooks, HookSites
from taskvec.intervene import Edits, hooked
from taskvec.scoring import read_ids, read_logprobs, score, targets_of

Mode = Literal["mean", "patch"]


def head_geometry(lm) -> tuple[list[nn.Module], int, int]:
    """``(out_projections, n_heads, head_dim)`` of ``lm`` (see :meth:`taskvec.hooks.HookSites.head_geometry`)."""
    return HookSites.of(lm).head_geometry()


def _head_hooks(lm, record: bool = False, rows: torch.Tensor | None = None, layers: torch.Tensor | None = None,
                heads: torch.Tensor | None = None, values: torch.Tensor | None = None) -> Hooks:
    """Functions on the ``heads.{l}`` sites: record every head's output at the last column (into the returned
    manager's ``recorded``: ``{layer: [B, H, hd]}``) and/or replace head ``heads[e]`` of layer ``layers[e]`` in
    batch row ``rows[e]`` at the last column by ``values[e]`` (``[E, hd]``)."""
    hooks = Hooks(lm)
    plan: dict[int, tuple] = {}
    if rows is not None and len(rows):
        for layer in torch.unique(layers).tolist():
            sel = (layers == layer).nonzero().squeeze(-1)
            plan[layer] = (rows[sel], heads[sel], values[sel])

    def at(index: int):
        def fn(z: torch.Tensor) -> torch.Tensor | None:  # [B, T, H, hd]
            if record:
                hooks.recorded[index] = z[:, -1].detach().float().cpu()
            if index not in plan:
                return None
            r, h, v = plan[index]
            z = z.clone()
            z[r.to(z.device), -1, h.to(z.device)] = v.to(device=z.device, dtype=z.dtype)
            return z
        return fn

    for i in (range(lm.n_layers) if record else sorted(plan)):
        hooks.add(f"heads.{i}", at(i))
    return hooks


@torch.no_grad()
def record_head_outputs(lm, prompts: Sequence, batch_size: int = 8) -> torch.Tensor:
    """Every head's output at each prompt's query (last) position.

    Returns:
        ``[n_prompts, n_layers, n_heads, head_dim]`` float tensor.
    """
    if len(prompts) == 0:
        raise EmptyInputError("no prompts to record head outputs from")
    projs, H, hd = head_geometry(lm)
    out = torch.empty(len(prompts), len(projs), H, hd)
    for start in range(0, len(prompts), batch_size):
        group = prompts[start:start + batch_size]
        batch = left_pad([p.ids for p in group], lm.tokenizer.pad_token_id).to(lm.device)
        with _head_hooks(lm, record=True) as hooks:
            lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)
        out[start:start + len(group)] = torch.stack([hooks.recorded[l] for l in range(len(projs))], 1)
    return out


def _prefix_edits(lm, prompts, group: list[int], batch, layer: int, vectors: torch.Tensor) -> Edits:
    """Writes of ``vectors[p]`` (``[P, n, d]``) into ``h_layer`` at prompt ``p``'s answer positions, as columns of
    the left-padded ``batch`` of ``group`` run without its last token (the query)."""
    rows, cols, vecs = [], [], []
    for j, p in enumerate(group):
        answers = list(prompts[p].answer_positions)
        if answers and max(answers) >= len(prompts[p]) - 1:
            raise PositionError(f"prompt {p}: an answer position {max(answers)} is not before the query")
        rows += [j] * len(answers)
        cols += [int(batch.offsets[j]) + a for a in answers]
        vecs.append(vectors[p][:len(answers)])
    edits = Edits.at(rows, [layer] * len(rows), cols, torch.cat(vecs))
    edits.validate(lm.n_layers, lm.d_model, batch.input_ids.shape[0], batch.input_ids.shape[1] - 1)
    return edits


@torch.no_grad()
def _run_head_variants(lm, prompts, values: torch.Tensor, layers: list[int], max_rows: int,
                       heads: list[int] | None = None, prefix: tuple[int, torch.Tensor] | None = None) -> pd.DataFrame:
    """For each prompt, one clean row plus one row per (layer in ``layers``, head in ``heads``, default all) with
    that head's query output replaced by ``values[p, l, h]`` (``[P, n_layers, H, hd]``). Prefix KV cache shared by
    a prompt's rows. ``prefix=(layer, vectors [P, n, d])`` writes ``vectors`` into ``h_layer`` at each prompt's
    answer positions while the prefix runs (the local patch the readers analysis ablates heads under)."""
    _, H, _ = head_geometry(lm)
    heads = list(range(H)) if heads is None else list(heads)
    per_prompt = 1 + len(layers) * len(heads)
    group_size = max(1, max_rows // per_prompt)
    grid_l = torch.tensor(layers, dtype=torch.long).repeat_interleave(len(heads))
    grid_h = torch.tensor(heads, dtype=torch.long).repeat(len(layers))
    records = []
    for start in range(0, len(prompts), group_size):
        group = list(range(start, min(len(prompts), start + group_size)))
        batch = left_pad([prompts[p].ids for p in group], lm.tokenizer.pad_token_id).to(lm.device)
        T = batch.input_ids.shape[1]
        row_prompt = torch.arange(len(group)).repeat_interleave(per_prompt)
        cache = None
        if prefix is not None and T < 2:
            raise PositionError("a local patch needs demonstrations before the query (the prompts have one token)")
        if T > 1:
            edits = None
            if prefix is not None:
                edits = _prefix_edits(lm, prompts, group, batch, *prefix)
            with hooked(lm.profile.layers, edits=edits):
                cache = lm.model(input_ids=batch.input_ids[:, :-1], attention_mask=batch.attention_mask[:, :-1],
                                 position_ids=batch.position_ids[:, :-1], use_cache=True,
                                 logits_to_keep=1 if edits is None else LAST_LOGITS).past_key_values
            cache.reorder_cache(row_prompt.to(lm.device))  # works on hybrid (conv/recurrent) caches too
        # rows: for each prompt, [clean, (l0,h0), (l0,h1), ...]
        e_rows, e_layers, e_heads, e_vals = [], [], [], []
        for j, p in enumerate(group):
            base = j * per_prompt + 1
            e_rows.append(torch.arange(base, base + len(grid_l)))
            e_layers.append(grid_l)
            e_heads.append(grid_h)
            e_vals.append(values[p, grid_l, grid_h])
        with _head_hooks(lm, rows=torch.cat(e_rows), layers=torch.cat(e_layers),
                         heads=torch.cat(e_heads), values=torch.cat(e_vals)):
            rp = row_prompt.to(lm.device)
            out = lm.model(input_ids=batch.input_ids[rp, -1:], attention_mask=batch.attention_mask[rp],
                           position_ids=batch.position_ids[rp, -1:], past_key_values=cache,
                           use_cache=cache is not None, logits_to_keep=1)
        rows_of = [group[i] for i in row_prompt.tolist()]
        targets, label_ids = targets_of(prompts, rows_of)
        top1, lp = read_logprobs(out.logits[:, -1], read_ids(targets, label_ids))
        scores = score(top1, lp, targets, label_ids)
        slot = [r % per_prompt for r in range(len(rows_of))]  # 0: the clean row, k: (grid_l, grid_h)[k - 1]
        scores.insert(0, "head", [-1 if k == 0 else int(grid_h[k - 1]) for k in slot])
        scores.insert(0, "layer", [-1 if k == 0 else int(grid_l[k - 1]) for k in slot])
        scores.insert(0, "prompt", rows_of)
        records.append(scores)
    return pd.concat(records, ignore_index=True)


def head_effects(
    lm,
    prompts: Sequence,
    dummies: Sequence | None = None,
    mode: Mode = "mean",
    layers: Sequence[int] | None = None,
    max_rows: int = 256,
    heads: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per-head effect of an intervention on each head's output at the query position.

    Args:
        lm: the model.
        prompts: ICL :class:`~taskvec.prompts.Prompt` objects (the source of head outputs).
        dummies: dummy prompts aligned with ``prompts`` (needed for ``mode="patch"``).
        mode: ``"mean"`` (mean-ablation in the ICL prompts) or ``"patch"`` (ICL head output into the dummy prompt).
        layers: layers whose heads to test (default all).
        max_rows: single-token rows per forward pass (memory bound: rows x vocabulary logits).
        heads: head indices to test in each layer (default all).

    Returns:
        one row per (prompt, layer, head): ``prompt, layer, head, mode, target_logprob, correct[, label_correct],
        baseline_logprob, effect`` with ``effect = clean - ablated`` (mean) or ``patched - dummy`` (patch),
        in target log-probability.
    """
    if len(prompts) == 0:
        raise EmptyInputError("no prompts for head attribution")
    if mode not in ("mean", "patch"):
        raise ConfigError(f"mode must be 'mean' or 'patch', got {mode!r}")
    layers = list(range(lm.n_layers)) if layers is None else [lm.profile.check_layer(int(l)) for l in layers]
    if not layers:
        raise LayerError("no layers to test")
    if heads is not None:
        _, H, _ = head_geometry(lm)
        heads = [int(h) for h in heads]
        if not heads or any(not 0 <= h < H for h in heads):
            bad = next((h for h in heads if not 0 <= h < H), None)
            raise RangeError(f"head {bad} is out of range: this model has heads 0..{H - 1} in each layer"
                             if bad is not None else "no heads to test: give head indices, or none for all")
    source = record_head_outputs(lm, prompts)  # [P, L, H, hd]
    if mode == "mean":
        values = source.mean(0, keepdim=True).expand_as(source)
        run_on = list(prompts)
    else:
        if dummies is None:
            raise ConfigError("mode='patch' needs dummy prompts aligned with the ICL prompts")
        if len(dummies) != len(prompts) or any(len(d.ids) != len(p.ids) or d.target_id != p.target_id
                                               for d, p in zip(dummies, prompts)):
            raise AlignmentError("dummy prompts must match the ICL prompts one to one (same length and target)")
        values, run_on = source, list(dummies)
    table = _run_head_variants(lm, run_on, values, layers, max_rows, heads)
    clean = table[table.layer == -1].set_index("prompt")
    heads = table[table.layer >= 0].copy()
    heads["baseline_logprob"] = heads.prompt.map(clean.target_logprob)
    sign = 1.0 if mode == "patch" else -1.0
    heads["effect"] = sign * (heads.target_logprob - heads.baseline_logprob)
    heads.insert(3, "mode", mode)
    baseline = clean.reset_index().assign(mode=mode)
    heads.attrs["baseline"] = baseline
    return heads.reset_index(drop=True)


@torch.no_grad()
def attention_to_answers(lm, prompts: Sequence, batch_size: int = 4) -> pd.DataFrame:
    """Attention mass of the query position on the answer positions, per (layer, head), mean over prompts.

    Runs with eager attention (switched on and back, see :func:`taskvec.analysis.saliency.eager_attention`).

    Returns:
        columns ``layer, head, attn_to_answers, attn_uniform`` (the mass a uniform attention would give them).
    """
    from taskvec.analysis.saliency import EagerAttentionError, eager_attention

    if len(prompts) == 0:
        raise EmptyInputError("no prompts")
    mass, uniform = None, []
    with eager_attention(lm.model):
        for start in range(0, len(prompts), batch_size):
            group = prompts[start:start + batch_size]
            batch = left_pad([p.ids for p in group], lm.tokenizer.pad_token_id).to(lm.device)
            out = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, use_cache=False, output_attentions=True,
                           logits_to_keep=1)
            if not out.attentions or any(a is None for a in out.attentions):
                raise EagerAttentionError("the model returned no attention probabilities in eager mode")
            A = torch.stack([a[:, :, -1].float().cpu() for a in out.attentions], 1)  # [B, L, H, T]
            for b, p in enumerate(group):
                cols = torch.tensor(p.answer_positions) + int(batch.offsets[b])
                m = A[b][..., cols].sum(-1)  # [L, H]
                mass = m if mass is None else mass + m
                uniform.append(len(p.answer_positions) / len(p.ids))
    mass = (mass / len(prompts)).numpy()
    L, H = mass.shape
    return pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                         "attn_to_answers": mass.reshape(-1), "attn_uniform": float(np.mean(uniform))})


def summarize(*tables: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, head) table joining head-effect tables (mean ``effect`` as ``<mode>_effect``, with ``<mode>_ci``
    the 95% half-interval over prompts) and :func:`attention_to_answers`."""
    out = None
    for t in tables:
        if "effect" in t:
            mode = t["mode"].iloc[0]
            g = t.groupby(["layer", "head"])["effect"]
            part = pd.DataFrame({f"{mode}_effect": g.mean(), f"{mode}_ci": 1.96 * g.sem().fillna(0.0)}).reset_index()
        else:
            part = t
        out = part if out is None else out.merge(part, on=["layer", "head"], how="outer")
    return out


def top_heads(summary: pd.DataFrame, n: int = 10, by: str = "patch_effect") -> pd.DataFrame:
    """The ``n`` heads with the largest ``by`` (default: patch effect, ICL -> dummy at the query)."""
    if by not in summary:
        raise ConfigError(f"no column {by!r} in the head summary; have {list(summary.columns)}")
    return summary.sort_values(by, ascending=False).head(n).reset_index(drop=True)


def plot_heads(summary: pd.DataFrame, path: str | Path, value: str = "patch_effect", title: str | None = None) -> list[Path]:
    """Heat map layer x head of ``summary[value]`` to ``path.png`` and ``path.svg``."""
    from matplotlib.figure import Figure  # a bare Figure: the caller's matplotlib backend is left alone

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = summary.pivot(index="layer", columns="head", values=value).sort_index()
    data = np.nan_to_num(grid.to_numpy(dtype=float))
    vmax = float(np.abs(data).max()) or 1.0
    fig = Figure(figsize=(1.2 + 0.45 * data.shape[1], 1.0 + 0.22 * data.shape[0]))
    ax = fig.add_subplot()
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower")
    ax.set(xlabel="head", ylabel="layer", title=title or value.replace("_", " "))
    ax.set_xticks(range(data.shape[1]))
    ax.set_yticks(range(data.shape[0]), [str(int(l)) for l in grid.index])
    fig.colorbar(im, ax=ax, label=value)
    fig.tight_layout()
    from taskvec.figures import save_figure

    return save_figure(fig, path)
