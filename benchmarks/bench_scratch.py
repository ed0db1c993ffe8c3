"""Benchmarks of from-scratch training and evaluation (issues 5 and "From scratch, with evidence").

1. Training step (forward, backward, Adam) on ``--preset`` with batch ``--batch``: the reference implementation
   (the model's full forward with hooks recording/writing θ, the query-only TVP passes as ``tvp_loss`` /
   ``tvp_loss_shared``, Adam's per-tensor loop) against the training fast path (``Objective(fast=True)``:
   ``ScratchModel.forward(keep=...)`` / ``fast_query_pass``, fused Adam), and the steps in between, for ICL only and
   ICL + TVP (all slots; all slots sharing one packed query, ``tvp_shared_query``; ``--tvp-slots`` slots).
   Every variant has its own copy of the same initial model and its own optimizer; the variants take turns, one
   step each per round (``--rounds`` rounds after a warm-up), so a load change on the shared machine hits all of
   them alike: compare the ratios. Reports the fastest and the median step, and the load average before/after.
   ``--compile`` adds the fast path under ``torch.compile`` (compile time and break-even step count).
   Every group also times its **matrix-product floor**: the float32 matrix products (``mm``, ``addmm``, ``bmm``,
   ``baddbmm``; shapes and strides as recorded) of one fast-path step, forward and backward, replayed alone in the
   same rounds, and each distinct product in a hot loop (the optimistic bound). Any float32 implementation of the
   same maths computes these products, so the run works out how much time the 2x target (half the reference
   median) leaves for everything else (``"<group> (matmul floor)"`` in the JSON).
2. Evaluation of every layer (ICL, TVP(l) for all l + baselines) for ``--prompts`` prompts, batched
   (``layer_sweep``: θ of all layers from one recording pass, all layers × variants in stacked query passes)
   against the naive loop a user would write with forward pre-hooks (per layer: one extraction pass, then one
   patched query pass per vector variant), with agreement of the TVP(l) errors. ``--prompts 0`` skips it.

    python benchmarks/bench_scratch.py --threads 2 --rounds 15 --prompts 0
    python benchmarks/bench_scratch.py --threads 1 --rounds 15 --prompts 0 --compile --json out.json
    python benchmarks/bench_scratch.py --threads 2 --rounds 15 --prompts 0 --bf16   # + the step under bf16 autocast
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_scratch.py --threads 2 --quick --prompts 0   # thread settings
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from taskvec.hooks import hidden_of, with_hidden
from taskvec.scratch.evaluate import _wrong_index, draw_eval_set, layer_sweep
from taskvec.scratch.passes import errors
from taskvec.scratch.layouts import plan, query_plan
from taskvec.scratch.model import build_model, positions_for
from taskvec.scratch.tasks import make_task
from taskvec.scratch.objective import Objective, point_loss
from taskvec.scratch.train import load_config, make_optimizer, sample_batch
from torch.utils._python_dispatch import TorchDispatchMode


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


class NoPruning(Objective):
    """The fast forward with the last layer run at every position (isolates the last-layer saving)."""

    def _icl_fast(self, batch, want_theta):
        model, cfg = self.model, self.cfg
        xs, ys = batch["xs"], batch["ys"]
        pl = plan(cfg.layout, xs.shape[1], query=False)
        record = (cfg.tvp_layer, self._slots(batch, pl)) if want_theta else None
        out = model(model.embed(pl, xs, ys), record=record, kernel=self.kernel)
        hidden, theta = out if record is not None else (out, None)
        return point_loss(model, model.readout(hidden[:, pl.pred]), ys), theta


class OldTVPPass(Objective):
    """The fast ICL pass, but the reference TVP pass (full forward of [x_q, →] with θ written by a hook)."""

    def _tvp_fast(self, batch, theta):
        return self._tvp_reference(batch, theta)


class Variant:
    """One way to run a training step: objective + its own model copy and optimizer."""

    def __init__(self, name: str, cfg, model, objective_cls=Objective, fused: bool = True, kind: str | None = None,
                 bf16: bool = False, **kw):
        self.name, self.cfg, self.kind, self.bf16 = name, cfg, kind, bf16
        self.model = copy.deepcopy(model)
        self.objective = objective_cls(self.model, cfg, **kw)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(params, cfg.lr) if fused else torch.optim.Adam(params, lr=cfg.lr)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def step(self, batch) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss, _, _ = self.objective(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.float().backward()
        self.opt.step()
        return time.perf_counter() - w, time.process_time() - c

    def summary(self) -> dict:
        return {"name": self.name, "min_s": min(self.wall), "median_s": statistics.median(self.wall),
                "cpu_median_s": statistics.median(self.cpu), "steps": len(self.wall)}


MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
           torch.ops.aten.baddbmm.default)


class MatmulRecorder(TorchDispatchMode):
    """Records every matrix product dispatched inside it: ``(op, [(shape, stride) | scalar per arg], kwargs)``."""

    def __init__(self):
        super().__init__()
        self.calls: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMULS:
            self.calls.append((func, [(tuple(a.shape), a.stride()) if torch.is_tensor(a) else a for a in args],
                               dict(kwargs)))
        return func(*args, **kwargs)


def matmul_flops(calls) -> float:
    """Floating-point operations (2 per multiply-add) of recorded matrix products."""
    total = 0.0
    for func, args, _ in calls:
        a, b = (args[0], args[1]) if func in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default) else \
            (args[1], args[2])
        (*batch, m, k), n = a[0], b[0][-1]
        total += 2.0 * m * k * n * (batch[0] if batch else 1)
    return total


def _strided(shape, stride) -> torch.Tensor:
    """A random float32 tensor with this shape and these strides (stride 0 and transposes as recorded)."""
    size = 1 + sum((n - 1) * st for n, st in zip(shape, stride)) if all(shape) else 0
    return torch.randn(max(size, 1)).as_strided(shape, stride)


class MatmulFloor:
    """The matrix products of one step of ``objective`` (forward and backward), replayed alone: a lower bound on
    any float32 implementation of the same maths. Same interface as :class:`Variant` for :func:`run_variants`."""

    def __init__(self, name: str, cfg, objective: Objective, batch, kind: str = "floor"):
        self.name, self.cfg, self.kind = name, cfg, kind
        with MatmulRecorder() as rec:
            loss, _, _ = objective(batch)
            loss.backward()
        objective.model.zero_grad(set_to_none=True)
        self.calls = rec.calls
        self.flops = matmul_flops(self.calls)
        self.replay = [(func, [_strided(*a) if isinstance(a, tuple) else a for a in args], kw)
                       for func, args, kw in self.calls]
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def step(self, batch) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        for func, args, kw in self.replay:
            func(*args, **kw)
        return time.perf_counter() - w, time.process_time() - c

    summary = Variant.summary

    def hot_seconds(self, reps: int = 15) -> float:
        """The same products with each distinct one timed in a hot loop (same operands, median of ``reps``), summed
        over the step: the optimistic floor, at the best speed these shapes reach on this machine."""
        counts: dict = {}
        for (func, args, _), (_, ops, kw) in zip(self.calls, self.replay):
            counts.setdefault((func, tuple(map(str, args))), [0, func, ops, kw])[0] += 1
        total = 0.0
        for n, func, ops, kw in counts.values():
            times = []
            for _ in range(reps + 2):
                t = time.perf_counter()
                func(*ops, **kw)
                times.append(time.perf_counter() - t)
            total += n * statistics.median(times[2:])
        return total


def run_variants(variants: list[Variant], task, batch_size: int, rounds: int, warmup: int = 2) -> None:
    """Warm-up steps, then ``rounds`` rounds of one step per variant (fresh data per round)."""
    for r in range(warmup + rounds):
        for v in variants:
            batch = sample_batch(v.cfg, task, r + 1, 0, batch_size)
            wall, cpu = v.step(batch)
            if r >= warmup:
                v.wall.append(wall)
                v.cpu.append(cpu)


def training_benchmark(args) -> dict:
    base = dict(preset=args.preset, k_max=args.k_max, batch_size=args.batch, steps=10)
    cfg_icl = load_config(**base)
    torch.manual_seed(0)
    task = make_task(cfg_icl.task)
    model = build_model(args.preset, d_in=task.d_in, n_positions=positions_for(args.k_max))
    l_star = model.n_layers // 2
    tvp = lambda **kw: load_config(**base, tvp_layer=l_star, **kw)  # noqa: E731
    groups = {
        "ICL only": (cfg_icl, [
            ("reference (full forward + hooks, Adam loop)", dict(fast=False, fused=False, kind="reference")),
            ("own block loop, every position of the last layer", dict(objective_cls=NoPruning, fused=False)),
            ("+ last layer only at the prediction slots", dict(fused=False)),
            ("+ fused Adam  = fast path", dict(kind="fast")),
            ("fast path, eager attention kernel", dict(kernel="eager")),
        ]),
        f"ICL+TVP, all {args.k_max - 1} slots": (tvp(), [
            ("reference", dict(fast=False, fused=False, kind="reference")),
            ("fast ICL pass, reference TVP pass", dict(objective_cls=OldTVPPass, fused=False)),
            ("+ fast query pass (x_q alone below l*, arrows only at the top)", dict(fused=False)),
            ("+ fused Adam  = fast path", dict(kind="fast")),
        ]),
        "ICL+TVP, shared query": (tvp(tvp_shared_query=True), [
            ("reference", dict(fast=False, fused=False, kind="reference")),
            ("fast path", dict(kind="fast")),
        ]),
        f"ICL+TVP, {args.tvp_slots} slots": (tvp(tvp_slots=args.tvp_slots), [
            ("reference", dict(fast=False, fused=False, kind="reference")),
            ("fast path", dict(kind="fast")),
        ]),
    }
    if args.quick:  # thread-setting runs: the two ends of the ICL ladder only
        groups = {"ICL only": (cfg_icl, [groups["ICL only"][1][0], groups["ICL only"][1][3]])}
    if args.bf16:  # other arithmetic (AMX bf16 matrix products), shown for comparison, never the default
        groups["ICL only"][1].append(("fast path under bf16 autocast (other arithmetic)", dict(bf16=True)))
    variants, where = [], {}
    for group, (cfg, specs) in groups.items():
        for name, kw in specs:
            variants.append(Variant(name, cfg, model, **kw))
            where.setdefault(group, []).append(variants[-1])
    for group, vs in where.items():  # each group's matrix-product floor, from its fast path
        fast = next(v for v in vs if v.kind == "fast")
        floor = MatmulFloor("matrix products of the fast path alone (floor)", fast.cfg, fast.objective,
                            sample_batch(fast.cfg, task, 1, 0, args.batch))
        variants.append(floor)
        vs.append(floor)
    if args.compile:
        for group in [g for g in ("ICL only", f"ICL+TVP, all {args.k_max - 1} slots") if g in groups]:
            cfg = groups[group][0]
            v = Variant("fast path + torch.compile", cfg, model, compile=True, kind="compiled")
            t = time.perf_counter()
            v.step(sample_batch(cfg, task, 1, 0, args.batch))  # compiles forward and backward
            v.compile_s = time.perf_counter() - t
            variants.append(v)
            where[group].append(v)
    before = loadavg()
    t0 = time.perf_counter()
    run_variants(variants, task, args.batch, args.rounds)
    out = {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "loadavg_before": before, "loadavg_after": loadavg(),
           "seconds": round(time.perf_counter() - t0, 1), "groups": {}}
    icl = {v.kind: v.summary()["median_s"] for v in where["ICL only"] if v.kind}
    policy = f", OMP_WAIT_POLICY={out['omp_wait_policy']}" if out["omp_wait_policy"] else ""
    print(f"\ntraining step, {args.preset}, batch {args.batch}, k_max {args.k_max}, {torch.get_num_threads()} "
          f"thread(s){policy}, {args.rounds} interleaved rounds; load average {before} -> {out['loadavg_after']}")
    print(f"{'variant':66s} {'min s':>7s} {'med s':>7s} {'cpu s':>7s} {'vs ref':>7s} {'vs ICL':>7s}")
    for group, vs in where.items():
        print(f"-- {group}")
        ref = vs[0].summary()
        rows = []
        for v in vs:
            sm = v.summary()
            sm["speedup_vs_reference"] = ref["median_s"] / sm["median_s"]
            sm["ratio_to_icl"] = sm["median_s"] / icl[v.kind] if v.kind in icl else None
            if hasattr(v, "compile_s"):
                sm["compile_s"] = v.compile_s
                fast = next(u for u in vs if u.kind == "fast").summary()["median_s"]
                gain = fast - sm["median_s"]
                sm["break_even_steps"] = v.compile_s / gain if gain > 0 else None
            if isinstance(v, MatmulFloor):
                sm["gflop"] = v.flops / 1e9
                sm["gflop_per_s"] = v.flops / 1e9 / sm["median_s"]
            rows.append(sm)
            extra = ""
            if "compile_s" in sm:
                extra = f"  compile {sm['compile_s']:.0f} s, " + (
                    f"pays after {sm['break_even_steps']:.0f} steps" if sm["break_even_steps"] else "never pays")
            print(f"  {v.name:64s} {sm['min_s']:7.3f} {sm['median_s']:7.3f} {sm['cpu_median_s']:7.3f} "
                  f"{sm['speedup_vs_reference']:6.2f}x " + (f"{sm['ratio_to_icl']:6.2f}x" if sm["ratio_to_icl"] else
                                                              "       ") + extra)
        out["groups"][group] = rows
        floor = next(r for r, v in zip(rows, vs) if isinstance(v, MatmulFloor))
        fast = next(r for r, v in zip(rows, vs) if v.kind == "fast")
        target = ref["median_s"] / 2
        hot = next(v for v in vs if isinstance(v, MatmulFloor)).hot_seconds()
        rest = fast["median_s"] - floor["median_s"]
        out["groups"][group + " (matmul floor)"] = {
            "target_2x_s": target, "floor_s": floor["median_s"], "hot_floor_s": hot, "gflop": floor["gflop"],
            "gflop_per_s": floor["gflop_per_s"], "hot_gflop_per_s": floor["gflop"] / hot,
            "fast_path_rest_s": rest, "left_for_the_rest_s": target - floor["median_s"],
            "left_for_the_rest_at_hot_speed_s": target - hot}
        print(f"  2x target: <= {target:.3f} s per step. The fast path's matrix products ({floor['gflop']:.1f} GFLOP) "
              f"take {floor['median_s']:.3f} s replayed alone ({floor['gflop_per_s']:.0f} GFLOP/s), {hot:.3f} s at "
              f"hot-loop speed ({floor['gflop'] / hot:.0f} GFLOP/s); everything else (attention, GELU, norms, "
              f"Adam, overhead) takes {rest:.3f} s now and would have to fit in "
              f"{max(target - floor['median_s'], 0):.3f} s ({max(target - hot, 0):.3f} s at hot-loop speed)"
              + (": not reachable in float32 with the same maths." if target <= floor["median_s"] else "."))
    print("min/med: fastest/median wall seconds per step; cpu: median process CPU seconds; vs ref: the group's "
          "reference median / this median (speed-up); vs ICL: this median / the ICL-only median of the same "
          "implementation")
    return out


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
    ap.add_argument("--rounds", type=int, default=10, help="measured steps per variant (interleaved)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--tvp-slots", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    ap.add_argument("--bf16", action="store_true", help="also time the fast ICL step under CPU bf16 autocast")
    ap.add_argument("--quick", action="store_true", help="ICL reference and fast path only (thread settings)")
    ap.add_argument("--prompts", type=int, default=1000, help="evaluation benchmark prompts (0: skip it)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {"torch": torch.__version__, "args": vars(args), "training": training_benchmark(args)}
    if args.prompts > 0:
        results["evaluation"] = evaluation_benchmark(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def evaluation_benchmark(args) -> dict:
    cfg = load_config(preset=args.preset, k_max=args.k_max)
    torch.manual_seed(0)
    task = make_task(cfg.task)
    model = build_model(args.preset, d_in=task.d_in, n_positions=positions_for(args.k_max)).eval()
    n_layer = model.n_layers
    seed = 12345
    before = loadavg()
    t = time.perf_counter()
    batched = layer_sweep(model, task, "x→y", args.k, args.prompts, torch.Generator().manual_seed(seed))
    dt = time.perf_counter() - t
    t = time.perf_counter()
    naive = naive_layer_sweep(model, task, args.k, args.prompts, seed)
    dn = time.perf_counter() - t
    gap = max(abs(a - b) for a, b in zip(batched["tvp"], naive))
    print(f"\neval all {n_layer} layers (ICL curve, 0-shot, TVP + 3 baselines per layer) for {args.prompts} prompts: "
          f"{dt:.2f} s batched; naive per-layer loop with hooks: {dn:.2f} s, ratio {dn / dt:.1f}x; "
          f"max |TVP(l) batched - naive| = {gap:.2e}; load average {before} -> {loadavg()}")
    return {"batched_s": dt, "naive_s": dn, "max_gap": gap}


if __name__ == "__main__":
    main()
