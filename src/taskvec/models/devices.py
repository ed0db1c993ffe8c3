"""Devices, dtypes and batch budgets: what ``--device`` and ``--dtype`` mean.

* ``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")`` -> a ``torch.device`` that exists here (one-line
  :class:`~taskvec.errors.DeviceError` otherwise);
* ``resolve_dtype(None | "auto" | "float32" | "bfloat16" | "float16", device)`` -> float32 on a CPU, bfloat16 on
  a GPU by default; half precision on a CPU works but warns (about 100x slower on CPUs without bf16 units);
* ``batch_token_budget(lm)`` -> tokens (rows x length) per forward of a sweep: a constant on the CPU, from the free
  memory of the GPU otherwise.
"""
from __future__ import annotations

import warnings

import torch

from taskvec.errors import ChoiceError, DeviceError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
CPU_BATCH_TOKENS = 48_000
"""Tokens (rows x length) per forward on a CPU. With the unembedding out of the forwards (:mod:`taskvec.unembed`),
48k against 12k ran the local sweep of 20 prompts 9 % faster on smollm2-135m (21.4 -> 19.5 s) and equally fast on
gemma3-270m (9.4 s); peak memory stays about 2 GB on Gemma (docs/benchmarks.md)."""


class SlowDtypeWarning(UserWarning):
    """Half precision on a CPU: correct, but far slower than float32 there."""


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """The device ``spec`` names, checked to exist on this machine."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "cpu").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: no CUDA GPU is available here (torch {torch.__version__}); "
                              "use --device cpu or auto")
        index = spec.partition(":")[2]
        if index:
            if not index.isdigit():
                raise DeviceError(f"--device {spec}: write cuda:N with N a GPU index, e.g. cuda:0")
            if int(index) >= torch.cuda.device_count():
                raise DeviceError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s), "
                                  f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(spec)
    raise DeviceError(f"unknown device {spec!r}: use cpu, cuda, cuda:N or auto")


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The parameter dtype: ``None``/``"auto"`` gives float32 on a CPU and bfloat16 on a GPU."""
    if isinstance(spec, torch.dtype):
        dtype = spec
    elif spec is None or spec == "auto":
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    elif spec in DTYPES:
        dtype = DTYPES[spec]
    else:
        raise ChoiceError(f"--dtype must be one of auto, {', '.join(DTYPES)}, got {spec!r}")
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        warnings.warn(f"{str(dtype).replace('torch.', '')} on a CPU is about 100x slower than float32 here; "
                      "use --dtype float32 unless you are checking half-precision numbers", SlowDtypeWarning,
                      stacklevel=2)
    return dtype


def batch_token_budget(lm, fraction: float = 0.5) -> int:
    """Tokens (rows x length) a sweep may run in one forward on ``lm``'s device.

    On a CPU, :data:`CPU_BATCH_TOKENS`. On a GPU, ``fraction`` of the free memory divided by what one token costs
    in the forward: its key/value cache in every layer, a few residual-width activations and the MLP's
    intermediate activations of one layer (logits are kept for the last position only)."""
    device = lm.device
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    cfg = getattr(lm.model.config, "text_config", None) or lm.model.config
    width = lm.d_model
    heads = getattr(cfg, "num_attention_heads", 1) or 1
    kv_heads = getattr(cfg, "num_key_value_heads", heads) or heads
    head_dim = getattr(cfg, "head_dim", None) or width // heads
    inter = getattr(cfg, "intermediate_size", 4 * width) or 4 * width
    size = torch.finfo(next(lm.model.parameters()).dtype).bits // 8
    per_token = size * (2 * lm.n_layers * kv_heads * head_dim + 8 * width + 3 * inter)
    return max(1024, int(free * fraction / per_token))
