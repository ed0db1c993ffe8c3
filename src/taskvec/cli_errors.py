"""One rule for every command line face: a user mistake (:class:`~taskvec.errors.TaskvecError`) prints
``error: <one line>`` on stderr and exits with code 2, never a traceback."""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer

from taskvec.errors import TaskvecError

F = TypeVar("F", bound=Callable)


def friendly(fn: F) -> F:
    """Decorate a typer command so :class:`TaskvecError` becomes ``error: ...`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TaskvecError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
