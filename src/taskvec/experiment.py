"""The one experiment pattern: a validated config -> units of work -> the run store -> a report.

Every experiment (the study, saliency, dPCA, heads, from-scratch train, evaluate and compare) is a function
``run_<name>(cfg, out, resume=False, lm=None) -> Path`` whose ``cfg`` subclasses :class:`ExperimentConfig`, and
one entry of the registry :data:`taskvec.kinds.KINDS`:

1. the config is a pydantic model holding every default (the CLI passes only the flags a user gave, on top of a
   ``--config`` file: flags always win, see :func:`config_from`); a bad value is a one-line
   :class:`~taskvec.errors.ConfigError` naming the field and its flag;
2. :meth:`~taskvec.runs.RunStore.check` refuses a bad resume before any model is loaded, and :func:`open_store`
   saves ``config.json``: the run's ``kind``, the config, package versions, and the model's source with the
   sha256 of its weights;
3. each unit of work goes through :meth:`taskvec.runs.RunStore.run_unit` (append, fsync, skipped on resume);
4. the experiment writes tables; ``report.html`` is written by :func:`taskvec.kinds.write_report` from the run
   directory alone (:func:`taskvec.run` and ``taskvec.run_<name>`` run and then report).

Example::

    cfg = config_from(SaliencyConfig, None, {"model": "smollm2-135m", "n_trials": 8})
    run_dir = taskvec.run(cfg, "runs/saliency")            # resumable: taskvec.run(cfg, run_dir, resume=True)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import taskvec.artifacts as A
from taskvec.errors import ConfigError
from taskvec.runs import RunStore

C = TypeVar("C", bound="ExperimentConfig")


class ValidatedModel(BaseModel):
    """A pydantic model whose mistakes are one-line :class:`ConfigError` naming the field (never a pydantic
    ``ValidationError``), however it is built: ``Cls(**fields)``, ``Cls.model_validate(...)`` or
    ``Cls.model_validate_json(...)``. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str] = "experiment"

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(type(self).config_error(err)) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any):
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as err:
            raise ConfigError(cls.config_error(err)) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any):
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as err:
            raise ConfigError(cls.config_error(err)) from None

    @classmethod
    def config_error(cls, err: ValidationError) -> str:
        """The first mistake of ``err`` on one line: ``<kind> config field 'name' (--flag): what is wrong``."""
        e = err.errors()[0]
        where = ".".join(str(x) for x in e["loc"])
        msg = " ".join(str(e["msg"]).removeprefix("Value error, ").split())
        if e.get("type") == "extra_forbidden":
            msg = "unknown key: not a field of this config (check its spelling)"
        if msg.startswith("--"):  # a validator's message that already names the flag
            return msg
        if not e["loc"]:  # a check of several fields: its message names them
            return f"{cls.kind} config: {msg}"
        flag = f" (--{str(e['loc'][0]).replace('_', '-')})"
        return f"{cls.kind} config field {where!r}{flag}: {msg}"


