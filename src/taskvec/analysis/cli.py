"""CLI commands ``taskvec saliency | dpca | heads`` (typer). The lead mounts :data:`app`'s commands in the main CLI;
run alone with ``python -m taskvec.analysis.cli --help``.

User mistakes (:class:`~taskvec.errors.TaskvecError`) print ``error: <message>`` and exit with code 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from taskvec.cli_errors import check_at_least, check_choice, friendly

app = typer.Typer(help="Analyses: saliency flows, dPCA with subspace ablation, head attribution.",
                  no_args_is_help=True, add_completion=False)


def _ints(text: Optional[str], option: str = "--layers") -> list[int] | None:
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
        raise LayerError(f"{option}: layer {negative[0]} is out of range: layers count from 0")
    return out


def _check_tasks(names: list[str]) -> None:
    """Unknown task names and malformed task files fail here, before a model is loaded."""
    from taskvec.tasks import get_task

    for name in names:
        get_task(name)


def _check_layers(lm, *layer_lists: list[int] | None) -> None:
    """Layers beyond the loaded model fail here, before a run directory is created."""
    for layers in layer_lists:
        for layer in layers or []:
            lm.profile.check_layer(layer)


def _load(model: str, **kw):
    import taskvec

    return taskvec.load_model(model, **kw)


def _out(out: Optional[Path], kind: str, model: str, task: str, seed: int) -> Path:
    return out or Path("runs") / f"{kind}-{model.replace('/', '_')}-{task}-s{seed}"


@app.command()
@friendly
def saliency(
    model: str = typer.Option("gemma3-270m", help="named model, HF id or path"),
    task: list[str] = typer.Option(["simple_string"], help="task(s); repeat for several"),
    n_trials: int = typer.Option(20, help="prompts per task"),
    n_demos: Optional[int] = typer.Option(None, help="demonstrations per prompt (default: the task's)"),
    seed: int = 0,
    loss: str = typer.Option("auto", help="auto | vocab | label (label-restricted CE)"),
    batch_size: int = typer.Option(4, help="prompts per forward/backward (bounds peak memory)"),
    separator: str = "is",
    out: Optional[Path] = typer.Option(None, help="run directory"),
    resume: bool = False,
) -> None:
    """Attention x gradient saliency flows per layer (SPEC A.5); switches the model to eager attention."""
    from taskvec.analysis.runners import run_saliency
    from taskvec.analysis.saliency import LOSSES

    check_choice("--loss", loss, LOSSES)
    check_at_least("--batch-size", batch_size, 1)
    check_at_least("--n-trials", n_trials, 1)
    check_at_least("--n-demos", n_demos, 0)
    _check_tasks(task)
    lm = _load(model)
    path = run_saliency(lm, _out(out, "saliency", model, "+".join(task), seed), task, n_trials, n_demos, seed, loss,
                        batch_size, separator, resume)
    typer.echo(f"saliency written to {path}")


@app.command()
@friendly
def dpca(
    model: str = typer.Option("gemma3-270m", help="named model, HF id or path"),
    task: str = typer.Option("simple_string", help="a categorization task whose trials carry meta['length']"),
    n_trials: int = typer.Option(40, help="trials (at least the number of length x label conditions)"),
    n_demos: Optional[int] = None,
    seed: int = 0,
    k: Optional[int] = typer.Option(None, help="axes per marginalization to project out, the same for length and "
                                               "label (default: each whole subspace, levels - 1 axes)"),
    layers: Optional[str] = typer.Option(None, help="layers to analyze, e.g. '0,4,8' or '0-17' (default all)"),
    ablate_layers: Optional[str] = typer.Option(None, help="layers for the subspace ablation (default: layers; '' skips)"),
    regularizer: float = typer.Option(1e-4, help="dPCA ridge lambda (times ||X||^2)"),
    shrinkage: str = typer.Option("auto", help="covariance shrinkage: auto (Ledoit-Wolf) or a weight in [0, 1]"),
    separator: str = "is",
    out: Optional[Path] = None,
    resume: bool = False,
) -> None:
    """dPCA of answer-position states by length and label, Mahalanobis distances, subspace ablation (SPEC A.6)."""
    import math

    from taskvec.analysis.runners import run_dpca
    from taskvec.errors import ParseError, RangeError

    try:
        shrink: float | str = shrinkage if shrinkage == "auto" else float(shrinkage)
    except ValueError:
        raise ParseError(f"--shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}") from None
    if shrink != "auto" and not 0.0 <= shrink <= 1.0:  # NaN fails this too
        raise RangeError(f"--shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}")
    if not (math.isfinite(regularizer) and regularizer >= 0):
        raise RangeError(f"--regularizer must be a finite number >= 0, got {regularizer}")
    check_at_least("--k", k, 1)
    check_at_least("--n-trials", n_trials, 1)
    check_at_least("--n-demos", n_demos, 0)
    layer_list, ablate_list = _ints(layers), _ints(ablate_layers, "--ablate-layers")
    _check_tasks([task])
    lm = _load(model)
    _check_layers(lm, layer_list, ablate_list)
    path = run_dpca(lm, _out(out, "dpca", model, task, seed), task, n_trials, n_demos, seed, k, layer_list,
                    ablate_list, regularizer, shrink, separator, resume)
    typer.echo(f"dPCA written to {path}")


@app.command()
@friendly
def heads(
    model: str = typer.Option("gemma3-270m", help="named model, HF id or path"),
    task: str = "simple_string",
    n_trials: int = 8,
    n_demos: Optional[int] = None,
    seed: int = 0,
    mode: list[str] = typer.Option(["mean", "patch"], help="mean (mean-ablation) and/or patch (ICL -> dummy)"),
    layers: Optional[str] = typer.Option(None, help="layers whose heads to test (default all)"),
    top: int = 10,
    separator: str = "is",
    out: Optional[Path] = None,
    resume: bool = False,
) -> None:
    """Per-head effects at the query (mean-ablation, ICL -> dummy patching) and attention to answers (SPEC B.7)."""
    from taskvec.analysis.runners import run_heads

    for m in mode:
        check_choice("--mode", m, ("mean", "patch"))
    check_at_least("--n-trials", n_trials, 1)
    check_at_least("--n-demos", n_demos, 0)
    check_at_least("--top", top, 1)
    layer_list = _ints(layers)
    if layer_list == []:
        from taskvec.errors import LayerError

        raise LayerError("--layers is empty: give the layers whose heads to test, e.g. '0-5'")
    _check_tasks([task])
    lm = _load(model)
    _check_layers(lm, layer_list)
    path = run_heads(lm, _out(out, "heads", model, task, seed), task, n_trials, n_demos, seed, mode, layer_list,
                     top, separator, resume)
    typer.echo(f"heads written to {path}")


if __name__ == "__main__":
    app()
