"""Benchmarks of from-scratch training and evaluation (issue 5).

1. Training throughput (sequences/s) of an ICL-only step vs an ICL+TVP step on the same model, same process
   (target: TVP step ≤ 1.5× the ICL step): all slots with one query each, all slots sharing one packed
   query per sequence (``tvp_shared_query``), and a subsample of ``--tvp-slots`` slots.
2. Evaluation of every layer (ICL, TVP(l) for all l + baselines) for ``--prompts`` prompts, batched
   (``layer_sweep``: θ of all layers from one recording pass, all layers × variants in stacked query passes)
   against the naive loop a user would write with forward pre-hooks (per layer: one extraction pass, then one
   patched query pass per vector variant), with agreement of the TVP(l) errors.

    python benchmarks/bench_scratch.py --preset cpu-small --steps 5 --prompts 1000
"""
from __future__ import annotations

import argparse
import time

import torch

from taskvec.hooks import hidden_of, with_hidden
from taskvec.scratch.evaluate import _wrong_index, draw_eval_set, errors, layer_sweep
from taskvec.scratch.layouts import plan, query_plan
from taskvec.scratch.model import build_model, positions_for
from taskvec.scratch.tasks import make_task
from taskvec.scratch.train import Objective, load_config, sample_batch


def time_steps(cfg, model, task, steps: int) -> float:
    """Fastest seconds per optimizer step over ``steps`` steps after one warm-up (min: robust on a shared CPU)."""
    objective = Objective(model, cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    times = []
    for step in range(1, steps + 2):
        batch = sample_batch(cfg, task, step, 0, cfg.batch_size)
        t = time.perf_counter()
        loss, _, _ = objective(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step > 1:
            times.append(time.perf_counter() - t)
    return min(times)


@torch.no_grad()
def naive_layer_sweep(model, task, k: int, n: int, seed: int) -> list[float]:
    """TVP(l) and the random/mean/wrong baselines with plain hooks, one layer at a time; returns TVP(l) errors.

    Draws the same evaluation set as :func:`layer_sweep` with the same seed.
    """
    gen = torch.Generator().manual_seed(seed)
    data = draw_eval_set(task, n, k, gen)
    pl, qp = plan("x→y", k + 1, query=True), query_plan("x→y")
    slot, qslot, qpred = int(pl.require_slot()[-1]), int(qp.require_slot()[0]), int(qp.pred[0])
    emb = model.embed(pl, torch.cat([data["xs"], data["xp"]], dim=1), data["ys"])
    qemb = model.embed(qp, data["xq"], None)
    wrong_idx = _wrong_index(data["id"], gen)
    tvp = []
    model.predict(pl, torch.cat([data["xs"], data["xq"]], dim=1), data["ys"])  # ICL curve
    model(qemb)  # zero-shot pass
    for layer in model.layers:
        store = {}

        def record(mod, args, kwargs):
            store["theta"] = hidden_of(args, kwargs)[:, slot].clone()

        h = layer.register_forward_pre_hook(record, with_kwargs=True)
        model(emb)
        h.remove()
        theta = store["theta"]
        rand = torch.randn(theta.shape, generator=gen)
        rand = rand / rand.norm(dim=-1, keepdim=True) * theta.norm(dim=-1, keepdim=True)
        for name, vec in (("tvp", theta), ("random", rand), ("mean", theta.mean(0, keepdim=True).expand_as(theta)),
                          ("wrong", theta[wrong_idx])):
            def patch(mod, args, kwargs, vec=vec):
                hidden = hidden_of(args, kwargs).clone()
                hidden[:, qslot] = vec
                return with_hidden(args, kwargs, hidden)

            h = layer.register_forward_pre_hook(patch, with_kwargs=True)
            pred = model.readout(model(qemb)[:, qpred])
            h.remove()
            if name == "tvp":
                tvp.append(float(errors(model, task, pred, data["yq"]).mean()))
    return tvp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--k-max", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tvp-slots", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    base = dict(preset=args.preset, k_max=args.k_max, batch_size=args.batch, steps=args.steps)
    cfg_icl = load_config(**base)
    torch.manual_seed(0)
    task = make_task(cfg_icl.task)
    model = build_model(args.preset, d_in=task.d_in, n_positions=positions_for(args.k_max))
    n_layer = model.n_layers
    t_icl = time_steps(cfg_icl, model, task, args.steps)
    print(f"ICL step          : {t_icl:.3f} s  ({args.batch / t_icl:.1f} seq/s)")
    for slots, shared in ((None, False), (None, True), (args.tvp_slots, False)):
        cfg = load_config(**base, tvp_layer=n_layer // 2, tvp_slots=slots, tvp_shared_query=shared)
        t = time_steps(cfg, model, task, args.steps)
        name = ("all slots" if slots is None else f"{slots} slots") + (", shared query" if shared else "")
        print(f"ICL+TVP ({name:23s}): {t:.3f} s  ({args.batch / t:.1f} seq/s)  ratio {t / t_icl:.2f}x "
              f"(target <= 1.5x)")

    model.eval()
    seed = 12345
    t = time.perf_counter()
    batched = layer_sweep(model, task, "x→y", args.k, args.prompts, torch.Generator().manual_seed(seed))
    dt = time.perf_counter() - t
    print(f"eval all {n_layer} layers (ICL curve, 0-shot, TVP + 3 baselines per layer) for {args.prompts} prompts: "
          f"{dt:.2f} s batched")
    t = time.perf_counter()
    naive = naive_layer_sweep(model, task, args.k, args.prompts, seed)
    dn = time.perf_counter() - t
    gap = max(abs(a - b) for a, b in zip(batched["tvp"], naive))
    print(f"                        naive per-layer loop with hooks: {dn:.2f} s  ratio {dn / dt:.1f}x; "
          f"max |TVP(l) batched - naive| = {gap:.2e}")


if __name__ == "__main__":
    main()
