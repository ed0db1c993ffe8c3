"""The GPU path, checked in one command: ``make gpu-check`` (CUDA, < 8 min on one H200) or ``make gpu-check
DEVICE=cpu`` (the dry run: every step on tiny sizes, ~30 s on 2 CPU cores; CI runs it, tests/test_gpu_check.py).

Runs as ``PYTHONPATH=src python benchmarks/gpu_check.py --device cuda`` with whatever torch / transformers the
machine has (no network, no ``pip install -e .``), records their versions against requirements.lock and names in
one line what is missing (a step that needs it is skipped, not a traceback). Steps (docs/distributed.md#the-gpu-check):

* ``families``: for a tiny random config of every family of :mod:`taskvec.models.tiny` (tests/test_families.py),
  capture (``read_states`` against ``output_hidden_states``) and every sweep kind (``run_variants`` with and
  without layer skipping, two batch budgets, replace and add, single and from spans) against the naive loop, on
  the device in float32 (equal within 1e-4) and in bfloat16 (within the bf16 tolerances below);
* ``cuda_vs_cpu``: the device's float32 states and sweep log-probs against the CPU's;
* ``device_map``: a tiny Llama checkpoint dispatched by accelerate across the GPU and the CPU (``max_memory``)
  against the undispatched model (on the CPU: CPU and disk, the dry run);
* ``scratch_paper``: the d = 10 vanilla / TVP-loss pair of the ``paper`` preset (configs/scratch_paper.yaml),
  each trained by :func:`taskvec.scratch.train.train` for a fixed wall time in bf16 autocast: steps per second,
  the ICL / TVP errors reached, a layer sweep, and one DDP step (one rank, nccl on CUDA) equal to a plain step;
* ``sweep_throughput``: variants per second of ``run_variants`` against the HF hook loop (``run_variants_naive``)
  on the largest random Llama of a ladder that fits the step's budget.

Writes one JSON object (``--json``, default benchmarks/gpu_check-<device>.json; top-level keys :data:`KEYS`,
every check's record has :data:`RECORD`) and a short text summary (stdout and ``.txt`` beside the JSON).
Exit status 1 if any check fails, 2 for no CUDA device under ``--device cuda``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("environment", "families", "cuda_vs_cpu", "device_map", "scratch_paper", "sweep_throughput", "summary")
CHECKS = KEYS[1:-1]
RECORD = ("ok", "skipped", "max_abs_diff", "tolerance", "seconds")
DDP_TIMEOUT_S = 60
HUNG: list[str] = []  # steps left running in a thread past their time (the process then exits without cleanup)
NEEDS = {  # importable modules each check needs (beyond torch): missing ones skip the check
    "families": ("transformers", "pandas"), "cuda_vs_cpu": ("transformers", "pandas"),
    "device_map": ("transformers", "pandas", "accelerate", "tokenizers"),
    "scratch_paper": ("transformers", "pandas", "pydantic", "yaml"), "sweep_throughput": ("transformers", "pandas"),
}
PACKAGES = ("torch", "transformers", "accelerate", "pydantic", "pandas", "PyYAML", "tokenizers", "numpy", "safetensors")
TOL = {"capture_fp32": 1e-4, "sweep_fp32": 1e-4, "capture_bf16": 0.1, "sweep_bf16": 0.1, "ddp": 1e-5}
"""fp32: states and log-probs equal within 1e-4 (the CPU tests' sweep bound). bf16: the largest state deviation
relative to the largest state of its layer (capture), and the largest log-prob deviation (sweep). On the CPU, bf16
itself moves the tiny families' log-probs by 0.003 (0.06 on gemma4_text) and states by 0.5-4 % against float32,
while the writes move log-probs by ~0.6 (``write_effect``, ``bf16_vs_fp32`` in each family's record)."""
SIZES = {  # per mode: families (None: all), device_map's Llama, scratch preset and seconds per model, the sweep
    # ladder (hidden, layers) and its seconds, and the whole run's budget (the training time shrinks to fit it)
    "cuda": dict(families=None, families_s=200.0, dm=dict(hidden=256, layers=8, vocab=4096), preset="paper",
                 train_s=60.0, eval_n=256, save_every=1000, log_every=50, prompts=32, length=64, naive_max=128,
                 ladder=[(512, 8), (1024, 16), (2048, 16), (2048, 24)], vocab=32000, throughput_s=75.0,
                 scratch_min_s=70.0, budget_s=420.0),
    "cpu": dict(families=("llama", "gemma3", "qwen3_next", "gpt2", "bloom"), families_s=60.0,
                dm=dict(hidden=64, layers=4, vocab=512), preset="tiny", train_s=2.0, eval_n=16, save_every=5,
                log_every=2, prompts=4, length=12, naive_max=8, ladder=[(64, 2), (128, 2)], vocab=512,
                throughput_s=2.0, scratch_min_s=10.0, budget_s=120.0),
}


def record(ok: bool | None, max_abs_diff=None, tolerance=None, seconds: float = 0.0, skipped: str | None = None,
           **extra) -> dict:
    """One check's result: :data:`RECORD` first, then what else it measured."""
    return dict(ok=ok, skipped=skipped, max_abs_diff=max_abs_diff, tolerance=tolerance, seconds=round(seconds, 2),
                **extra)


def worst(values) -> float:
    """The largest value; NaN if any is NaN (a NaN deviation is a failure, never hidden by ``max``)."""
    vals = [float(v) for v in values]
    return float("nan") if any(v != v for v in vals) else max(vals or [0.0])


# ------------------------------------------------------------------------------------------------ environment


def lock_versions() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return {a.lower(): b for a, _, b in (ln.partition("==") for ln in lines if "==" in ln and not ln.startswith("#"))}


def environment(device) -> dict:
    """Python, GPU, package versions against requirements.lock, and what is missing (one line)."""
    import torch

    lock, versions, differ = lock_versions(), {}, []
    for dist in PACKAGES:
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            have = None
        want = lock.get(dist.lower())
        versions[dist] = dict(installed=have, locked=want)
        if have and want and have.split("+")[0] != want:
            differ.append(f"{dist} {have} (lock {want})")
    missing = sorted({m for needs in NEEDS.values() for m in needs if importlib.util.find_spec(m) is None})
    skips = [c for c, needs in NEEDS.items() if set(needs) & set(missing)]
    hint = "; `make gpu-wheels` where pip works, then carry .whl" if "pydantic" in missing else ""
    line = (f"missing: {', '.join(missing)} (skipped: {', '.join(skips)}{hint})" if missing else "missing: nothing") + \
        ("; differs from requirements.lock: " + ", ".join(differ) if differ else "")
    gpu = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = dict(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), nccl=None)
        try:
            gpu["nccl"] = str(torch.cuda.nccl.version())
        except Exception as err:  # recorded, not fatal: the DDP step then says what is wrong
            gpu["nccl"] = one_line(err)
    return record(True, python=platform.python_version(), platform=platform.platform(), device=str(device), gpu=gpu,
                  threads=torch.get_num_threads(), versions=versions, missing=missing, missing_line=line)


# ------------------------------------------------------------------------------------------------ families


def _capture(lm, prompts, relative: bool = False) -> tuple:
    """``(largest |read_states - output_hidden_states|, the states)`` over layers and prompts, relative to the
    layer's largest state when ``relative``; left-padded in two batches against each prompt run alone."""
    import torch

    from taskvec.intervene import read_states

    pos = [[0, 1, len(p) // 2, len(p) - 2, len(p) - 1] for p in prompts]
    states, devs = read_states(lm, prompts, pos, batch_size=3), []
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            hs = lm.model(input_ids=torch.tensor([ids], device=lm.device), output_hidden_states=True).hidden_states
            for layer in range(lm.n_layers):
                want = hs[layer][0, pos[i]].float().cpu()
                dev = (states[i, layer] - want).abs().max()
                devs.append(dev / want.abs().max().clamp_min(1e-6) if relative else dev)
    return worst(devs), states


def _sweeps(lm, prompts) -> dict:
    """Every sweep kind against the naive loop: ``{"dev": worst log-prob deviation, "top1": all top-1 equal,
    "effect": the largest change a write makes to prompt 2's log-probs, "engine" / "naive": log-probs}``."""
    from taskvec.models.tiny import sweep_variants
    from taskvec.sweep import run_variants, run_variants_naive

    variants, read, added = sweep_variants(lm, prompts)
    slow = run_variants_naive(lm, prompts, variants, read_ids=read, return_logits=True)
    ref = slow.logits.log_softmax(-1)
    devs, top1, first = [], True, None
    for kwargs in (dict(), dict(max_batch_tokens=200), dict(skip_layers=False)):
        fast = run_variants(lm, prompts, variants, read_ids=read, return_logits=True, **kwargs)
        first = fast if first is None else first
        devs += [(fast.logits.log_softmax(-1) - ref).abs().max(), (fast.logprobs - slow.logprobs).abs().max()]
        top1 &= bool((fast.top1 == slow.top1).all())
    fast = run_variants(lm, prompts, added, mode="add", return_logits=True)
    slow_add = run_variants_naive(lm, prompts, added, mode="add", return_logits=True)
    devs.append((fast.logits.log_softmax(-1) - slow_add.logits.log_softmax(-1)).abs().max())
    same = [i for i, v in enumerate(variants[:-1]) if v.prompt == variants[-1].prompt]  # the last is clean
    return dict(dev=worst(devs), top1=top1, effect=float((ref[same] - ref[-1:]).abs().max()),
                engine=first.logits.log_softmax(-1), naive=ref)


def check_family(family: str, device) -> tuple[dict, dict]:
    """``(families record, cuda_vs_cpu record)`` of one family: the CPU float32 reference, the device in float32,
    and the device in bf16 (built in bf16 as ``load_model(dtype="bfloat16")`` does, the float32 weights rounded)."""
    import torch

    from taskvec.models import LM, profile_of
    from taskvec.models.tiny import build_tiny, tiny_prompts

    t0, prompts = time.perf_counter(), tiny_prompts()
    lm = build_tiny(family)
    cpu_states, cpu = _capture(lm, prompts)[1], _sweeps(lm, prompts)
    lm.model.to(device)
    lm = LM(lm.model, lm.tokenizer, profile_of(lm.model), lm.name, {})  # the probes run again on the device
    dev, states = _capture(lm, prompts)
    fp32 = dict(capture=dev, **_sweeps(lm, prompts))
    vs_cpu = dict(states=float((states - cpu_states).abs().max()),
                  logprobs=float((fp32["engine"] - cpu["engine"]).abs().max()))
    half = build_tiny(family, dtype=torch.bfloat16)
    half.model.load_state_dict(lm.model.state_dict())  # the same weights, rounded to bf16
    half.model.to(device)
    half = LM(half.model, half.tokenizer, profile_of(half.model), half.name, {})
    bf16 = dict(capture=_capture(half, prompts, relative=True)[0], **_sweeps(half, prompts))
    devs = dict(capture_fp32=fp32["capture"], sweep_fp32=fp32["dev"], capture_bf16=bf16["capture"],
                sweep_bf16=bf16["dev"])
    ok = all(devs[k] <= TOL[k] for k in devs) and fp32["top1"] and fp32["effect"] > 1e-3
    seconds = time.perf_counter() - t0
    return (record(ok, devs, {k: TOL[k] for k in devs}, seconds, fp32_top1_equal=fp32["top1"],
                   bf16_top1_equal=bf16["top1"], write_effect=fp32["effect"],
                   bf16_vs_fp32=float((bf16["naive"].float() - fp32["naive"].float()).abs().max())),
            record(max(vs_cpu.values()) <= TOL["sweep_fp32"], max(vs_cpu.values()), TOL["sweep_fp32"], seconds,
                   **vs_cpu))


def check_families(device, sizes: dict) -> tuple[dict, dict]:
    """Every family (or the dry run's subset): per-family records and their worst deviations."""
    from taskvec.models.tiny import FAMILIES, FamilyUnavailable

    t0, fam, cmp = time.perf_counter(), {}, {}
    for family in sizes["families"] or FAMILIES:
        if time.perf_counter() - t0 > sizes["families_s"]:
            fam[family] = cmp[family] = record(None, skipped="past the step's time budget")
            continue
        try:
            fam[family], cmp[family] = check_family(family, device)
        except FamilyUnavailable as err:
            fam[family] = cmp[family] = record(None, skipped=str(err))
        except Exception as err:  # one family's failure is recorded, the others still run
            fam[family] = cmp[family] = record(False, error=one_line(err), traceback=traceback.format_exc())
    ran = [f for f in fam if fam[f]["skipped"] is None]
    devs = {k: worst(fam[f]["max_abs_diff"][k] for f in ran if fam[f]["max_abs_diff"]) for k in
            ("capture_fp32", "sweep_fp32", "capture_bf16", "sweep_bf16")}
    seconds = time.perf_counter() - t0
    ok = bool(ran) and all(fam[f]["ok"] for f in ran)
    return (record(ok, devs, {k: TOL[k] for k in devs}, seconds, checked=len(ran),
                   failed=[f for f in ran if not fam[f]["ok"]], per_family=fam),
            record(bool(ran) and all(cmp[f]["ok"] for f in ran), worst(cmp[f]["max_abs_diff"] or 0 for f in ran),
                   TOL["sweep_fp32"], seconds, reference="cpu float32", per_family=cmp))


# ------------------------------------------------------------------------------------------------ device_map


def tiny_checkpoint(path: Path, hidden: int, layers: int, vocab: int) -> int:
    """A random Llama and a word-level tokenizer (``t0 t1 ...``) saved as a checkpoint; returns its bytes."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    return sum(p.numel() * 4 for p in model.parameters())


def check_device_map(device, sizes: dict) -> dict:
    """The dispatched model's states and sweep against the undispatched model's (float32)."""
    import torch

    from taskvec.intervene import read_states
    from taskvec.models import load_model
    from taskvec.sweep import layer_variants, run_variants, run_variants_naive

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        size = tiny_checkpoint(Path(tmp) / "ckpt", **sizes["dm"])
        plain = load_model(str(Path(tmp) / "ckpt"), device=str(device), dtype="float32")
        if device.type == "cuda":  # half the weights fit the GPU, the rest waits on the CPU
            budget, offload = {device.index or 0: int(size * 0.5), "cpu": int(size * 4)}, None
        else:  # the dry run: about half on the CPU, the rest streamed from disk
            budget, offload = {"cpu": int(size * 0.6)}, Path(tmp) / "offload"
        split = load_model(str(Path(tmp) / "ckpt"), device=str(device), dtype="float32", max_memory=budget,
                           offload_dir=offload)
        placed = {str(k): sum(v == k for v in split.model.hf_device_map.values())
                  for k in set(split.model.hf_device_map.values())}
        gen = torch.Generator().manual_seed(3)
        prompts = [torch.randint(4, sizes["dm"]["vocab"], (n,), generator=gen).tolist() for n in (9, 12, 7, 11)]
        pos = torch.tensor([[len(p) - 3, len(p) - 1] for p in prompts])
        ref_states = read_states(plain, prompts, pos)
        dev_states = float((read_states(split, prompts, pos) - ref_states).abs().max())
        variants = layer_variants(len(prompts), ref_states.roll(1, 0) * 2, pos, range(plain.n_layers))
        ref = run_variants_naive(plain, prompts, variants, return_logits=True).logits.log_softmax(-1)
        got = run_variants(split, prompts, variants, return_logits=True).logits.log_softmax(-1)
        dev_sweep = float((got - ref).abs().max())
    split_ok = len(placed) >= 2
    ok = split_ok and max(dev_states, dev_sweep) <= TOL["sweep_fp32"]
    return record(ok, max(dev_states, dev_sweep), TOL["sweep_fp32"], time.perf_counter() - t0, placement=placed,
                  states_dev=dev_states, sweep_dev=dev_sweep, budget={str(k): v for k, v in budget.items()},
                  note=None if split_ok else "accelerate did not split the model: adjust the max_memory budget")


# ------------------------------------------------------------------------------------------------ scratch


class _OutOfTime(Exception):
    pass


def train_for(cfg, seconds: float, device, out: Path) -> tuple:
    """Train with :func:`~taskvec.scratch.train.train` until ``seconds`` of wall time have passed (checked after
    every step); returns ``(model, steps, steady steps per second)``."""
    from taskvec.scratch.train import train

    times: list[float] = []
    model_box: list = []

    def on_step(step: int, model) -> None:
        times.append(time.perf_counter())
        if not model_box:
            model_box.append(model)
        if times[-1] - times[0] >= seconds:
            raise _OutOfTime

    try:
        train(cfg, out, device=str(device), progress=False, tensorboard=False, on_step=on_step)
    except _OutOfTime:
        pass
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return model_box[0], len(times), rate


def ddp_dev(trained: list, device) -> float:
    """Two steps of each model's loss wrapped in DDP (a one-rank group: nccl on CUDA, gloo on the CPU) against the
    plain loss: the largest gradient deviation. Runs in a thread given :data:`DDP_TIMEOUT_S`, so a hung nccl costs
    no more."""
    import torch.distributed as dist
    from torch import nn

    from taskvec.scratch.tasks import make_task
    from taskvec.scratch.objective import Objective
    from taskvec.scratch.train import sample_batch

    def steps(model, cfg, wrap: bool) -> list:
        m = copy.deepcopy(model).train()
        objective = nn.parallel.DistributedDataParallel(Objective(m, cfg)) if wrap else Objective(m, cfg)
        for step in (1, 2):
            batch = {k: v.to(device) for k, v in sample_batch(cfg, make_task(cfg.task), step, 0, 8).items()}
            m.zero_grad(set_to_none=True)
            objective(batch)[0].backward()
        return [p.grad for p in m.parameters() if p.requires_grad]

    def compare() -> float:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1,
                                init_method=f"tcp://127.0.0.1:{port}", timeout=datetime.timedelta(seconds=60))
        try:
            return worst((a - b).abs().max() for model, cfg in trained
                         for a, b in zip(steps(model, cfg, False), steps(model, cfg, True)))
        finally:
            dist.destroy_process_group()

    box: dict = {}
    thread = threading.Thread(target=_catch, args=(box, compare), daemon=True)
    thread.start()
    thread.join(DDP_TIMEOUT_S)
    if thread.is_alive():
        HUNG.append("ddp")
        raise TimeoutError(f"the one-rank DDP steps did not finish in {DDP_TIMEOUT_S} s")
    if "error" in box:
        raise box["error"]
    return box["dev"]


def _catch(box: dict, fn: Callable[[], float]) -> None:
    try:
        box["dev"] = fn()
    except Exception as err:
        box["error"] = err


def check_scratch(device, sizes: dict) -> dict:
    """The d = 10 vanilla / TVP-loss pair of the paper preset, each for a fixed wall time in bf16 autocast."""
    import torch

    from taskvec.scratch.evaluate import layer_sweep
    from taskvec.scratch.tasks import make_task
    from taskvec.scratch.train import curriculum_at, load_config

    t0, runs, trained = time.perf_counter(), {}, []
    train_s = min(sizes["train_s"], max(sizes["train_s"] / 4, (sizes["deadline"] - t0 - 30) / 2))
    base = dict(task={"d": 10}, preset=sizes["preset"], precision="bf16", steps=10**7,
                save_every=sizes["save_every"], log_every=sizes["log_every"])
    for name, extra in (("vanilla", {}), ("tvp", {"tvp_weight": 1.0})):
        cfg = load_config(ROOT / "configs" / "scratch_paper.yaml", **base, **extra)
        with tempfile.TemporaryDirectory() as tmp:
            model, steps, rate = train_for(cfg, train_s, device, Path(tmp) / name)
            rows = [json.loads(line) for line in (Path(tmp) / name / "log.jsonl").read_text().splitlines()]
        task, (d_active, k) = make_task(cfg.task), curriculum_at(cfg, steps)
        last = rows[-1] if rows else {}
        model.eval()
        sweep = layer_sweep(model, task, cfg.layout, k - 1, sizes["eval_n"], torch.Generator().manual_seed(0))
        runs[name] = dict(steps=steps, steps_per_s=round(rate, 2), seq_per_s=round(rate * cfg.batch_size, 1),
                          seconds=round(train_s, 1), curriculum=dict(d_active=d_active, k=k),
                          train_icl_err=last.get("icl_err"),
                          train_tvp_err=(last["tvp_loss"] / task.y_var_at(d_active)) if "tvp_loss" in last else None,
                          eval_k=k - 1, eval_icl_err=sweep["icl"], eval_zero_shot=sweep["zero_shot"],
                          eval_tvp_at_lstar=sweep["tvp"][cfg.tvp_layer] if cfg.tvp_layer is not None else None,
                          eval_best_tvp=min(sweep["tvp"]), eval_best_layer=sweep["best_layer"],
                          n_layer=model.n_layers, tvp_layer=cfg.tvp_layer)
        trained.append((model, cfg))
    try:  # a DDP failure keeps the training figures
        ddp, ddp_error = ddp_dev(trained, device), None
    except Exception as err:
        ddp, ddp_error = float("inf"), one_line(err)
    finite = all(r["train_icl_err"] is not None and r["train_icl_err"] == r["train_icl_err"] for r in runs.values())
    ok = finite and all(r["steps"] > 1 for r in runs.values()) and ddp <= TOL["ddp"]
    return record(ok, ddp, TOL["ddp"], time.perf_counter() - t0, preset=sizes["preset"], precision="bf16",
                  ddp_backend="nccl" if device.type == "cuda" else "gloo", ddp_error=ddp_error, runs=runs)


# ------------------------------------------------------------------------------------------------ throughput


def throughput_rung(device, hidden: int, layers: int, sizes: dict) -> dict:
    """Global-vector sweep (every layer, last position) of random prompts on a random Llama of this shape."""
    import torch
    import transformers

    from taskvec.intervene import read_states
    from taskvec.models import LM, profile_of
    from taskvec.models.tiny import NoTokenizer
    from taskvec.sweep import layer_variants, run_variants, run_variants_naive

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config = transformers.LlamaConfig(vocab_size=sizes["vocab"], hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                      num_hidden_layers=layers, num_attention_heads=max(2, hidden // 64),
                                      num_key_value_heads=max(1, hidden // 128), max_position_embeddings=512,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval().requires_grad_(False)
    lm = LM(model, NoTokenizer(), profile_of(model), f"llama-{hidden}x{layers}", {})
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, sizes["vocab"], (sizes["length"],), generator=gen).tolist()
               for _ in range(sizes["prompts"])]
    last = torch.tensor([[len(p) - 1] for p in prompts])
    g = read_states(lm, prompts, last).mean(0) * 4
    variants = layer_variants(len(prompts), g, last, range(lm.n_layers))
    read = torch.randint(0, sizes["vocab"], (len(variants), 2), generator=gen)
    sub = list(range(min(len(variants), sizes["naive_max"])))
    run_variants(lm, prompts, variants[:8], read_ids=read[:8])  # warm-up: kernels, cuBLAS handles, the probes
    run_variants_naive(lm, prompts, variants[:2], read_ids=read[:2])
    sync()
    t = time.perf_counter()
    ours = run_variants(lm, prompts, variants, read_ids=read)
    sync()
    t_ours, t = time.perf_counter() - t, time.perf_counter()
    naive = run_variants_naive(lm, prompts, [variants[i] for i in sub], read_ids=read[sub])
    sync()
    t_naive = time.perf_counter() - t
    dev = float((ours.logprobs[sub] - naive.logprobs).abs().max())
    params = sum(p.numel() for p in model.parameters())
    del model, lm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(shape=f"{hidden}x{layers}", params_m=round(params / 1e6, 1), dtype=str(dtype).replace("torch.", ""),
                prompts=len(prompts), tokens=sizes["length"], variants=len(variants), naive_variants=len(sub),
                ours_s=round(t_ours, 3), naive_s=round(t_naive, 3), ours_per_s=round(len(variants) / t_ours, 1),
                naive_per_s=round(len(sub) / t_naive, 1),
                speedup=round(len(variants) / t_ours / (len(sub) / t_naive), 2), max_abs_diff=dev,
                seconds=round(t_ours + t_naive, 2))


def check_throughput(device, sizes: dict) -> dict:
    """Walk up the ladder while the next rung (about 4x the last) fits the step's budget; report the largest."""
    t0, rungs = time.perf_counter(), []
    for hidden, layers in sizes["ladder"]:
        spent = time.perf_counter() - t0
        budget = min(sizes["throughput_s"], sizes["deadline"] - t0 - sizes["scratch_min_s"])
        if rungs and spent + 4 * rungs[-1]["wall_s"] > budget:
            break
        t = time.perf_counter()
        rungs.append(throughput_rung(device, hidden, layers, sizes))
        rungs[-1]["wall_s"] = round(time.perf_counter() - t, 2)
    top = rungs[-1]
    tol = TOL["sweep_bf16"] if top["dtype"] == "bfloat16" else TOL["sweep_fp32"]
    ok = all(r["max_abs_diff"] <= (TOL["sweep_bf16"] if r["dtype"] == "bfloat16" else TOL["sweep_fp32"])
             for r in rungs)
    return record(ok, worst(r["max_abs_diff"] for r in rungs), tol, time.perf_counter() - t0, largest=top,
                  ladder=rungs, against="run_variants_naive: one HF forward per variant with a hook")


# ------------------------------------------------------------------------------------------------ driver


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def run_step(name: str, fn: Callable[[], dict | tuple], missing: list[str]) -> dict | tuple:
    """Run one check: skipped (naming the missing modules) or recorded; an exception is a failed record."""
    lacking = [m for m in NEEDS[name] if m in missing]
    if lacking:
        return record(None, skipped=f"not installed here: {', '.join(lacking)}")
    t0 = time.perf_counter()
    try:
        return fn()
    except Exception as err:
        return record(False, seconds=time.perf_counter() - t0, error=one_line(err), traceback=traceback.format_exc())


def summarize(report: dict, seconds: float) -> dict:
    checks = {k: report[k] for k in CHECKS}
    return dict(ok=all(r["ok"] is not False for r in checks.values()), seconds=round(seconds, 1),
                device=report["environment"]["device"], passed=[k for k, r in checks.items() if r["ok"]],
                failed=[k for k, r in checks.items() if r["ok"] is False],
                skipped=[k for k, r in checks.items() if r["ok"] is None],
                missing_line=report["environment"]["missing_line"])


WHAT = {"families": "engine vs naive loop, worst |diff| / tolerance", "cuda_vs_cpu": "float32 on the device vs CPU",
        "device_map": "dispatched vs undispatched", "scratch_paper": "DDP step vs plain step (grads)",
        "sweep_throughput": "engine vs hook loop (log-probs)"}


def diffs(dev, tol) -> str:
    if isinstance(dev, dict):
        return ", ".join(f"{k} {dev[k]:.2g}/{tol[k]:.0e}" for k in dev)
    return f"{dev:.2g}/{tol:.0e}" if dev is not None else "n/a"


def text_summary(report: dict) -> str:
    env, s = report["environment"], report["summary"]
    gpu = f"{env['gpu']['name']}, CUDA {env['gpu']['cuda']}" if env["gpu"] else "no GPU (dry run)"
    lines = [f"gpu-check on {env['device']} ({gpu}), torch {env['versions']['torch']['installed']}, transformers "
             f"{env['versions']['transformers']['installed']}, python {env['python']}", env["missing_line"]]
    for name in CHECKS:
        r = report[name]
        state = "SKIP" if r["ok"] is None else "ok  " if r["ok"] else "FAIL"
        detail = r["skipped"] or r.get("error") or f"{WHAT[name]}: {diffs(r['max_abs_diff'], r['tolerance'])}"
        if r.get("ddp_error"):
            detail += f" ({r['ddp_error']})"
        if r.get("placement"):
            detail += f"; modules placed {r['placement']}"
        if name == "families" and not r["skipped"] and not r.get("error"):
            detail += f"; {r['checked']} families" + (f", failed: {', '.join(r['failed'])}" if r["failed"] else "")
        lines.append(f"{state} {name:<17} {r['seconds']:6.1f} s  {detail}")
    if report["scratch_paper"].get("runs"):
        for name, run in report["scratch_paper"]["runs"].items():
            lines.append(f"     scratch {name}: {run['steps']} steps, {run['steps_per_s']} steps/s; ICL err "
                         f"{run['eval_icl_err']:.3f}, zero-shot {run['eval_zero_shot']:.3f}, best TVP "
                         f"{run['eval_best_tvp']:.3f} (k = {run['eval_k']})")
    if report["sweep_throughput"].get("largest"):
        top = report["sweep_throughput"]["largest"]
        lines.append(f"     sweep {top['shape']} ({top['params_m']}M, {top['dtype']}): {top['ours_per_s']} variants/s "
                     f"against {top['naive_per_s']} for the hook loop ({top['speedup']}x)")
    lines.append(f"{'PASS' if s['ok'] else 'FAIL'} in {s['seconds']} s: failed {s['failed'] or 'none'}, "
                 f"skipped {s['skipped'] or 'none'}")
    return "\n".join(lines)


def quiet() -> None:
    """No progress bars or advice from transformers (the kernels it falls back from, checkpoint shards)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the dry run on tiny sizes)")
    ap.add_argument("--json", default=None, help="where the JSON goes (default benchmarks/gpu_check-<device>.json)")
    ap.add_argument("--only", default=None, help="comma-separated checks to run (the others are skipped)")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: torch is not installed for this python; give PYTHON=... a python with torch", file=sys.stderr)
        return 2
    if args.device not in ("cuda", "cpu") and not args.device.startswith("cuda:"):
        print(f"error: --device must be cuda, cuda:N or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device: run `make gpu-check DEVICE=cpu` for the dry run", file=sys.stderr)
        return 2
    device = torch.device(args.device if args.device != "cuda" else "cuda:0")
    t0 = time.perf_counter()
    sizes = dict(SIZES[device.type], deadline=t0 + SIZES[device.type]["budget_s"])
    torch.set_num_threads(1)  # the CPU side runs tiny models: intra-op threads only spin (tests/test_families.py)
    if device.type == "cuda":
        try:  # float32 means float32 (cuDNN's convolutions default to TF32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        except Exception as err:
            print(f"note: TF32 left as it was ({one_line(err)})", flush=True)
    warnings.filterwarnings("ignore")
    quiet()
    report: dict = {"environment": environment(device), **{k: record(None, skipped="not reached") for k in CHECKS}}
    print(report["environment"]["missing_line"], flush=True)
    path = Path(args.json or ROOT / "benchmarks" / f"gpu_check-{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else set(CHECKS)
    steps = {"families": lambda: check_families(device, sizes), "device_map": lambda: check_device_map(device, sizes),
             "sweep_throughput": lambda: check_throughput(device, sizes),
             "scratch_paper": lambda: check_scratch(device, sizes)}  # nccl last: a hang there loses nothing else
    for name, fn in steps.items():
        wanted = name in only or (name == "families" and "cuda_vs_cpu" in only)
        out = run_step(name, fn, report["environment"]["missing"]) if wanted else \
            record(None, skipped="not asked for (--only)")
        if name == "families":
            report["families"], report["cuda_vs_cpu"] = out if isinstance(out, tuple) else (out, out)
        else:
            report[name] = out
        print(f"{name}: {'skipped' if report[name]['ok'] is None else 'ok' if report[name]['ok'] else 'FAILED'} "
              f"({report[name]['seconds']} s)", flush=True)
        write(report, path, time.perf_counter() - t0, final=False)  # a run killed later keeps the steps done
    report = write(report, path, time.perf_counter() - t0, final=True)
    print(text_summary(report))
    return 0 if report["summary"]["ok"] else 1


def write(report: dict, path: Path, seconds: float, final: bool) -> dict:
    """The JSON (keys in :data:`KEYS` order) and, when ``final``, the text summary beside it."""
    report = {k: report[k] for k in KEYS if k != "summary"}
    report["summary"] = dict(summarize(report, seconds), complete=final)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if final:
        path.with_suffix(".txt").write_text(text_summary(report) + "\n")
    return report


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    if HUNG:  # a thread still waits on nccl: leave without the interpreter's clean-up, which would wait too
        os._exit(code)
    sys.exit(code)
