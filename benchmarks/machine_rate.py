"""How fast this machine runs a model today: microseconds per layer-token of a plain batched forward.

Timings taken on different days are only comparable through the machine's rate on each day (a shared VM's speed
moves by 2x and more). This prints the rate of a plain backbone forward (no hooks, no head, no padding; 16 rows of
50 tokens, best of 5) next to the reference rate of the quiet 2026-11-24 measurement (docs/benchmarks.md), so a
wall time can be stated together with how slow the machine was when it was taken::

    .venv/bin/python benchmarks/machine_rate.py --model gemma3-270m
    .venv/bin/python benchmarks/machine_rate.py --model gemma3-270m --json rate.json
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

REFERENCE_US = {"gemma3-270m": 40.0, "smollm2-135m": 24.0}  # quiet 2026-11-24 (bench_peers' bound), 2 threads


def rate(model_name: str, rows: int = 16, tokens: int = 50, repeats: int = 5) -> dict:
    """``{"us_per_layer_token", "reference_us", "slowdown"}`` of a plain ``[rows, tokens]`` backbone forward."""
    import taskvec

    lm = taskvec.load_model(model_name)
    ids = torch.randint(10, 1000, (rows, tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lm.model.model(input_ids=ids, use_cache=False)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            lm.model.model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - t)
    us = min(times) / (rows * tokens * lm.n_layers) * 1e6
    ref = REFERENCE_US.get(model_name)
    return {"model": model_name, "us_per_layer_token": round(us, 2), "reference_us": ref,
            "slowdown": round(us / ref, 2) if ref else None, "threads": torch.get_num_threads(),
            "loadavg": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = rate(args.model)
    print(f"{res['model']}: {res['us_per_layer_token']} us per layer-token "
          f"(quiet 2026-11-24: {res['reference_us']} us; {res['slowdown']}x) at {res['when']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
