"""Command line for from-scratch models: ``train``, ``evaluate``, ``compress``.

Standalone: ``python -m taskvec.scratch.cli train --out runs/v --steps 1000``; mounted in the main CLI as
``taskvec train`` / ``taskvec evaluate``. Multi-process: ``torchrun --nproc_per_node 2 -m taskvec.scratch.cli
train ...``. User mistakes print ``error: <one line>`` and exit with code 2.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from taskvec.cli_errors import check_at_least, friendly

app = typer.Typer(help="Train and evaluate from-scratch ICL models (task vectors, TVP-loss).",
                  no_args_is_help=True, add_completion=False)


def _check_model_dir(path: Path) -> None:
    """A missing or non-model directory fails here, before heavy imports and before any work."""
    from taskvec.errors import ModelNotFoundError

    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory (no such directory; give the "
                                 "model directory a training run saved, e.g. runs/NAME/model)")
    if not (path / "config.json").exists():
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory (no config.json)")


def _load_model(path: Path):
    _check_model_dir(path)
    from taskvec.scratch.model import ScratchModel

    return ScratchModel.from_pretrained(path)


@app.command()
@friendly
def train(
    out: Path = typer.Option(..., help="run directory (config, logs, TensorBoard, checkpoints, final model)"),
    config: Optional[Path] = typer.Option(None, help="YAML config; flags override it"),
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
    tvp_layer: Optional[int] = typer.Option(None, help="l* of the TVP-loss (alone: λ = 1)"),
    tvp_weight: Optional[float] = typer.Option(None, help="λ of the TVP-loss (alone: l* = L/2)"),
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
    resume: bool = typer.Option(False, help="continue from the newest checkpoint in --out (same config)"),
    device: str = typer.Option("cpu"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard"),
):
    """Train a GPT-2-style model with L = L_ICL + λ·L_TVP."""
    check_at_least("--threads", threads, 1)
    if layout is not None:  # fails before the heavy imports below
        from taskvec.scratch.layouts import canonical

        canonical(layout)
    import torch

    from taskvec.scratch.train import load_config, train as run_train

    if threads:
        torch.set_num_threads(threads)
    task_over = {k: v for k, v in dict(name=task, d=d, noise=noise, pool_size=pool_size).items() if v is not None}
    cfg = load_config(config, task=task_over, layout=layout, preset=preset, n_layer=n_layer, n_head=n_head,
                      n_embd=n_embd, k_max=k_max, steps=steps, batch_size=batch_size, lr=lr, tvp_layer=tvp_layer,
                      tvp_weight=tvp_weight, detach_theta=detach_theta, tvp_slots=tvp_slots,
                      tvp_shared_query=tvp_shared_query,
                      curriculum=curriculum, curriculum_every=curriculum_every,
                      curriculum_start=curriculum_start, seed=seed,
                      save_every=save_every, log_every=log_every)
    final = run_train(cfg, out, resume=resume, device=device, tensorboard=tensorboard)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"model saved to {final}")


@app.command()
@friendly
def evaluate(
    model: list[Path] = typer.Option(..., help="model directory (repeat to compare models)"),
    label: Optional[list[str]] = typer.Option(None, help="a name per --model (default: directory names)"),
    out: Path = typer.Option(..., help="output directory: results.json and report.html"),
    n_prompts: int = typer.Option(500),
    k: int = typer.Option(10, help="demonstrations per prompt"),
    layer: Optional[int] = typer.Option(None, help="l* for noisy/OOD/compression (default: trained l* or L/2)"),
    analyses: str = typer.Option("layers,context,noisy,ood,pca,compress", help="comma-separated subset"),
    seed: int = typer.Option(12345),
):
    """Per-layer ICL / zero-shot / TVP(l) / baselines / strength, robustness, PCA; HTML report."""
    from taskvec.errors import ConfigError

    labels = list(label or [])
    if labels and len(labels) != len(model):
        raise ConfigError(f"got {len(labels)} --label for {len(model)} --model")
    check_at_least("--k", k, 1)
    check_at_least("--n-prompts", n_prompts, 1)
    check_at_least("--layer", layer, 0)
    for path in model:  # every directory is checked before the first (long) evaluation starts
        _check_model_dir(path)
    from taskvec.scratch.evaluate import EvalConfig, evaluate_model
    from taskvec.scratch.report import write_report

    labels = labels or [p.parent.name if p.name in ("model",) else p.name for p in model]
    from pydantic import ValidationError

    from taskvec.scratch.train import validation_message

    try:
        cfg = EvalConfig(n_prompts=n_prompts, k=k, layer=layer, seed=seed,
                         analyses=[a.strip() for a in analyses.split(",") if a.strip()])
    except ValidationError as e:
        raise ConfigError(f"bad evaluation options: {validation_message(e)}") from None
    results = {}
    for lab, path in zip(labels, model):
        typer.echo(f"evaluating {lab} ({path})")
        results[lab] = evaluate_model(_load_model(path), cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report = write_report(results, out / "report.html")
    typer.echo(f"results: {out / 'results.json'}\nreport:  {report}")


@app.command()
@friendly
def compress(
    model: Path = typer.Option(..., help="model directory (ideally TVP-trained)"),
    k: int = typer.Option(10),
    layer: Optional[int] = typer.Option(None),
    tasks: int = typer.Option(32),
    queries: int = typer.Option(64, help="queries answered per encoded demonstration set"),
    seed: int = typer.Option(0),
):
    """Compressed inference: encode demonstrations once to θ, answer many queries with 2-token passes."""
    check_at_least("--k", k, 1)
    check_at_least("--tasks", tasks, 1)
    check_at_least("--queries", queries, 1)
    check_at_least("--layer", layer, 0)
    _check_model_dir(model)
    import torch

    from taskvec.errors import LayerError, RangeError
    from taskvec.scratch.evaluate import compressed_inference
    from taskvec.scratch.layouts import plan
    from taskvec.scratch.tasks import TaskConfig, make_task

    m = _load_model(model).eval()
    layer = layer if layer is not None else (m.config.tvp_layer if m.config.tvp_layer is not None
                                             else m.n_layers // 2)
    if not 0 <= layer < m.n_layers:
        raise LayerError(f"--layer {layer} is out of range: this model has layers 0..{m.n_layers - 1}")
    k_max = (m.config.n_positions // plan(m.config.layout, 1, query=False).length) - 1
    if k > k_max:
        raise RangeError(f"--k {k} does not fit the model's {m.config.n_positions} positions (max k {k_max})")
    res = compressed_inference(m, make_task(TaskConfig(**m.config.task)), m.config.layout, k, layer, tasks,
                               queries, torch.Generator().manual_seed(seed))
    typer.echo(json.dumps(res, indent=1))


if __name__ == "__main__":
    app()
