"""One process with every core vs one 1-thread process per core, on the study's heaviest sweep.

    .venv/bin/python benchmarks/bench_ranks.py                          # gemma3-270m, country_capital
    .venv/bin/python benchmarks/bench_ranks.py --json benchmarks/bench_ranks.json

Why: ``make demo`` deals the study's tasks over one torchrun rank per core (docs/distributed.md). That pays only
if N one-thread processes do more work per second than one N-thread process. The sweep timed is the local
selection sweep of the default study (the 12 selection dummy prompts of ``country_capital``, the local vectors at
every layer, two vectors): the same variants, prompts and batches in every run.

* ``threads``: this process, ``torch.set_num_threads(cores)``, the sweep once (after an untimed warm-up layer);
* ``ranks``: ``cores`` child processes started together, each with one thread, each running the same sweep; wall
  time from the start of the first to the end of the last.

Reports seconds, the arithmetic (GFLOP of the matrix products of the linear layers; attention scores are left out)
and the throughput ratio ``ranks / threads`` = (cores x work / wall of ranks) / (work / threads' time). Time it on a
quiet machine only: with more runnable processes than cores both figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sweep_setup(model: str, task: str):
    """The model, the selection dummy prompts and the vectors of the local selection sweep."""
    import torch

    import taskvec as tv
    from taskvec.study import StudyConfig, TaskRun

    lm = tv.load_model(model)
    tr = TaskRun(task, StudyConfig(model=model, tasks=[task]), lm)
    icl, dummy = tr.dummy_select
    from taskvec.vectors import read_role_states

    local = read_role_states(lm, icl)["answers"]  # [P, L, n, d]
    return lm, tr, dummy, {"local": local, "local_again": local.clone() + 1e-3 * torch.randn_like(local)}


def run_sweep(lm, tr, dummy, vectors, layers) -> float:
    from taskvec.task_run import layer_rows

    start = time.perf_counter()
    layer_rows(tr, dummy, vectors, "answers", {k: layers for k in vectors}, "single", "local", "select")
    return time.perf_counter() - start


def gflop(lm, dummy, n_vectors: int) -> float:
    """GFLOP of the linear layers' matrix products of the sweep: every variant re-runs its prompt from the first
    answer on, from its layer up."""
    cfg = getattr(lm.model.config, "text_config", None) or lm.model.config
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    h, inter = cfg.hidden_size, cfg.intermediate_size
    macs = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h + 3 * h * inter
    L = lm.n_layers
    token_layers = sum((len(p) - p.answer_positions[0]) * (L - l) for p in dummy for l in range(L)) * n_vectors
    return 2 * macs * token_layers / 1e9


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    lm, tr, dummy, vectors = sweep_setup(args.model, args.task)
    run_sweep(lm, tr, dummy, vectors, [lm.n_layers - 1])  # warm-up
    print("READY", flush=True)
    sys.stdin.readline()  # every child starts together
    print(json.dumps({"seconds": run_sweep(lm, tr, dummy, vectors, list(range(lm.n_layers)))}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--task", default="country_capital")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import torch

    torch.set_num_threads(args.cores)
    lm, tr, dummy, vectors = sweep_setup(args.model, args.task)
    run_sweep(lm, tr, dummy, vectors, [lm.n_layers - 1])
    threads = run_sweep(lm, tr, dummy, vectors, list(range(lm.n_layers)))
    work = gflop(lm, dummy, len(vectors))
    del lm
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--task", args.task]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    kids = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            for _ in range(args.cores)]
    for k in kids:
        while k.stdout.readline().strip() != "READY":
            pass
    start = time.perf_counter()
    for k in kids:
        k.stdin.write("go\n")
        k.stdin.flush()
    each = [json.loads(k.stdout.readline())["seconds"] for k in kids]
    wall = time.perf_counter() - start
    for k in kids:
        k.wait()
    out = {"model": args.model, "task": args.task, "cores": args.cores, "gflop_per_sweep": round(work, 1),
           "threads_seconds": round(threads, 2), "ranks_wall_seconds": round(wall, 2),
           "ranks_each_seconds": [round(s, 2) for s in each],
           "threads_gflops": round(work / threads, 1), "ranks_gflops": round(args.cores * work / wall, 1),
           "ranks_over_threads": round(args.cores * threads / wall, 3),
           "load_average": os.getloadavg()}
    print(f"| setting | seconds | GFLOP/s |\n|---|---|---|\n"
          f"| 1 process x {args.cores} threads | {threads:.1f} | {out['threads_gflops']} |\n"
          f"| {args.cores} processes x 1 thread (each the same sweep) | {wall:.1f} | {out['ranks_gflops']} |\n"
          f"ranks / threads throughput: {out['ranks_over_threads']}x ({work:.0f} GFLOP per sweep; "
          f"load average {out['load_average'][0]:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
