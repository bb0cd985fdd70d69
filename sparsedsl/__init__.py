"""sparsedsl: a compiler for attention sparsity patterns.

    import sparsedsl
    p = sparsedsl.compile_pattern("patterns/streaming_llm.attn", window=2048)
    out = p(q, k, v)
"""
from . import builder as _builder
from .builder import ATOM_BUILDERS, H, Hk, causal, compensation, full, h, heads, hk, k, maximum, minimum, none, q
from .compiler import compile_pattern
from .errors import InputError, PatternError, SparseDSLError
from .runtime.pattern import CompiledPattern

globals().update({f.__name__: f for f in ATOM_BUILDERS.values()})  # window, band, ..., global_, where, topk

__version__ = "0.1.0"

__all__ = [
    "compile_pattern", "CompiledPattern", "PatternError", "InputError", "SparseDSLError",
    "causal", "full", "none", "compensation", *(f.__name__ for f in ATOM_BUILDERS.values()),
    "heads", "minimum", "maximum", "h", "H", "hk", "Hk", "q", "k",
]
del _builder


def __getattr__(name: str):
    """`sparsedsl.distributed` (context parallelism) is imported on first use, so that
    `import sparsedsl` stays light."""
    if name == "distributed":
        import importlib

        return importlib.import_module(".distributed", __name__)
    raise AttributeError(f"module 'sparsedsl' has no attribute {name!r}")
