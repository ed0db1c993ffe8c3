"""Synthetic in-context tasks (docs/spec.md B.1): a *task* is drawn per sequence, then fresh *points* of that task.

Every family has the same two-step interface, so training can draw fresh queries of the same task (TVP-loss)
and evaluation can build demonstrations and queries that share a task::

    task = make_task(TaskConfig(name="linear_regression", d=10))
    gen = torch.Generator().manual_seed(0)
    params = task.draw_tasks(64, gen)                # {"w": [64, 10], "id": [64]}
    xs, ys = task.draw_points(params, 20, gen)       # xs [64, 20, 10], ys [64, 20]

Numeric tasks give float ``xs [B, n, d_in]`` and ``ys [B, n]``; ``token_offset`` gives long ``xs, ys [B, n]``.
``params["id"]`` is the index in a finite task pool (``-1`` when tasks are drawn fresh), used to colour PCA plots.
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator

from taskvec.errors import ConfigError
from taskvec.experiment import ValidatedModel

TASKS = ("linear_regression", "sinusoid", "token_offset")


class TaskConfig(ValidatedModel):
    """A task family and its in- or out-of-distribution options.

    Attributes:
        name: one of :data:`TASKS`.
        d: input dimension of ``linear_regression``.
        noise: std of Gaussian label noise (numeric tasks).
        pool_size: if set, tasks are drawn from a fixed pool of this many (seeded by ``pool_seed``).
        vocab: ``token_offset`` vocabulary size V.
        offsets: ``token_offset`` offsets allowed (default ``1..16``); held-out offsets are an OOD shift.
        x_scale, w_scale: multiply inputs / weights (OOD).
        skew: if > 0, x ~ N(0, Σ) with eigenvalues ``∝ i^-skew`` normalised to trace d (OOD).
        half_subspace: x lives in the first ``d // 2`` coordinates only (OOD).
    """

    kind: ClassVar[str] = "task"

    name: Literal["linear_regression", "sinusoid", "token_offset"] = "linear_regression"
    d: int = 10
    noise: float = Field(0.0, ge=0, allow_inf_nan=False, description="label noise std")
    pool_size: int | None = Field(None, ge=1)
    pool_seed: int = Field(1234, ge=0)
    vocab: int = 64
    offsets: list[int] | None = None
    x_scale: float = Field(1.0, allow_inf_nan=False)
    w_scale: float = Field(1.0, allow_inf_nan=False)
    skew: float = Field(0.0, ge=0, allow_inf_nan=False)
    half_subspace: bool = False

    @field_validator("d", "vocab")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class Task:
    """Base class. ``discrete`` tasks use token embeddings and an LM head; numeric ones a linear read-in/out."""

    discrete: bool = False
    d_in: int = 1  # width of a numeric input vector
    vocab: int = 0  # number of symbols of a discrete task
    y_var: float = 1.0  # E[y^2] in distribution, label noise included: the all-zero predictor's error is 1

    def y_var_at(self, d_active: int) -> float:
        """``E[y^2]`` when only the first ``d_active`` input coordinates are non-zero (a curriculum stage)."""
        return self.y_var

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self._pool: dict[str, torch.Tensor] | None = None
        if cfg.pool_size is not None:
            if cfg.pool_size < 1:
                raise ConfigError(f"pool_size must be >= 1, got {cfg.pool_size}")
            pool_gen = torch.Generator().manual_seed(cfg.pool_seed)
            self._pool = self._fresh_tasks(cfg.pool_size, pool_gen)

    def _fresh_tasks(self, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def draw_tasks(self, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw ``batch`` tasks (from the pool if there is one). Every value is ``[batch, ...]``; ``"id"`` is
        the pool index or -1."""
        if self._pool is None:
            params = self._fresh_tasks(batch, gen)
            params["id"] = torch.full((batch,), -1, dtype=torch.long)
            return params
        idx = torch.randint(0, self.cfg.pool_size, (batch,), generator=gen)
        return self.pool_tasks(idx)

    def pool_tasks(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tasks ``idx [batch]`` of the finite pool."""
        if self._pool is None:
            raise ConfigError("this task has no finite pool: set pool_size")
        params = {k: v[idx] for k, v in self._pool.items()}
        params["id"] = idx.clone()
        return params

    def draw_points(self, params: dict[str, torch.Tensor], n: int, gen: torch.Generator):
        """Draw ``n`` fresh (x, y) points of each task. Returns ``xs``, ``ys`` (see module docstring)."""
        raise NotImplementedError

    def random_labels(self, params: dict[str, torch.Tensor], xs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Labels for ``xs`` from *independent* tasks (noisy-label corruption), same shape as ``ys``."""
        other = self._fresh_tasks(xs.shape[0], gen)
        return self.label(other, xs)

    def label(self, params: dict[str, torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def corrupt_labels(task: Task, params: dict, xs: torch.Tensor, ys: torch.Tensor, frac: float,
                   gen: torch.Generator) -> torch.Tensor:
    """Replace a fraction ``frac`` of labels (each independently) by labels of independent tasks.

    Args:
        xs: ``[B, n, ...]`` demonstration inputs; ys: ``[B, n]`` labels. Returns new ``ys [B, n]``.
    """
    if not 0.0 <= frac <= 1.0:
        raise ConfigError(f"noisy-label fraction must be in [0, 1], got {frac}")
    if frac == 0.0:
        return ys
    mask = torch.rand(ys.shape, generator=gen) < frac
    return torch.where(mask, task.random_labels(params, xs, gen), ys)


class LinearRegression(Task):
    """y = w·x (+ noise), x ~ N(0, I_d) (or OOD variants), w ~ N(0, I_d)."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.d_in = cfg.d
        scales = torch.ones(cfg.d)
        if cfg.skew > 0:
            eig = torch.arange(1, cfg.d + 1, dtype=torch.float32) ** (-cfg.skew)
            scales = (eig * cfg.d / eig.sum()).sqrt()
        if cfg.half_subspace:
            scales = scales.clone()
            scales[cfg.d // 2:] = 0.0
            scales = scales * math.sqrt(2.0)  # keep E|x|^2 = d
        self._x_std = scales * cfg.x_scale  # [d]
        self.y_var = float((self._x_std**2).sum()) * cfg.w_scale**2 + cfg.noise**2  # = d·x_scale²·w_scale² + σ²
        super().__init__(cfg)

    def y_var_at(self, d_active: int) -> float:
        """``E[(w·x + ε)^2] = Σ_{i < d_active} std(x_i)² · w_scale² + noise²``."""
        return float((self._x_std[:d_active] ** 2).sum()) * self.cfg.w_scale**2 + self.cfg.noise**2

    def _fresh_tasks(self, batch, gen):
        return {"w": torch.randn(batch, self.cfg.d, generator=gen) * self.cfg.w_scale}

    def label(self, params, xs):
        return torch.einsum("bnd,bd->bn", xs, params["w"])

    def draw_points(self, params, n, gen):
        batch = params["w"].shape[0]
        xs = torch.randn(batch, n, self.cfg.d, generator=gen) * self._x_std
        ys = self.label(params, xs)
        if self.cfg.noise > 0:
            ys = ys + self.cfg.noise * torch.randn(ys.shape, generator=gen)
        return xs, ys


class Sinusoid(Task):
    """y = A·sin(x + φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[-5, 5]."""

    d_in = 1

    def __init__(self, cfg: TaskConfig) -> None:
        self.y_var = (5.0**3 - 0.1**3) / (3 * 4.9) / 2 * cfg.w_scale**2 + cfg.noise**2  # E[A^2] E[sin^2] + σ²
        super().__init__(cfg)

    def _fresh_tasks(self, batch, gen):
        amp = 0.1 + 4.9 * torch.rand(batch, generator=gen)
        phase = math.pi * torch.rand(batch, generator=gen)
        return {"amp": amp * self.cfg.w_scale, "phase": phase}

    def label(self, params, xs):
        return params["amp"][:, None] * torch.sin(xs[..., 0] + params["phase"][:, None])

    def draw_points(self, params, n, gen):
        batch = params["amp"].shape[0]
        xs = (torch.rand(batch, n, 1, generator=gen) * 10 - 5) * self.cfg.x_scale
        ys = self.label(params, xs)
        if self.cfg.noise > 0:
            ys = ys + self.cfg.noise * torch.randn(ys.shape, generator=gen)
        return xs, ys


class TokenOffset(Task):
    """Symbols 0..V-1; task = offset c; y = (x + c) mod V."""

    discrete = True

    def __init__(self, cfg: TaskConfig) -> None:
        self.vocab = cfg.vocab
        offsets = cfg.offsets if cfg.offsets is not None else list(range(1, 17))
        if not offsets:
            raise ConfigError("token_offset needs at least one offset")
        self._offsets = torch.tensor(offsets, dtype=torch.long)
        super().__init__(cfg)

    def _fresh_tasks(self, batch, gen):
        idx = torch.randint(0, len(self._offsets), (batch,), generator=gen)
        return {"c": self._offsets[idx]}

    def label(self, params, xs):
        return (xs + params["c"][:, None]) % self.vocab

    def draw_points(self, params, n, gen):
        batch = params["c"].shape[0]
        xs = torch.randint(0, self.vocab, (batch, n), generator=gen)
        return xs, self.label(params, xs)


def make_task(cfg: TaskConfig) -> Task:
    """Build the task family named in ``cfg``."""
    classes = {"linear_regression": LinearRegression, "sinusoid": Sinusoid, "token_offset": TokenOffset}
    if cfg.name not in classes:
        raise ConfigError(f"unknown task {cfg.name!r}; choose one of {', '.join(TASKS)}")
    return classes[cfg.name](cfg)
