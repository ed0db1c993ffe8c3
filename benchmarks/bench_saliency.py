"""Time and peak memory of saliency per prompt on gemma3-270m, for several chunk sizes.

Each chunk size runs in a fresh subprocess so that peak RSS (``resource.getrusage(...).ru_maxrss``) is its own;
we report the peak above the RSS right after loading the model (the saliency working set).

    python benchmarks/bench_saliency.py --model gemma3-270m --n-prompts 4 --n-demos 10 --batch-sizes 1,2,4
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(model: str, n_prompts: int, n_demos: int, batch_size: int) -> dict:
    import taskvec
    from taskvec.analysis.saliency import saliency
    from taskvec.prompts import build_prompts
    from taskvec.tasks import get_task

    lm = taskvec.load_model(model)
    prompts = build_prompts(lm, get_task("simple_string").sample_trials(n_prompts, n_demos, seed=0))
    saliency(lm, prompts[:1], batch_size=1)  # warm-up (eager switch, allocator)
    base = _rss_mb()
    t = time.perf_counter()
    saliency(lm, prompts, batch_size=batch_size)
    dt = time.perf_counter() - t
    return {"model": model, "n_prompts": n_prompts, "n_demos": n_demos, "tokens": sum(len(p.ids) for p in prompts) / n_prompts,
            "batch_size": batch_size, "s_per_prompt": dt / n_prompts, "peak_rss_mb": _rss_mb(),
            "peak_above_warm_mb": _rss_mb() - base}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--n-demos", type=int, default=10)
    ap.add_argument("--batch-sizes", default="1,2,4")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.model, args.n_prompts, args.n_demos, args.one)))
        return
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--n-prompts", str(args.n_prompts),
                              "--n-demos", str(args.n_demos), "--one", str(bs)], capture_output=True, text=True)
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip().splitlines()[-1]
        print(line, flush=True)


if __name__ == "__main__":
    main()
