"""One rule for every command line face: a user mistake (:class:`~taskvec.errors.TaskvecError`, or a path that
cannot be used, or a usage error such as ``--k many``: :func:`run_app`) prints ``error: <one line>`` on stderr and
exits with code 2, never a traceback or a boxed panel.

Commands check what they can before loading a model (:func:`check_choice`, :func:`check_at_least`,
:func:`check_out`), so a bad flag costs the start-up time only and leaves no half-made run directory."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, NoReturn, TypeVar

import typer

import taskvec.artifacts as A
from taskvec.errors import ChoiceError, ConfigError, RangeError, TaskvecError, one_line

F = TypeVar("F", bound=Callable)


PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
"""OS errors that on the command line mean a bad path (``--config`` naming a directory, say); reported like
:class:`TaskvecError` where no command turned them into one."""


def friendly(fn: F) -> F:
    """Decorate a typer command so :class:`TaskvecError` (and a bad path: :data:`PATH_ERRORS`) becomes
    ``error: ...`` and exit code 2. A run directory the command was writing when it stopped on any error is marked
    ``FAILED`` (:func:`taskvec.runs.mark_held_failed`), so a rerun without ``--resume`` replaces it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):  # a command's own way out: not a failure of its run
            raise
        except (TaskvecError, *PATH_ERRORS) as err:  # PATH_ERRORS: a path given that cannot be used as one
            _mark_failed(err)
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(2) from None
        except Exception as err:  # a bug: its traceback is shown, but the run it broke is marked failed
            _mark_failed(err)
            raise

    return wrapper  # type: ignore[return-value]


def check_choice(option: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices``, else :class:`ChoiceError` naming the option and the choices."""
    if value not in choices:
        raise ChoiceError(f"{option} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_at_least(option: str, value, minimum):
    """``value`` if it is ``None`` or ``>= minimum``, else :class:`RangeError` naming the option."""
    if value is not None and value < minimum:
        raise RangeError(f"{option} must be >= {minimum}, got {value}")
    return value


def check_separator(option: str, value: str | None) -> str | None:
    """``value`` if it is ``None`` or holds a word, else :class:`ConfigError`: an empty separator glues every input
    to its answer (``"France Paris"``), so the prompts mean something else than asked."""
    if value is not None and not value.strip():
        raise ConfigError(f"{option} {value!r} is empty: give the word between input and answer, e.g. 'is' or '->'")
    return value


def _mark_failed(err: BaseException) -> None:
    """Mark the run directories this process was writing as failed (:func:`taskvec.runs.mark_held_failed`)."""
    from taskvec.runs import mark_held_failed

    try:
        mark_held_failed(err)
    except OSError:  # the directory itself is the problem: the error already says so
        pass


def check_out(out: str | Path | None, resume: bool = False, option: str = "--out") -> Path | None:
    """The run directory a command writes, checked before any work (one line each): not ``''``, not a file, and
    holding a run (``config.json``) when ``resume`` is on. ``None`` stays ``None`` (the command's default)."""
    if out is None:
        return None
    if not str(out).strip():
        raise ConfigError(f"{option} is empty: give a run directory, e.g. {option} runs/NAME")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a directory: choose a directory for the run")
    if resume and not (path / A.CONFIG).exists():
        raise ConfigError(f"--resume: {path} holds no run (no config.json); drop --resume to start one")
    return path


def _click_exceptions():
    """The module of the click exceptions typer raises (typer vendors click since 0.2x)."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - an older typer on the real click
        from click import exceptions
    return exceptions


def usage_line(err: Exception) -> str:
    """A click usage error (a bad flag value, an unknown or missing option) on one line, naming the command and
    where its usage is."""
    ctx = getattr(err, "ctx", None)
    command = getattr(ctx, "command_path", None) or "taskvec"
    return f"{command}: {one_line(Exception(err.format_message()))} (see {command} --help)"


def run_app(app: typer.Typer, args: list[str] | None = None) -> NoReturn:
    """Run a typer app as a console script: a usage error (``--k many``, ``--no-such-flag``, a missing ``--out``)
    is one line ``error: ...`` with exit code 2, like every other mistake, instead of click's boxed panel."""
    ex = _click_exceptions()
    try:
        code = app(args=args, prog_name="taskvec", standalone_mode=False)
    except ex.NoArgsIsHelpError as err:  # `taskvec` alone: its help
        typer.echo(err.format_message())
        code = 2
    except ex.UsageError as err:
        typer.echo(f"error: {usage_line(err)}", err=True)
        code = 2
    except ex.ClickException as err:
        typer.echo(f"error: {one_line(Exception(err.format_message()))}", err=True)
        code = err.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
