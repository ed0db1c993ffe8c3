"""One rule for every command line face: a user mistake (:class:`~taskvec.errors.TaskvecError`, or a path that
cannot be used) prints ``error: <one line>`` on stderr and exits with code 2, never a traceback.

Commands check what they can before loading a model (:func:`check_choice`, :func:`check_at_least`), so a bad
flag costs the start-up time only and leaves no half-made run directory."""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer

from taskvec.errors import ChoiceError, RangeError, TaskvecError

F = TypeVar("F", bound=Callable)


def one_line(err: BaseException) -> str:
    """The error's message on one line (inner line breaks become ``; ``), or its class name if it has none."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
"""OS errors that on the command line mean a bad path (``--config`` naming a directory, say); reported like
:class:`TaskvecError` where no command turned them into one."""


def friendly(fn: F) -> F:
    """Decorate a typer command so :class:`TaskvecError` (and a bad path: :data:`PATH_ERRORS`) becomes
    ``error: ...`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TaskvecError as err:
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(2) from None
        except PATH_ERRORS as err:  # a path given on the command line that cannot be used as one
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(2) from None

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
