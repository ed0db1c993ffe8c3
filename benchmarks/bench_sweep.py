"""Layer-sweep speed: ours vs the naive loop vs the prefix-cached last-token method, in one process, same prompts.

    .venv/bin/python benchmarks/bench_sweep.py                      # gemma3-270m, 50 prompts x every layer
    .venv/bin/python benchmarks/bench_sweep.py --model smollm2-135m --n-prompts 10

Measures (all on the same prompts, results checked equal):

1. global-vector sweep: the task's global vector patched at the query of 50 zero-shot prompts, at every layer
   - naive: one full forward per (prompt, layer) with a hook, full logits (as the function-vector code does)
   - prefix-cached: per prompt the KV cache of all but the last token once, then only the last token re-run per
     layer with the hook (as Hendel et al.'s code does)
   - ours: :func:`taskvec.sweep.patch_layers` (shared prefix cache, variants stacked in batches, one logit row)
2. local-vector sweep: each ICL prompt's local vectors patched at every answer position of its dummy prompt, every
   layer (the prefix-cached method does not apply: the writes are spread over the prompt)
3. capture: all layers' states at every answer position and the query of the ICL prompts vs a plain forward of the
   same batches.

Prints a markdown table of seconds and ratios; ``--json PATH`` also writes them.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import taskvec  # noqa: E402
from taskvec.batching import chunks, left_pad  # noqa: E402
from taskvec.intervene import Edits, hooked  # noqa: E402
from taskvec.prompts import Template, build_prompts, dummy_trials, zero_shot  # noqa: E402
from taskvec.scoring import read_ids  # noqa: E402
from taskvec.sweep import layer_variants, patch_layers, run_variants, run_variants_naive  # noqa: E402
from taskvec.tasks import task_for  # noqa: E402
from taskvec.vectors import read_icl_states  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


@torch.no_grad()
def prefix_cached_sweep(lm, prompts, vectors: torch.Tensor, layers) -> torch.Tensor:
    """Hendel et al.'s way: per prompt, cache all but the last token once; per layer re-run the last token with
    ``h_l`` replaced. Returns ``[P * len(layers)]`` log-probs of the targets (prompt-major)."""
    out = []
    for p in prompts:
        ids = torch.tensor([p.ids])
        prefix = lm.model(input_ids=ids[:, :-1], use_cache=True)
        cache, n = prefix.past_key_values, ids.shape[1] - 1
        for layer in layers:
            edits = Edits.at([0], [layer], [0], vectors[layer][None])
            with hooked(lm.profile.layers, edits=edits):  # a copy: the forward appends to the cache
                logits = lm.model(input_ids=ids[:, -1:], past_key_values=copy.deepcopy(cache), use_cache=True,
                                  position_ids=torch.tensor([[n]])).logits[:, -1]
            out.append(torch.log_softmax(logits.float(), -1)[0, p.target_id])
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--task", default="country_capital")
    ap.add_argument("--n-prompts", type=int, default=50)
    ap.add_argument("--n-demos", type=int, default=None)
    ap.add_argument("--skip-naive-local", action="store_true", help="skip the slowest baseline")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    lm = taskvec.load_model(args.model)
    task = task_for(args.task, lm.tokenizer)
    trials = task.sample_trials(args.n_prompts, args.n_demos, seed=0)
    template = Template()
    icl = build_prompts(lm, trials, template)
    zs = build_prompts(lm, zero_shot(trials), template)
    dummy = build_prompts(lm, dummy_trials(trials, [task.answer_pool(t) for t in trials], 0, lm.tokenizer), template)
    keep = [i for i in range(len(icl)) if dummy[i].answer_positions == icl[i].answer_positions
            and len(dummy[i]) == len(icl[i])]
    g, local = read_icl_states(lm, icl)
    layers = list(range(lm.n_layers))
    gvec = g.mean(0)  # [L, d]
    res = {"model": args.model, "task": args.task, "n_prompts": len(icl), "n_layers": lm.n_layers,
                     "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                     "icl_prompt_tokens": sum(map(len, icl)) / len(icl)}

    # 1. global-vector sweep
    variants = layer_variants(len(zs), gvec[:, None], torch.tensor([[p.query_position] for p in zs]), layers)
    targets = torch.tensor([zs[v.prompt].target_id for v in variants])
    read = read_ids(targets, None)
    ours, t_ours = timed(lambda: patch_layers(lm, zs, gvec, "query"))
    cached, t_cached = timed(lambda: prefix_cached_sweep(lm, zs, gvec, layers))
    naive, t_naive = timed(lambda: run_variants_naive(lm, [p.ids for p in zs], variants, read_ids=read))
    diff = max(float((torch.tensor(ours.target_logprob.values) - naive.logprobs[:, 0]).abs().max()),
               float((cached - naive.logprobs[:, 0]).abs().max()))
    res["global"] = dict(naive_s=t_naive, prefix_cached_s=t_cached, ours_s=t_ours, max_abs_diff=diff,
                         speedup_vs_naive=t_naive / t_ours, speedup_vs_prefix_cached=t_cached / t_ours)
    print(f"global sweep: naive {t_naive:.1f}s, prefix-cached {t_cached:.1f}s, ours {t_ours:.1f}s", flush=True)

    # 2. local-vector sweep into dummy prompts
    dk = [dummy[i] for i in keep]
    lv = local[keep]
    pos = torch.tensor([p.answer_positions for p in dk])
    variants = layer_variants(len(dk), lv, pos, layers)
    targets = torch.tensor([dk[v.prompt].target_id for v in variants])
    read = read_ids(targets, None)
    out_ours, t_ours_l = timed(lambda: run_variants(lm, [p.ids for p in dk], variants, read_ids=read))
    res["local"] = dict(ours_s=t_ours_l, n_prompts=len(dk), positions=pos.shape[1])
    if not args.skip_naive_local:
        out_naive, t_naive_l = timed(lambda: run_variants_naive(lm, [p.ids for p in dk], variants, read_ids=read))
        res["local"].update(naive_s=t_naive_l, speedup_vs_naive=t_naive_l / t_ours_l,
                            max_abs_diff=float((out_ours.logprobs - out_naive.logprobs).abs().max()))
    print(f"local sweep: {res['local']}", flush=True)

    # 3. capture of all layers vs a plain forward of the same batches
    def plain(batch_size=16):
        for rng in chunks(len(icl), batch_size):
            b = left_pad([icl[i].ids for i in rng], lm.tokenizer.pad_token_id)
            with torch.no_grad():
                lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                         use_cache=False, logits_to_keep=1)

    def hidden_states(batch_size=16):
        for rng in chunks(len(icl), batch_size):
            b = left_pad([icl[i].ids for i in rng], lm.tokenizer.pad_token_id)
            with torch.no_grad():
                lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                         use_cache=False, output_hidden_states=True)

    plain()  # warm up
    best = lambda fn: min(timed(fn)[1] for _ in range(3))  # noqa: E731
    t_plain, t_hs, t_cap = best(plain), best(hidden_states), best(lambda: read_icl_states(lm, icl))
    res["capture"] = dict(plain_forward_s=t_plain, output_hidden_states_s=t_hs, ours_s=t_cap,
                          ratio_vs_plain=t_cap / t_plain)

    gl, lo, ca = res["global"], res["local"], res["capture"]
    print(f"\n{args.model}, {args.task}, {len(icl)} prompts x {lm.n_layers} layers, {res['threads']} threads\n")
    print("| measurement | naive | prefix-cached | ours | ratio |\n|---|---|---|---|---|")
    print(f"| global-vector sweep (s) | {gl['naive_s']:.1f} | {gl['prefix_cached_s']:.1f} | {gl['ours_s']:.1f} | "
          f"{gl['speedup_vs_naive']:.1f}x vs naive, {gl['speedup_vs_prefix_cached']:.2f}x vs prefix-cached |")
    if "naive_s" in lo:
        print(f"| local-vector sweep (s) | {lo['naive_s']:.1f} | n/a | {lo['ours_s']:.1f} | "
              f"{lo['speedup_vs_naive']:.1f}x vs naive |")
    print(f"| capture all layers (s) | plain forward {ca['plain_forward_s']:.2f} | output_hidden_states "
          f"{ca['output_hidden_states_s']:.2f} | {ca['ours_s']:.2f} | {ca['ratio_vs_plain']:.2f}x a plain forward |")
    print(f"\nmax |ours - naive| in target log-prob: global {gl['max_abs_diff']:.2e}, "
          f"local {lo.get('max_abs_diff', float('nan')):.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
