"""The commands for from-scratch models: ``taskvec train | evaluate | compare`` (the faces of those run kinds,
registered by :mod:`taskvec.cli` from the registry of run kinds) and ``taskvec compress``. Each command builds its
pydantic config (``TrainConfig``, ``EvalConfig``, ``CompressConfig``: they hold every default; a flag given
overrides ``--config``, a flag not given never does) and calls the API (``train``, ``run_evaluation``,
``compress_model``).
Multi-process: ``torchrun --nproc_per_node 2 -m taskvec train ...``. User mistakes print
``error: <one line>`` and exit with code 2.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

import taskvec.artifacts as A
from taskvec.cli_errors import check_at_least, check_out, friendly

def _check_model_dir(path: Path) -> None:
    """A missing or non-model directory fails here, before any work."""
    from taskvec.scratch.model import check_model_dir

    check_model_dir(path)


def _check_device(device: str | None) -> None:
    """A device that does not exist fails here, before any model is read."""
    if device is not None:
        from taskvec.models.devices import resolve_device

        resolve_device(device)


def _load_model(path: Path):
    _check_model_dir(path)
    from taskvec.scratch.model import ScratchModel

    return ScratchModel.from_pretrained(path)


def _renamed_flag(old: str, new: str, value) -> None:
    if value is not None:
        from taskvec.errors import ConfigError

        raise ConfigError(f"{old} is now {new}")


@friendly
def train(
    out: str = typer.Option(..., help="run directory: config.json, results.jsonl (the logged curve), logs, "
                                      "TensorBoard, checkpoints, final model"),
    config: Optional[Path] = typer.Option(None, help="a TrainConfig as YAML/JSON (or a run's config.json); flags "
                                                     "given here override it"),
    task: Optional[str] = typer.Option(None, help="linear_regression | sinusoid | token_offset"),
    d: Optional[int] = typer.Option(None, "--d", "--dim",
                                    help="input dimension (linear_regression); write --dim under torchrun"),
    noise: Optional[float] = typer.Option(None, help="label noise std"),
    pool_size: Optional[int] = typer.Option(None, help="finite task pool of this many tasks"),
    layout: Optional[str] = typer.Option(None, help="x→y (or x->y) | *xy | xy"),
    preset: Optional[str] = typer.Option(None, help="tiny | cpu-small | paper"),
    n_layer: Optional[int] = typer.Option(None),
    n_head: Optional[int] = typer.Option(None),
    n_embd: Optional[int] = typer.Option(None),
    k_max: Optional[int] = typer.Option(None, help="examples per training sequence"),
    steps: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    lr_warmup: Optional[int] = typer.Option(None, help="steps of linear learning-rate warm-up from 0 [default: 0]"),
    tvp_layer: Optional[int] = typer.Option(None, help="l* of the TVP-loss (alone: λ = 1)"),
    tvp_weight: Optional[float] = typer.Option(None, help="λ of the TVP-loss (alone: l* = L/2)"),
    tvp_schedule: Optional[str] = typer.Option(
        None, help="λ by step: constant | warmup:N (linear from 0 over N steps) | after:N (off up to step N) | "
                   "after:N,warmup:M [default: constant]"),
    detach_theta: Optional[bool] = typer.Option(None, "--detach-theta/--no-detach-theta"),
    tvp_slots: Optional[int] = typer.Option(None, help="random example slots per sequence in L_TVP (default all)"),
    tvp_shared_query: Optional[bool] = typer.Option(
        None, "--tvp-shared-query/--no-tvp-shared-query",
        help="x→y: one fresh query per sequence shared by all its slots, packed in one masked pass (faster)"),
    curriculum: Optional[bool] = typer.Option(None, "--curriculum/--no-curriculum",
                                              help="Garg et al.: start at 5 dims / 11 points, +1 / +2 per stage"),
    curriculum_every: Optional[int] = typer.Option(None, help="steps per curriculum stage (default 2000)"),
    curriculum_start: Optional[int] = typer.Option(None, help="input dims at curriculum stage 0 (default 5)"),
    seed: Optional[int] = typer.Option(None),
    save_every: Optional[int] = typer.Option(None),
    log_every: Optional[int] = typer.Option(None),
    resume: bool = typer.Option(False, help="continue from the newest checkpoint in --out (same config; --steps, "
                                            "--save-every, --log-every may change)"),
    device: str = typer.Option("cpu"),
    precision: Optional[str] = typer.Option(None, help="auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16 "
                                                       "[default: auto]"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard"),
):
    """Train a GPT-2-style model with L = L_ICL + λ·L_TVP."""
    out = check_out(out)  # a --resume of nothing: train's own check (it also knows runs of older versions)
    check_at_least("--threads", threads, 1)
    if layout is not None:  # fails before the heavy imports below
        from taskvec.scratch.layouts import canonical

        canonical(layout)
    import torch

    from taskvec.kinds import train as run_train
    from taskvec.scratch.train import load_config

    if threads:
        torch.set_num_threads(threads)
    task_over = {k: v for k, v in dict(name=task, d=d, noise=noise, pool_size=pool_size).items() if v is not None}
    cfg = load_config(config, task=task_over, layout=layout, preset=preset, n_layer=n_layer, n_head=n_head,
                      n_embd=n_embd, k_max=k_max, steps=steps, batch_size=batch_size, lr=lr, lr_warmup=lr_warmup,
                      precision=precision, tvp_layer=tvp_layer, tvp_weight=tvp_weight, tvp_schedule=tvp_schedule,
                      detach_theta=detach_theta, tvp_slots=tvp_slots, tvp_shared_query=tvp_shared_query,
                      curriculum=curriculum, curriculum_every=curriculum_every, curriculum_start=curriculum_start,
                      seed=seed, save_every=save_every, log_every=log_every)
    final = run_train(cfg, out, resume=resume, device=device, tensorboard=tensorboard)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"model saved to {final}")


@friendly
def evaluate(
    model: Optional[list[Path]] = typer.Option(None, help="from-scratch model directory, e.g. runs/NAME/model "
                                                          "(repeat to compare models; or `models` in --config)"),
    label: Optional[list[str]] = typer.Option(None, help="a name per --model (default: directory names)"),
    out: str = typer.Option(..., help="run directory: config.json, results.jsonl (one line per model and "
                                      "analysis), results.json, report.html"),
    resume: bool = typer.Option(False, help="continue a killed evaluation in --out (same config); finished "
                                            "units are kept"),
    config: Optional[Path] = typer.Option(None, help="an EvalConfig as YAML/JSON; flags given here override it"),
    n_trials: Optional[int] = typer.Option(None, help="prompts per evaluation set [default: 500]"),
    k: Optional[int] = typer.Option(None, help="demonstrations per prompt [default: 10]"),
    layer: Optional[int] = typer.Option(None, help="l* for noisy/OOD/compression [default: trained l* or L/2]"),
    analyses: Optional[str] = typer.Option(None, help="comma-separated subset of layers,context,noisy,ood,pca,"
                                                      "compress [default: all]"),
    seed: Optional[int] = typer.Option(None, help="seed of every draw [default: 12345]"),
    batch_size: Optional[int] = typer.Option(None, help="prompts per forward pass [default: 256]"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | cuda:N | auto [default: cpu]"),
    n_prompts: Optional[int] = typer.Option(None, "--n-prompts", hidden=True),
):
    """Per-layer ICL / zero-shot / TVP(l) / baselines / strength, robustness, PCA; HTML report. Resumable."""
    from taskvec.errors import ConfigError

    _renamed_flag("--n-prompts", "--n-trials", n_prompts)
    out = check_out(out, resume)
    check_at_least("--k", k, 1)
    check_at_least("--n-trials", n_trials, 1)
    check_at_least("--layer", layer, 0)
    check_at_least("--batch-size", batch_size, 1)
    _check_device(device)
    for path in model or []:  # every directory is checked before the first (long) evaluation starts
        _check_model_dir(path)
    from taskvec.experiment import config_from
    from taskvec.kinds import run_evaluation
    from taskvec.scratch.evaluate import EvalConfig, default_labels

    if label and not model:
        raise ConfigError("--label names a --model: give the models too")
    models = default_labels(model, label) if model else None
    parts = None if analyses is None else [a.strip() for a in analyses.split(",") if a.strip()]
    cfg = config_from(EvalConfig, config, dict(models=models, n_trials=n_trials, k=k, layer=layer, seed=seed,
                                               batch_size=batch_size, analyses=parts, device=device))
    run_dir = run_evaluation(cfg, out, resume=resume)
    typer.echo(f"results: {run_dir / A.EVAL_RESULTS}\nreport:  {run_dir / A.REPORT}")


@friendly
def compare(
    out: str = typer.Option(..., help="run directory: config.json, results.jsonl, models/ (one training run per "
                                      "model), summary.csv, verdicts.csv, report.html"),
    config: Optional[Path] = typer.Option(None, help="a ComparisonConfig as YAML/JSON (train, arms, layouts, seeds, "
                                                     "evaluation, rules); flags given here override it"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated training seeds [default: 0,1,2]"),
    layouts: Optional[str] = typer.Option(None, help="comma-separated layouts: x->y and/or *xy [default: both]"),
    resume: bool = typer.Option(False, help="continue a killed comparison in --out (same config): finished units "
                                            "are kept, an unfinished training resumes from its last checkpoint"),
    workers: int = typer.Option(1, help="processes running trainings/evaluations side by side (at most the CPU "
                                        "cores)"),
    threads: int = typer.Option(1, help="torch CPU threads per worker"),
):
    """Vanilla vs TVP-loss over seeds and layouts: train every model, evaluate each on a selection and an
    evaluation draw, aggregate over seeds with 95% intervals and compute the claims' verdicts. Resumable."""
    from taskvec.errors import ConfigError
    from taskvec.experiment import config_from
    from taskvec.kinds import run_comparison
    from taskvec.scratch.comparison import ComparisonConfig, check_workers, markdown_summary

    check_workers(workers, threads)
    out = check_out(out, resume)

    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(x) for x in seeds.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--seeds {seeds!r}: write whole numbers separated by commas, e.g. 0,1,2") from None
    layout_list = None if layouts is None else [x.strip() for x in layouts.split(",") if x.strip()]
    cfg = config_from(ComparisonConfig, config, dict(seeds=seed_list, layouts=layout_list))
    run_dir = run_comparison(cfg, out, resume=resume, workers=workers, threads=threads)
    typer.echo(markdown_summary(run_dir))
    typer.echo(f"verdicts: {run_dir / A.VERDICTS}\nreport:   {run_dir / A.REPORT}")


