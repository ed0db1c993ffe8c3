"""Every error class of taskvec, typed by what the user got wrong. Each carries a one-line message that says what
to fix.

The CLI catches :class:`TaskvecError` and prints ``error: <message>`` with exit code 2, never a traceback.
"""
from __future__ import annotations


class TaskvecError(Exception):
    """Base class of every error caused by bad input (not by a bug)."""


class ModelNotFoundError(TaskvecError):
    """An unknown model name or a path that does not hold a model."""


class LayerError(TaskvecError):
    """A layer index outside ``0 .. n_layers - 1``."""


class PositionError(TaskvecError):
    """A token position outside a prompt."""


class WidthError(TaskvecError):
    """A vector whose width is not the model's ``d_model``."""


class EmptyInputError(TaskvecError):
    """An empty prompt list, task or file."""


class TokenizationError(TaskvecError):
    """Labels that collide or tokenize unexpectedly."""


class AlignmentError(TaskvecError):
    """Prompts whose token layouts must align but do not."""


class TaskFileError(TaskvecError):
    """A malformed custom task file (the message names the line)."""


class ConfigError(TaskvecError):
    """A config with unknown keys or bad values, or one that does not match a run being resumed."""


class NonFiniteError(TaskvecError):
    """NaN or inf in a vector or a loss."""


class ChoiceError(ConfigError, ValueError):
    """An option whose value is not one of its allowed choices (``--loss foo``, ``mode="sideways"``).

    Also a :class:`ValueError`, so API callers that caught the plain ``ValueError`` raised before keep working."""


class RangeError(ConfigError, ValueError):
    """A number outside its allowed range (a batch size of 0, a negative trial count, a shrinkage above 1)."""


class ParseError(ConfigError, ValueError):
    """A value that cannot be read as what it stands for (``--layers 2-x``, ``--shrinkage lots``)."""


class DeviceError(ConfigError):
    """A device that does not exist here (``--device cuda`` without a GPU, ``cuda:3`` on a one-GPU machine), or a
    model that does not fit the devices it is given."""


class RankError(ConfigError):
    """A mistake every rank of a torchrun world stops on together: the ranks disagree on the config, or one of
    them was refused (a bad task, a refused resume). Raised on every rank (``rank`` says which one); the command
    line prints it on rank 0 only, so the mistake reads as one line (docs/distributed.md)."""

    def __init__(self, message: str, rank: int = 0):
        super().__init__(message)
        self.rank = rank


class TooFewTrialsError(TaskvecError):
    """Fewer trials (or samples) than conditions, or a condition with no sample (dPCA, probes): run more trials."""


class EagerAttentionError(TaskvecError):
    """A model whose attention cannot be switched to eager (no attention probabilities to differentiate)."""


class LayerSkippingWarning(UserWarning):
    """Layer skipping changed a model's logits (or failed) in the probe, so sweeps run every layer instead (a
    warning, not an error: the numbers stay exact, only slower)."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (inner line breaks become ``; ``), or its class name if it has none."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


__all__ = ["TaskvecError", "ModelNotFoundError", "LayerError", "PositionError", "WidthError", "EmptyInputError",
           "TokenizationError", "AlignmentError", "TaskFileError", "ConfigError", "NonFiniteError", "ChoiceError",
           "RangeError", "ParseError", "DeviceError", "RankError", "TooFewTrialsError", "EagerAttentionError",
           "LayerSkippingWarning"]