class ExperimentConfig(ValidatedModel):
    """Base of every experiment's config: unknown keys are refused; a mistake is a one-line :class:`ConfigError`
    naming the field (:class:`ValidatedModel`)."""

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        """Validate a dict (flags, a YAML file); a mistake raises :class:`ConfigError` naming the field."""
        return cls(**data)

    def saved(self) -> dict:
        """The JSON form saved in ``config.json`` (and compared on resume)."""
        return self.model_dump(mode="json")

    def newer_fields(self, out: str | Path) -> tuple[str, ...]:
        """The fields of this config that the run in ``out`` saved no value for and that hold their default here:
        fields a newer taskvec added. A resume accepts them (like additive keys: they only add units, or none)
        and records them, so a run started before an upgrade continues after it."""
        path = Path(out) / A.CONFIG
        if not path.is_file():
            return ()
        try:
            saved = json.loads(path.read_text()).get("config", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return ()  # RunStore.check says what is wrong with it
        fresh = type(self).model_construct().model_dump(mode="json")  # every field at its default
        now = self.saved()
        return tuple(k for k in now if k not in saved and k in fresh and now[k] == fresh[k])


class ModelExperimentConfig(ExperimentConfig):
    """An experiment on a pretrained LM: which model, on which device, in which dtype."""

    model: str = Field("gemma3-270m", description="named offline model, checkpoint directory or cached HF id")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto (a GPU if there is one)")
    dtype: str | None = Field(None, description="auto (float32 on a CPU, bfloat16 on a GPU), float32, bfloat16, "
                              "float16")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from taskvec.models.devices import resolve_device

        resolve_device(v)  # a device that does not exist here fails before any model loads
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        from taskvec.models.devices import DTYPES

        if v is not None and v != "auto" and v not in DTYPES:
            raise ValueError(f"--dtype must be one of auto, {', '.join(DTYPES)}, got {v!r}")
        return v

    def load(self, local_rank: int = 0):
        """Load :attr:`model` on :attr:`device` in :attr:`dtype` (:func:`taskvec.models.load_model`). Under
        torchrun, ``local_rank`` picks this process's GPU where :attr:`device` names none (``cuda``, ``auto``)."""
        from taskvec.models import load_model
        from taskvec.models.devices import resolve_device

        device = resolve_device(self.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return load_model(self.model, device=device, dtype=self.dtype)


def nonempty_separator(v: str) -> str:
    """A config's ``separator`` field, checked: an empty one glues every input to its answer ("France Paris"), so
    the prompts would ask something else (pydantic turns the ``ValueError`` into a one-line ``ConfigError``)."""
    if not v.strip():
        raise ValueError(f"separator {v!r} is empty: give the word between input and answer, e.g. 'is' or '->'")
    return v


def read_config_file(path: str | Path | None) -> dict:
    """A YAML or JSON mapping of config fields from ``path`` (``{}`` for ``None``), or the config a run directory's
    ``config.json`` saved (so ``--config runs/X/config.json`` reruns it); one-line errors."""
    return read_config_and_kind(path)[0]


def read_config_and_kind(path: str | Path | None) -> tuple[dict, str | None]:
    """:func:`read_config_file`'s fields, and the run kind a run's ``config.json`` saved (``None`` for any other
    file: a top-level ``kind:`` there stays among the fields, for the caller to read or the config to refuse)."""
    if path is None:
        return {}, None
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read config {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields")
    if isinstance(data.get("config"), dict) and "versions" in data:  # a run's config.json: rerun its config
        return data["config"], data.get("kind")
    return data, None


def config_from(cls: type[C], config_file: str | Path | None, flags: dict[str, Any]) -> C:
    """The config a command runs: the ``--config`` file's fields, then every flag the user gave (``None`` means
    "not given") on top. A flag never loses to the file, and the CLI keeps no defaults of its own."""
    given = {k: v for k, v in flags.items() if v is not None}
    return cls.from_dict({**read_config_file(config_file), **given})


def open_store(cfg: ExperimentConfig, out: str | Path, resume: bool, lm: Any = None, extra: dict | None = None,
               additive: tuple[str, ...] = (), rank: int = 0) -> RunStore:
    """The run store of ``cfg`` in ``out``, with the model's source and weights hash in ``config.json``.

    Call :meth:`RunStore.check` (cheap) before loading a model; this one writes ``config.json`` if it is new (on
    rank 0 of a torchrun world; a rank > 0 opens the run rank 0 made, see :class:`RunStore`)."""
    info = {"kind": cfg.kind, **(extra or {})}
    additive = (*additive, *cfg.newer_fields(out))
    if lm is not None:
        info.setdefault("model_source", dict(getattr(lm, "source", {}) or {}))
        info.setdefault("n_layers", lm.n_layers)
        info.setdefault("d_model", lm.d_model)
    return RunStore(out, cfg.saved(), resume=resume, extra=info, additive=additive, rank=rank, writer=True)
