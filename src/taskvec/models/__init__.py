"""Models: named offline models, any HF causal LM, and their profiles."""
from taskvec.models.profile import BosPolicy, LMProfile, profile_of
from taskvec.models.registry import DEFAULT_MODEL, LM, NAMED_MODELS, cache_dir, load_model, prepare_named

__all__ = [
    "BosPolicy", "LMProfile", "profile_of", "DEFAULT_MODEL", "LM", "NAMED_MODELS", "cache_dir", "load_model",
    "prepare_named",
]