@friendly
def compress(
    model: Path = typer.Option(..., help="from-scratch model directory (ideally TVP-trained)"),
    config: Optional[Path] = typer.Option(None, help="a CompressConfig as YAML/JSON; flags given here override it"),
    k: Optional[int] = typer.Option(None, help="demonstrations per encoded set [default: 10]"),
    layer: Optional[int] = typer.Option(None, help="l* [default: trained l* or L/2]"),
    n_tasks: Optional[int] = typer.Option(None, help="demonstration sets, each encoded once [default: 32]"),
    n_queries: Optional[int] = typer.Option(None, help="queries answered per encoded set [default: 64]"),
    seed: Optional[int] = typer.Option(None, help="seed of every draw [default: 12345, as evaluate]"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | cuda:N | auto [default: cpu]"),
    tasks: Optional[int] = typer.Option(None, "--tasks", hidden=True),
    queries: Optional[int] = typer.Option(None, "--queries", hidden=True),
):
    """Compressed inference: encode demonstrations once to θ, answer many queries with 2-token passes. Prints
    JSON (no run directory)."""
    _renamed_flag("--tasks", "--n-tasks", tasks)
    _renamed_flag("--queries", "--n-queries", queries)
    check_at_least("--k", k, 1)
    check_at_least("--n-tasks", n_tasks, 1)
    check_at_least("--n-queries", n_queries, 1)
    check_at_least("--layer", layer, 0)
    _check_device(device)
    _check_model_dir(model)
    from taskvec.experiment import config_from
    from taskvec.scratch.evaluate import CompressConfig, compress_model

    cfg = config_from(CompressConfig, config, dict(k=k, layer=layer, n_tasks=n_tasks, n_queries=n_queries,
                                                   seed=seed, device=device))
    typer.echo(json.dumps(compress_model(_load_model(model), cfg), indent=1))
