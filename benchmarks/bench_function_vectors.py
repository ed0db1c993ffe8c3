"""The causal-indirect-effect scan of function vectors: ours (each prompt's prefix once, its KV cache serving one
single-token row per head, many heads per forward) against the loop of the original code (one full forward per
(prompt, layer, head), the head's last-token output replaced by a hook; made as strong as plain HF allows: no cache,
only the last position's logits), in one process, with equal numbers checked.

    python benchmarks/bench_function_vectors.py --model smollm2-135m --n-prompts 4 --json benchmarks/bench_fv-smollm2-135m.json

The arithmetic bound is the least work the scan must do, in layer-tokens (one token through one decoder layer) and
unembedding rows, priced at this machine's rate for a plain batched forward:

* per prompt, the clean prefix (T - 1 tokens x L layers) once and the clean query row (L layer-tokens);
* per head (l, h), the query token through layers l..L-1 (below l it is the clean row's): H L (L + 1) / 2
  layer-tokens per prompt; and 1 + L H unembedding rows.

Ours runs every row through all L layers (the rows of a batch differ in their layer), so about 2x the bound on the
rows' part is its ceiling. Time only on a quiet machine (no other process using the cores).
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def naive_cie(lm, prompts, means) -> dict:
    """``{(prompt, layer, head): cie}`` by one full forward per (prompt, layer, head) (and one clean forward per
    prompt), the head's last-token slice of the output projection's input replaced through a pre-hook."""
    import torch

    from taskvec.analysis.heads import head_geometry

    projs, H, hd = head_geometry(lm)
    out = {}

    def prob(ids, target, layer=None, head=None):
        handle = None
        if layer is not None:
            def pre(module, args):
                x = args[0].clone()
                x[:, -1, head * hd:(head + 1) * hd] = means[layer, head].to(x.dtype)
                return (x, *args[1:])
            handle = projs[layer].register_forward_pre_hook(pre)
        try:
            with torch.no_grad():
                logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False,
                                  logits_to_keep=1).logits[0, -1]
        finally:
            if handle is not None:
                handle.remove()
        return float(torch.softmax(logits.float(), -1)[target])

    for p, prompt in enumerate(prompts):
        base = prob(prompt.ids, prompt.target_id)
        for layer in range(len(projs)):
            for head in range(H):
                out[(p, layer, head)] = prob(prompt.ids, prompt.target_id, layer, head) - base
    return out


def bound(lm, prompts) -> dict:
    """Layer-tokens and unembedding rows the scan needs at least, priced at a plain batched forward's rate."""
    import torch

    from taskvec.analysis.heads import head_geometry

    _, H, _ = head_geometry(lm)
    L = lm.n_layers
    T = torch.tensor([len(p.ids) for p in prompts], dtype=torch.float64)
    layer_tokens = float(((T - 1) * L + L).sum() + len(prompts) * H * L * (L + 1) / 2)
    rows = len(prompts) * (1 + L * H)
    width = int(T.min())
    batch = torch.tensor([p.ids[:width] for p in prompts], device=lm.device)
    body = lm.model.model if hasattr(lm.model, "model") else lm.model.base_model

    def best(fn, n=3):
        fn()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.no_grad():
        t_fwd = best(lambda: body(input_ids=batch, use_cache=False))
        head = lm.model.get_output_embeddings()
        x = torch.randn(rows, lm.d_model, device=lm.device, dtype=head.weight.dtype)
        t_head = best(lambda: head(x))
    s_per_lt = t_fwd / (batch.numel() * L)
    return {"layer_tokens": layer_tokens, "unembed_rows": rows, "s_per_layer_token": s_per_lt,
            "bound_s": layer_tokens * s_per_lt + t_head,
            "rate_note": f"plain backbone forward {list(batch.shape)} in {t_fwd:.3f} s; lm_head [{rows}, "
                         f"{lm.d_model}] in {t_head:.3f} s"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="antonyms")
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--n-demos", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()

    import torch

    import taskvec
    from taskvec.analysis.function_vectors import indirect_effects, mean_head_outputs, shuffled_label_prompts
    from taskvec.prompts import build_prompts
    from taskvec.tasks import task_for

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = taskvec.load_model(args.model)
    task = task_for(args.task, lm.tokenizer)
    trials = task.sample_trials(args.n_prompts, args.n_demos, seed=0)
    icl = build_prompts(lm, trials)
    shuffled = shuffled_label_prompts(lm, trials, seed=1)
    means = mean_head_outputs(lm, icl)
    indirect_effects(lm, None, shuffled[:1], head_means=means)  # warm-up: the allocator's first large KV cache

    t = time.perf_counter()
    ours = indirect_effects(lm, None, shuffled, head_means=means)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = naive_cie(lm, shuffled, means)
    t_naive = time.perf_counter() - t
    diff = max(abs(r.cie - ref[(int(r.prompt), int(r.layer), int(r.head))]) for r in ours.itertuples())
    b = bound(lm, shuffled)
    result = {"model": args.model, "task": args.task, "n_prompts": args.n_prompts, "n_demos": args.n_demos,
              "tokens_per_prompt": sum(len(p.ids) for p in shuffled) / len(shuffled), "heads": len(ours) // len(shuffled),
              "threads": torch.get_num_threads(), "ours_s": t_ours, "naive_loop_s": t_naive,
              "speedup": t_naive / t_ours, "max_abs_cie_diff": diff, **b, "ours_over_bound": t_ours / b["bound_s"]}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
