"""Training with ``L = L_ICL + λ · L_TVP`` (docs/spec.md B.3, B.5).

One step, for a batch of B sequences of n examples each (layout ``x→y``)::

    ICL pass:  [x_0 → y_0  x_1 → y_1 … x_{n-1} → y_{n-1}]     loss at every → (L_ICL)
               θ_i = h_{l*} at the → of example i (recorded in the SAME pass; grads flow through θ_i)
    TVP pass:  B·|S| query-only sequences [x_q →], one per (sequence, i ∈ S), x_q a fresh draw of that
               sequence's task; h_{l*} at → replaced by θ_i (intervene engine)   loss at → (L_TVP)

``S`` is every example index i ≥ 1 (at least one full demonstration before the slot), or a random subset of
``tvp_slots`` of them per step. Data is a pure function of (seed, step, rank), and λ of ``tvp_schedule`` a function
of the step, so a resumed run sees exactly the batches and weights an uninterrupted one would. Multi-process:
launch with ``torchrun`` (DDP; gloo on CPU, nccl on GPU).

The passes above are what :class:`~taskvec.scratch.objective.Objective` computes; by default it computes them on the training fast path
(``ScratchModel.forward`` with ``keep``/``record``/``inject`` and ``fast_query_pass``: no hooks, the last layer only
where a loss reads it, the query pass without the states θ overwrites), the plain forward with hooks being the
reference (``fast=False``).
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Callable, ClassVar, Literal

import torch
import torch.distributed as dist
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

import taskvec.artifacts as A
from taskvec.distributed import world
from taskvec.errors import ConfigError, LayerError, NonFiniteError
from taskvec.experiment import ExperimentConfig, read_config_file
from taskvec.runs import RunStore, save_table, store_table
from taskvec.scratch.layouts import canonical, plan
from taskvec.scratch.model import PRESETS, ScratchModel, build_model, positions_for
from taskvec.scratch.objective import Objective
from taskvec.scratch.tasks import Task, TaskConfig, make_task


class TrainConfig(ExperimentConfig):
    """Everything that defines a training run (saved in the run's ``config.json``; must match on ``--resume``).

    ``tvp_weight`` (λ) and ``tvp_layer`` (l*): if only ``tvp_layer`` is given λ = 1; if only λ > 0 is given
    l* = n_layer // 2; if neither, the run is vanilla (λ = 0). ``tvp_schedule`` scales λ by the step (see
    :func:`parse_schedule`): ``constant``, ``warmup:N``, ``after:N`` or ``after:N,warmup:M``. ``lr_warmup``:
    steps over which the learning rate rises linearly from 0 to ``lr`` (0: none; :func:`lr_at`). ``precision``:
    ``auto`` (bfloat16 autocast on CUDA, float32 elsewhere), ``fp32`` or ``bf16`` (autocast on any device;
    parameters, optimizer state and losses stay float32).
    """

    kind: ClassVar[str] = "train"

    task: TaskConfig = Field(default_factory=TaskConfig)
    layout: str = "x→y"
    preset: str = "cpu-small"
    n_layer: int | None = Field(None, ge=1)
    n_head: int | None = Field(None, ge=1)
    n_embd: int | None = Field(None, ge=1)
    k_max: int = 20
    steps: int = 10_000
    batch_size: int = 64
    lr: float | None = Field(None, gt=0, allow_inf_nan=False)
    lr_warmup: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False)
    tvp_layer: int | None = None
    tvp_weight: float | None = Field(None, ge=0, allow_inf_nan=False)
    tvp_schedule: str = "constant"
    detach_theta: bool = False
    tvp_slots: int | None = Field(None, ge=1, description="random example slots per sequence in L_TVP")
    tvp_shared_query: bool = False
    curriculum: bool = False
    curriculum_every: int = 2000
    curriculum_start: int = 5
    seed: int = Field(0, ge=0)
    save_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = Field(2, ge=1)

    @field_validator("tvp_schedule", mode="before")
    @classmethod
    def _schedule(cls, v):
        return format_schedule(*parse_schedule(v))  # canonical text; ValueError: one line

    @model_validator(mode="after")
    def _resolve(self) -> "TrainConfig":
        self.layout = canonical(self.layout)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        n_layer = self.n_layer or PRESETS[self.preset]["n_layer"]
        n_head = self.n_head or PRESETS[self.preset]["n_head"]
        n_embd = self.n_embd or PRESETS[self.preset]["n_embd"]
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not divisible by n_head {n_head} (each head gets n_embd / n_head "
                             "dimensions): give an n_head that divides n_embd, or another n_embd")
        if self.tvp_weight is None:
            self.tvp_weight = 1.0 if self.tvp_layer is not None else 0.0
        if self.tvp_weight < 0:
            raise ValueError(f"tvp_weight must be >= 0, got {self.tvp_weight}")
        if self.tvp_weight > 0 and self.tvp_layer is None:
            self.tvp_layer = n_layer // 2
        if self.tvp_schedule != "constant" and self.tvp_weight == 0:
            raise ValueError(f"tvp_schedule {self.tvp_schedule!r} schedules the TVP-loss, but this run has none: "
                             "give tvp_layer or tvp_weight")
        if self.tvp_layer is not None and not 0 <= self.tvp_layer < n_layer:
            raise ValueError(f"tvp_layer {self.tvp_layer} is beyond the model: layers are 0..{n_layer - 1}")
        if self.lr is None:
            self.lr = 3e-4 if self.task.name == "token_offset" else 1e-4
        for name in ("k_max", "steps", "batch_size", "save_every", "log_every", "curriculum_every",
                     "curriculum_start"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.lr_warmup < 0:
            raise ValueError(f"lr_warmup must be >= 0 (steps of linear learning-rate warm-up), got {self.lr_warmup}")
        if self.curriculum and self.task.name == "linear_regression" and self.curriculum_start > self.task.d:
            raise ValueError(f"curriculum_start {self.curriculum_start} is above the input dimension d = "
                             f"{self.task.d}: start at most at d")
        if self.tvp_shared_query and self.layout != "x→y":
            raise ValueError("tvp_shared_query needs the x→y layout (the slot must come after the query)")
        if self.tvp_weight > 0 and self.k_max < 2:
            raise ValueError("the TVP-loss needs k_max >= 2 (a slot with at least one demonstration)")
        return self

    @classmethod
    def config_error(cls, err: ValidationError) -> str:
        return f"bad training config: {validation_message(err)}"

    def saved(self) -> dict:
        """The JSON form in ``config.json``; a ``constant`` λ schedule is left out, so runs written before
        ``tvp_schedule`` existed still resume (their config has no such key)."""
        out = super().saved()
        if out.get("tvp_schedule") == "constant":
            del out["tvp_schedule"]
        if out.get("lr_warmup") == 0:  # likewise for runs from before the learning-rate warm-up
            del out["lr_warmup"]
        if out.get("precision") == "auto":  # and before the precision choice
            del out["precision"]
        return out

    @property
    def uses_tvp(self) -> bool:
        return bool(self.tvp_weight and self.tvp_weight > 0)


def load_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML/JSON file (or a run's ``config.json``) and/or keyword overrides
    (those that are not ``None`` win; ``task`` keys merge); bad keys → one-line :class:`ConfigError`."""
    data: dict = read_config_file(path)
    if isinstance(data.get("config"), dict) and "versions" in data:  # a run directory's config.json
        data = dict(data["config"])
    task = dict(data.pop("task", {}) or {})
    task.update(overrides.pop("task", {}) or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["task"] = task
    return TrainConfig(**data)  # a mistake: one line (TrainConfig.config_error)


def validation_message(e: ValidationError) -> str:
    """The first pydantic error as ``field: message`` (unknown keys say so; a check of several fields gives its
    message alone)."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    msg = " ".join(err.get("msg", "invalid").removeprefix("Value error, ").split())
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    return f"{loc}: {msg}" if loc else msg


# ----------------------------------------------------------------------------------------------- λ schedule

SCHEDULE_FORMS = "constant, warmup:STEPS, after:STEPS or after:STEPS,warmup:STEPS (STEPS a whole number >= 1)"


def parse_schedule(text: str) -> tuple[int, int]:
    """``tvp_schedule`` → ``(after, warmup)``: λ is 0 up to step ``after``, then rises linearly over ``warmup``
    steps to its full value (``warmup`` 0: at once).

    Grammar (spaces ignored, terms in any order, each at most once)::

        constant                    λ at every step                        → (0, 0)
        warmup:N                    λ · min(1, step / N)                   → (0, N)
        after:N                     0 for step ≤ N, then λ                  → (N, 0)
        after:N,warmup:M            0 for step ≤ N, then λ · min(1, (step - N) / M)

    Raises:
        ValueError: one line naming the text and the accepted forms.
    """
    bad = ValueError(f"cannot read {text!r}: write {SCHEDULE_FORMS}")
    if not isinstance(text, str):
        raise bad
    compact = "".join(text.split()).lower()
    if compact == "constant":
        return 0, 0
    terms: dict[str, int] = {}
    for term in compact.split(","):
        name, sep, value = term.partition(":")
        if not sep or name not in ("after", "warmup") or name in terms or not re.fullmatch(r"[0-9]+", value) \
                or int(value) < 1:
            raise bad
        terms[name] = int(value)
    return terms.get("after", 0), terms.get("warmup", 0)


def format_schedule(after: int, warmup: int) -> str:
    """The canonical text of ``(after, warmup)`` (what a run's ``config.json`` holds)."""
    parts = ([f"after:{after}"] if after else []) + ([f"warmup:{warmup}"] if warmup else [])
    return ",".join(parts) or "constant"


def tvp_weight_at(cfg: TrainConfig, step: int) -> float:
    """λ at (1-based) ``step`` under ``cfg.tvp_schedule``: a function of the step alone, so a resumed run uses
    the values an uninterrupted one would."""
    weight = float(cfg.tvp_weight or 0.0)
    after, warmup = parse_schedule(cfg.tvp_schedule)
    if step <= after:
        return 0.0
    if warmup:
        return weight * min(1.0, (step - after) / warmup)
    return weight


# ----------------------------------------------------------------------------------------------- data


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of (1-based) ``step``: ``lr · min(1, step / lr_warmup)`` (linear warm-up, then
    constant)."""
    return cfg.lr * min(1.0, step / cfg.lr_warmup) if cfg.lr_warmup else cfg.lr


def autocast_dtype(cfg: TrainConfig, device: str) -> torch.dtype | None:
    """The autocast dtype of a run on ``device`` (``None``: plain float32)."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and torch.device(device).type == "cuda"):
        return torch.bfloat16
    return None


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The data generator of one (seed, step, rank): batches are reproducible without saving RNG state."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 4099 + rank) % (2**62))


def curriculum_at(cfg: TrainConfig, step: int) -> tuple[int, int]:
    """(active input dims, examples per sequence) at ``step``.

    Garg et al.: stage 0 has ``curriculum_start`` dims (5 in the paper) and 11 points; every
    ``curriculum_every`` steps adds one dim and two points, up to ``task.d`` and ``k_max``.
    """
    d, k = cfg.task.d, cfg.k_max
    if not cfg.curriculum:
        return d, k
    stage = (step - 1) // cfg.curriculum_every
    return min(d, min(cfg.curriculum_start, d) + stage), min(k, min(11, k) + 2 * stage)


def sample_batch(cfg: TrainConfig, task: Task, step: int, rank: int, batch: int) -> dict[str, torch.Tensor]:
    """Fresh training data: ``xs [B, n, ...]``, ``ys [B, n]``, TVP slots ``S [s]`` and queries
    ``xq [B, s, ...]``, ``yq [B, s]``."""
    gen = step_generator(cfg.seed, step, rank)
    d_active, n = curriculum_at(cfg, step)
    params = task.draw_tasks(batch, gen)
    xs, ys = task.draw_points(params, n, gen)
    out = {"xs": xs, "ys": ys}
    if cfg.uses_tvp:
        slots = torch.arange(1, n)
        if cfg.tvp_slots is not None and cfg.tvp_slots < len(slots):
            slots = slots[torch.randperm(len(slots), generator=gen)[: cfg.tvp_slots]].sort().values
        xq, yq = task.draw_points(params, 1 if cfg.tvp_shared_query else len(slots), gen)
        out.update(slots=slots, xq=xq, yq=yq)
    if d_active < cfg.task.d and not task.discrete:  # curriculum: zero the inactive coordinates, relabel
        for kx, ky in (("xs", "ys"), ("xq", "yq")):
            if kx in out:
                noise = out[ky] - task.label(params, out[kx])  # the label noise drawn above is kept
                out[kx] = out[kx].clone()
                out[kx][..., d_active:] = 0
                out[ky] = task.label(params, out[kx]) + noise
    return out


# ----------------------------------------------------------------------------------------------- run dir


def checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first."""
    root = out_dir / A.CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and (p / A.TRAINER_STATE).exists()),
                  key=lambda p: int(p.name.split("-")[1]))


ADDITIVE = ("steps", "save_every", "log_every", "keep_checkpoints")
"""Config keys a resumed run may change (e.g. more ``steps`` to extend a run): they decide how long it runs and
what it writes, never what a step computes."""


def _check_run_dir(out_dir: Path, cfg: TrainConfig, resume: bool) -> None:
    """Refuse a resume of nothing, of another config, or a fresh run into a used directory (one line)."""
    if resume and not (out_dir / A.CONFIG).exists():
        if (out_dir / "config.yaml").exists():
            raise ConfigError(f"--resume: {out_dir} was written by an older taskvec (config.yaml, no config.json) "
                              "and cannot be resumed by this one; start a new --out")
        raise ConfigError(f"--resume: {out_dir} holds no run (no config.json); drop --resume to start one")
    RunStore.check(out_dir, cfg.saved(), resume, (*ADDITIVE, *cfg.newer_fields(out_dir)))


def save_checkpoint(out_dir: Path, model: ScratchModel, opt: torch.optim.Optimizer, step: int,
                    keep: int) -> Path:
    """Write ``checkpoints/step-N`` atomically (tmp dir + rename); keep the last ``keep``."""
    root = out_dir / A.CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": opt.state_dict()}, tmp / A.TRAINER_STATE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_csv(store: RunStore) -> None:
    """``log.csv``: the training curve of the finished intervals (the run store's rows), an export for other tools;
    nothing reads it back (the report reads :func:`train_tables`)."""
    table = store.table()
    if len(table):
        save_table(table.drop(columns="unit"), store.path / A.LOG_CSV)


def _truncate_log(out_dir: Path, step: int) -> None:
    path = out_dir / A.LOG_JSONL
    if path.exists():
        keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
        path.write_text("".join(l + "\n" for l in keep))


def training_curve(out_dir: str | Path):
    """The logged rows (step, loss, icl_loss, tvp_loss, icl_err, seq_per_s, unit) of a run's finished intervals:
    the :class:`~taskvec.runs.RunStore` table of its directory (:func:`taskvec.runs.store_table`), as a DataFrame."""
    return store_table(out_dir)


def train_tables(run_dir: str | Path) -> A.Tables:
    """The tables of a training run directory (lazy, :class:`~taskvec.artifacts.Tables`): ``log``, one row per
    logged step (``step, loss, icl_loss, tvp_loss, icl_err, seq_per_s[, tvp_weight]``) of the finished checkpoint
    intervals, from the run store (what ``log.csv`` exports). Before the first checkpoint (and in a directory of a
    taskvec from before the run store) the store holds no rows: then the live log ``log.jsonl`` (every logged row
    as it happens) is read instead."""
    run_dir = Path(run_dir)

    def log():
        import pandas as pd

        if (run_dir / A.CONFIG).exists():
            table = store_table(run_dir)
            if len(table):
                return table.drop(columns="unit")
        if (run_dir / A.LOG_JSONL).exists():  # no finished interval yet (or no store): the live log
            return pd.read_json(run_dir / A.LOG_JSONL, lines=True)
        return pd.DataFrame()

    return A.Tables({"log": log})


# ----------------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, device: str = "cpu",
          progress: bool = True, tensorboard: bool = True,
          on_step: Callable[[int, ScratchModel], None] | None = None, compile: bool = False) -> Path:
    """Train a model; returns the directory of the final model (``out_dir/model``). Writes no ``report.html``:
    :func:`taskvec.run` (:mod:`taskvec.kinds`) is this plus the report.

    Args:
        cfg: the run config. out_dir: run directory (config.json, results.jsonl, log.jsonl/csv, tb/,
            checkpoints/, model/): a :class:`~taskvec.runs.RunStore` whose units are the checkpoint intervals
            ``train/step-NNNNNNN`` and whose rows are the logged metrics (:func:`training_curve`).
        resume: continue from the newest checkpoint (the config must match but for :data:`ADDITIVE` keys, else
            :class:`ConfigError`).
        on_step: called as ``on_step(step, model)`` after every optimizer step (tests, custom hooks).
        compile: ``torch.compile`` the loss computation (:class:`Objective`): a one-off compile (~30–60 s per
            sequence length on 2 CPU cores) for a few per cent per step on CPU; see docs/scratch.md#speed.

    Raises:
        NonFiniteError: the loss became NaN/inf (message names the step and the last good checkpoint).
    """
    out_dir = Path(out_dir)
    from taskvec.models.devices import resolve_device

    device = str(resolve_device(device))  # --device cuda without a GPU: one line, before any work
    with world("nccl" if device.startswith("cuda") else "gloo") as w:
        return _train(cfg, out_dir, resume, device, progress and w.rank == 0, tensorboard, on_step, w.rank, w.size,
                      compile=compile)


def make_optimizer(params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused (one kernel for every tensor: the same update, ~3× less optimizer time on CPU) where torch has
    a fused kernel for the parameters' device."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def _fresh_model(cfg: TrainConfig, task: Task) -> ScratchModel:
    """A new model for ``cfg`` (seeded by ``cfg.seed``); ``tvp_layer`` beyond its layers is a one-line error."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.preset, d_in=task.d_in, vocab=task.vocab, n_positions=positions_for(cfg.k_max),
                        task=cfg.task.model_dump(), layout=cfg.layout, tvp_layer=cfg.tvp_layer,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd)
    if cfg.tvp_layer is not None and cfg.tvp_layer >= model.n_layers:
        raise LayerError(f"tvp_layer {cfg.tvp_layer} is beyond the model: layers are 0..{model.n_layers - 1}")
    return model


def _end_interval(store: RunStore, out_dir: Path, model: ScratchModel, opt: torch.optim.Optimizer, step: int,
                  cfg: TrainConfig, rows: list[dict], since: float) -> Path:
    """The end of a checkpoint interval (rank 0): the interval's logged ``rows`` as the store's unit
    ``train/step-NNNNNNN`` first (a kill before the checkpoint redoes these steps and finds the unit done, a kill
    after it loses nothing), then the checkpoint and ``log.csv``. Returns the checkpoint's directory."""
    unit = f"train/step-{step:07d}"
    if not store.done(unit):
        store.append(unit, rows, seconds=round(time.perf_counter() - since, 3))
    ckpt = save_checkpoint(out_dir, model, opt, step, cfg.keep_checkpoints)
    _write_csv(store)
    return ckpt


def _resumed(model: ScratchModel, cfg: TrainConfig, out_dir: Path, resume: bool,
             device: str) -> tuple[ScratchModel, torch.optim.Adam, int, Path | None]:
    """``(model, optimizer, last step done, last checkpoint)``: the fresh ``model`` and a new optimizer, or with
    ``resume`` the newest checkpoint's model and optimizer state; the model on ``device`` in training mode."""
    start, last_ckpt, opt_state = 0, None, None
    ckpts = checkpoints(out_dir) if resume else []
    if ckpts:
        last_ckpt = ckpts[-1]
        model = ScratchModel.from_pretrained(last_ckpt)
        state = torch.load(last_ckpt / A.TRAINER_STATE, weights_only=False)
        start, opt_state = state["step"], state["optimizer"]
    model.to(device).train()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.lr)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    return model, opt, start, last_ckpt


def _log_row(cfg: TrainConfig, task: Task, step: int, stats: torch.Tensor, lam: float, seq_per_s: float) -> dict:
    """One logged row: ``stats`` = (loss, ICL loss, TVP loss) averaged over the ranks; the ICL error normalised by
    E[y²] of this step's curriculum; λ of the step when the run has a TVP-loss."""
    row = {"step": step, "loss": stats[0].item(), "icl_loss": stats[1].item(), "tvp_loss": stats[2].item(),
           "icl_err": stats[1].item() / task.y_var_at(curriculum_at(cfg, step)[0]), "seq_per_s": seq_per_s}
    if cfg.uses_tvp:
        row["tvp_weight"] = lam  # λ of this step (tvp_schedule)
    return row


def _train(cfg, out_dir, resume, device, progress, tensorboard, on_step, rank, world, compile=False) -> Path:
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {world} processes")
    task = make_task(cfg.task)
    if cfg.uses_tvp:
        plan(cfg.layout, 2, query=True).require_slot()  # clear error for xy + TVP
    _check_run_dir(out_dir, cfg, resume)
    model = _fresh_model(cfg, task)  # built (and checked) before the run directory is made
    if world > 1:
        dist.barrier()  # every rank has checked the run dir before rank 0 writes into it
    store = None
    if rank == 0:  # config.json: the config, versions, world size and device
        store = RunStore(out_dir, cfg.saved(), resume=resume, additive=(*ADDITIVE, *cfg.newer_fields(out_dir)),
                         writer=True, extra={"kind": cfg.kind, "world_size": world, "device": device})
    model, opt, start, last_ckpt = _resumed(model, cfg, out_dir, resume, device)
    params = [p for p in model.parameters() if p.requires_grad]
    objective: nn.Module = Objective(model, cfg, compile=compile)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective)

    writer = None
    if rank == 0:
        _truncate_log(out_dir, start)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / A.TENSORBOARD), purge_step=start + 1 if start else None)
    log = open(out_dir / A.LOG_JSONL, "a") if rank == 0 else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True)
    local_batch = cfg.batch_size // world
    amp = autocast_dtype(cfg, device)
    t0, seen = time.perf_counter(), 0
    pending: list[dict] = []  # logged rows since the last checkpoint: one run-store unit per interval
    t_unit = t0
    try:
        for step in range(start + 1, cfg.steps + 1):
            batch = {k: v.to(device) for k, v in sample_batch(cfg, task, step, rank, local_batch).items()}
            lam = tvp_weight_at(cfg, step)
            if cfg.lr_warmup:
                for group in opt.param_groups:  # a function of the step alone: a resumed run gets the same lr
                    group["lr"] = lr_at(cfg, step)
            log_step = step % cfg.log_every == 0 or step == cfg.steps
            with torch.autocast(device_type=torch.device(device).type, dtype=amp or torch.bfloat16,
                                enabled=amp is not None):
                loss, icl, tvp = objective(batch, tvp_weight=lam, need_tvp=log_step)
            loss, icl, tvp = loss.float(), icl.float(), tvp.float()
            finite = torch.isfinite(loss.detach()).float()
            if world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                where = f"last good checkpoint: {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                raise NonFiniteError(f"loss became {loss.item()} at step {step}; training stopped ({where})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            seen += local_batch * world
            if on_step is not None:
                on_step(step, model)
            if rank == 0 and log_step:
                stats = torch.stack([loss.detach(), icl, tvp])
                if world > 1:
                    dist.all_reduce(stats)
                    stats /= world
                row = _log_row(cfg, task, step, stats, lam, seen / max(time.perf_counter() - t0, 1e-9))
                log.write(json.dumps(row) + "\n")
                log.flush()
                pending.append(row)
                if writer is not None:
                    for k in ("loss", "icl_loss", "tvp_loss", "icl_err", "tvp_weight"):
                        if k in row:
                            writer.add_scalar(f"train/{k}", row[k], step)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.3f}", icl=f"{row['icl_err']:.3f}")
            elif world > 1 and log_step:
                stats = torch.stack([loss.detach(), icl, tvp])
                dist.all_reduce(stats)
            if bar is not None:
                bar.update(1)
            if step % cfg.save_every == 0 or step == cfg.steps:
                if rank == 0:
                    last_ckpt = _end_interval(store, out_dir, model, opt, step, cfg, pending, t_unit)
                    pending, t_unit = [], time.perf_counter()
                if world > 1:
                    dist.barrier()
        final = out_dir / A.MODEL
        if rank == 0:
            model.save_pretrained(final)
            _write_csv(store)
        return final
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        if writer is not None:
            writer.close()


def main_ddp() -> None:  # pragma: no cover - entry for `torchrun -m taskvec.scratch.train CONFIG OUT`
    import sys

    cfg = load_config(sys.argv[1])
    train(cfg, sys.argv[2], resume="--resume" in sys.argv)


if __name__ == "__main__":  # pragma: no cover
    main_ddp()
