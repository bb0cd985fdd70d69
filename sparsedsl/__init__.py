"""sparsedsl: a compiler for attention sparsity patterns.

    import sparsedsl
    p = sparsedsl.compile_pattern("patterns/streaming_llm.attn", window=2048)
    out = p(q, k, v)
"""
from .builder import (H, Hk, causal, band, dilated, full, global_, h, heads, hk, k, landmarks, local_blocks,
                      maximum, minimum, none, q, sink, strided, topk, where, window)
from .compiler import compile_pattern
from .errors import InputError, PatternError, SparseDSLError
from .runtime.pattern import CompiledPattern

__version__ = "0.1.0"

__all__ = [
    "compile_pattern", "CompiledPattern", "PatternError", "InputError", "SparseDSLError",
    "causal", "full", "none", "window", "band", "sink", "global_", "dilated", "local_blocks", "strided",
    "where", "landmarks", "topk", "heads", "minimum", "maximum", "h", "H", "hk", "Hk", "q", "k",
]
