"""The commands ``taskvec saliency | dpca | heads``: the faces of the analysis kinds, registered by
:mod:`taskvec.cli` from the registry of run kinds (each flag a field of the kind's config).

User mistakes (:class:`~taskvec.errors.TaskvecError`) print ``error: <message>`` and exit with code 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import taskvec.artifacts as A
from taskvec.cli_errors import check_out, check_separator, friendly

def _ints(text: Optional[str], option: str = "--layers", what: str = "layer") -> list[int] | None:
    """``"0,4,8"`` or ``"2-6"`` -> list of ints; ``None`` stays ``None``; ``""`` is the empty list.

    Unreadable text raises :class:`~taskvec.errors.ParseError`, a negative layer :class:`~taskvec.errors.LayerError`
    (both before any model is loaded)."""
    from taskvec.errors import LayerError, ParseError

    if text is None:
        return None
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ParseError(f"{option}: range {part!r} runs backwards; write it low-high, e.g. '2-6'")
                out += list(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError as err:
            if isinstance(err, ParseError):
                raise
            raise ParseError(f"cannot read {option} {text!r}: use e.g. '0,4,8' or '2-6'") from None
    negative = [layer for layer in out if layer < 0]
    if negative:
        raise LayerError(f"{option}: {what} {negative[0]} is out of range: {what}s count from 0")
    return out


def _csv(text: Optional[str]) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


MODEL = typer.Option(None, help="named model, HF id or checkpoint directory [default: gemma3-270m]")
N_DEMOS = typer.Option(None, help="demonstrations per prompt [default: the task's]")
SEED = typer.Option(None, help="seed of every draw [default: 0]")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:N or auto [default: cpu]")
DTYPE = typer.Option(None, help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16 [default: auto]")
SEPARATOR = typer.Option(None, help="word between input and answer [default: is]")
CONFIG = typer.Option(None, help="YAML/JSON config of this command's fields; flags given here override it")
OUT = typer.Option(None, help="run directory (default runs/KIND-MODEL-TASK-sSEED)")
RESUME = typer.Option(False, help="continue a killed run in --out (same config); finished units are kept")


def _out(out: Optional[str], cfg, resume: bool) -> Path:
    """``--out`` checked (:func:`~taskvec.cli_errors.check_out`), or the default ``runs/KIND-MODEL-TASK-sSEED``."""
    task = "+".join(cfg.tasks) if hasattr(cfg, "tasks") else cfg.task
    return check_out(out, resume) or Path("runs") / f"{cfg.kind}-{cfg.model.replace('/', '_')}-{task}-s{cfg.seed}"


@friendly
def saliency(
    model: Optional[str] = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    tasks: Optional[str] = typer.Option(None, help="comma-separated task names [default: simple_string]"),
    n_trials: Optional[int] = typer.Option(None, help="prompts per task [default: 20]"),
    n_demos: Optional[int] = N_DEMOS,
    seed: Optional[int] = SEED,
    loss: Optional[str] = typer.Option(None, help="auto | vocab | label (label-restricted CE) [default: auto]"),
    batch_size: Optional[int] = typer.Option(None, help="prompts per forward/backward [default: 4]"),
    separator: Optional[str] = SEPARATOR,
    config: Optional[Path] = CONFIG,
    out: Optional[str] = OUT,
    resume: bool = RESUME,
) -> None:
    """Attention x gradient saliency flows per layer (docs/analyses.md); switches the model to eager attention."""
    from taskvec.analysis.runners import SaliencyConfig
    from taskvec.kinds import run_saliency
    from taskvec.experiment import config_from

    check_separator("--separator", separator)
    cfg = config_from(SaliencyConfig, config, dict(
        model=model, device=device, dtype=dtype, tasks=_csv(tasks), n_trials=n_trials, n_demos=n_demos, seed=seed,
        loss=loss, batch_size=batch_size, separator=separator))
    path = run_saliency(cfg, _out(out, cfg, resume), resume=resume)
    typer.echo(f"saliency written to {path}\nreport: {path / A.REPORT}")


def _shrinkage(text: Optional[str]) -> float | str | None:
    from taskvec.errors import ParseError

    if text is None or text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise ParseError(f"--shrinkage must be 'auto' or a number in [0, 1], got {text!r}") from None


@friendly
def dpca(
    model: Optional[str] = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    task: Optional[str] = typer.Option(None, help="a categorization task whose trials carry meta['length'] "
                                                  "[default: simple_string]"),
    n_trials: Optional[int] = typer.Option(None, help="trials, at least the length x class conditions [default: 40]"),
    n_demos: Optional[int] = N_DEMOS,
    seed: Optional[int] = SEED,
    k: Optional[int] = typer.Option(None, help="axes per marginalization to project out, the same for length and "
                                               "label [default: each whole subspace, levels - 1 axes]"),
    layers: Optional[str] = typer.Option(None, help="layers to analyze, e.g. '0,4,8' or '0-17' [default: all]"),
    ablate_layers: Optional[str] = typer.Option(None, help="layers for the subspace ablation [default: --layers; "
                                                           "'' skips]"),
    regularizer: Optional[float] = typer.Option(None, help="dPCA ridge lambda (times ||X||^2) [default: 1e-4]"),
    shrinkage: Optional[str] = typer.Option(None, help="covariance shrinkage: auto (Ledoit-Wolf) or a weight in "
                                                       "[0, 1] [default: auto]"),
    separator: Optional[str] = SEPARATOR,
    config: Optional[Path] = CONFIG,
    out: Optional[str] = OUT,
    resume: bool = RESUME,
) -> None:
    """dPCA of answer-position states by length and label, Mahalanobis distances, subspace ablation
    (docs/analyses.md)."""
    from taskvec.analysis.runners import DPCAConfig
    from taskvec.kinds import run_dpca
    from taskvec.experiment import config_from

    check_separator("--separator", separator)
    cfg = config_from(DPCAConfig, config, dict(
        model=model, device=device, dtype=dtype, task=task, n_trials=n_trials, n_demos=n_demos, seed=seed, k=k,
        layers=_ints(layers), ablate_layers=_ints(ablate_layers, "--ablate-layers"), regularizer=regularizer,
        shrinkage=_shrinkage(shrinkage), separator=separator))
    path = run_dpca(cfg, _out(out, cfg, resume), resume=resume)
    typer.echo(f"dPCA written to {path}\nreport: {path / A.REPORT}")


@friendly
def heads(
    model: Optional[str] = MODEL,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    task: Optional[str] = typer.Option(None, help="task [default: simple_string]"),
    n_trials: Optional[int] = typer.Option(None, help="prompts [default: 8]"),
    n_demos: Optional[int] = N_DEMOS,
    seed: Optional[int] = SEED,
    modes: Optional[str] = typer.Option(None, help="comma-separated: mean (mean-ablation), patch (ICL -> dummy) "
                                                   "at the query; writers, readers (heads that write the local "
                                                   "vectors / read them into the query); function_vector (each "
                                                   "head's indirect effect, Todd et al.) [default: mean,patch]"),
    layers: Optional[str] = typer.Option(None, help="layers whose heads to test [default: all]"),
    heads: Optional[str] = typer.Option(None, "--heads", help="head indices to test in each layer, e.g. '0-3' "
                                                              "[default: all]"),
    top: Optional[int] = typer.Option(None, help="heads listed in heads_top.csv [default: 10]"),
    local_layer: Optional[int] = typer.Option(None, help="writers/readers: layer of the local vectors [default: "
                                                         "chosen by local patching on --n-select other trials]"),
    n_select: Optional[int] = typer.Option(None, help="writers/readers: trials the local layer is chosen on "
                                                      "[default: 8]"),
    null_task: Optional[str] = typer.Option(None, help="writers/readers null: task whose head means replace the "
                                                       "heads' outputs, or 'none' [default: auto]"),
    separator: Optional[str] = SEPARATOR,
    config: Optional[Path] = CONFIG,
    out: Optional[str] = OUT,
    resume: bool = RESUME,
) -> None:
    """Per-head effects at the query (mean-ablation, ICL -> dummy patching), attention to answers, and with
    --modes writers,readers the heads that write and read the local vectors, with function_vector the heads of the
    function vector; heads_overlap.csv compares their top sets (docs/analyses.md)."""
    from taskvec.analysis.runners import HeadsConfig
    from taskvec.kinds import run_heads
    from taskvec.experiment import config_from

    check_separator("--separator", separator)
    cfg = config_from(HeadsConfig, config, dict(
        model=model, device=device, dtype=dtype, task=task, n_trials=n_trials, n_demos=n_demos, seed=seed,
        modes=_csv(modes), layers=_ints(layers), heads=_ints(heads, "--heads", "head"), top=top,
        local_layer=local_layer, n_select=n_select, null_task=null_task, separator=separator))
    path = run_heads(cfg, _out(out, cfg, resume), resume=resume)
    typer.echo(f"heads written to {path}\nreport: {path / A.REPORT}")
