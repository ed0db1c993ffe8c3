"""Benchmarks of from-scratch training and evaluation (issue 5).

1. Training throughput (sequences/s) of an ICL-only step vs an ICL+TVP step on the same model, same process
   (target: TVP step ≤ 1.5× the ICL step): all slots with one query each, all slots sharing one packed
   query per sequence (``tvp_shared_query``), and a subsample of ``--tvp-slots`` slots.
2. Evaluation of every layer (ICL, TVP(l) for all l + baselines) for ``--prompts`` prompts.

    python benchmarks/bench_scratch.py --preset cpu-small --steps 5 --prompts 1000
"""
from __future__ import annotations

import argparse
import time

import torch

from taskvec.scratch.evaluate import EvalConfig, evaluate_model
from taskvec.scratch.model import build_model
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
    model = build_model(args.preset, d_in=task.d_in, n_positions=3 * (2 * args.k_max + 2))
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
    ecfg = EvalConfig(n_prompts=args.prompts, k=args.k, analyses=["layers"])
    t = time.perf_counter()
    evaluate_model(model, ecfg, progress=False)
    dt = time.perf_counter() - t
    print(f"eval all {n_layer} layers (ICL curve, 0-shot, TVP + 3 baselines per layer) for {args.prompts} prompts: "
          f"{dt:.2f} s")


if __name__ == "__main__":
    main()
