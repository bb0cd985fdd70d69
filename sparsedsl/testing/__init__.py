"""Hypothesis strategies and kernel oracles for property-based tests of
sparsedsl and of code that uses it.

    from hypothesis import given
    from sparsedsl.testing import patterns, shapes

    @given(patterns(), shapes())
    def test_something(p, shape):
        ...

This package needs `hypothesis` (``pip install sparsedsl[test]``); importing
``sparsedsl`` itself never imports it.

Everything generated is small (few nodes, small constants, short sequences) so
that a test can evaluate hundreds of examples on a CPU in seconds. Every name
below is importable from ``sparsedsl.testing``; each lives in one module:

Strategies (sparsedsl.testing.strategies: IR and shapes)
--------------------------------------------------------
int_exprs(symbols)       integer IR expressions (Const, Sym, IntOp)
conditions(symbols)      condition IR expressions (Bool, Cmp, Logic)
static_masks(max_depth)  mask IR nodes without data-dependent atoms
atoms()                  one static atom
head_switches()          per-head switches (heads[...] => ...)
dynamic_atoms()          landmarks(...) and topk(...) atoms
patterns()               ir.Pattern roots
lengths()                sequence lengths around block boundaries
shapes()                 dict(q_len, kv_len, num_heads, num_kv_heads)
kernel_shapes()          small attention shapes for the Triton interpreter (and dtypes, layouts);
                         with scales=, long key sequences around a pattern's own lengths

Scales (sparsedsl.testing.scales: read from a kernel plan)
----------------------------------------------------------
pattern_scales(plan)     the lengths where a pattern's structure changes (windows, blocks, budgets)
scale_lengths(scales)    lengths that reach and cross them

Source text (sparsedsl.testing.sources: .attn text, a second printer)
---------------------------------------------------------------------
rendered_patterns()      (source text, the ir.Pattern it must compile to)
pattern_sources()        .attn source text (printed or hand written)
ENTRY                    the name of the pattern those texts define

Oracles (sparsedsl.testing.oracles: torch imported lazily)
----------------------------------------------------------
attention_inputs(shape)  random q, k, v of a kernel_shapes() dict (contiguous, NaN-padded or transposed)
assert_matches_reference(p, q, k, v)
                         run a pattern's kernel and check it against the float64 reference
assert_grads_match_reference(p, q, k, v)
                         the same for the gradients dq, dk, dv

All IR is built with the smart constructors of ``sparsedsl.ir.build`` and is
in the form the parser produces for its printed text, so
``compile_pattern(to_text(p)).root is p`` holds for every generated ``p``.
"""
try:
    import hypothesis.strategies  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("sparsedsl.testing needs hypothesis; install it with `pip install hypothesis`") from e

# assert_grads_match_reference is public (tests and docs/api.md import it) but was never in __all__.
from .oracles import assert_grads_match_reference  # noqa: F401
from .oracles import assert_matches_reference, attention_inputs
from .scales import pattern_scales, scale_lengths
from .sources import ENTRY, pattern_sources, rendered_patterns
from .strategies import (ALL_SYMBOLS, HEAD_SYMBOLS, KERNEL_LAYOUTS, at_least, atoms, conditions, dynamic_atoms,
                         head_selections, head_switches, int_exprs, kernel_shapes, lengths, nonnegative_exprs,
                         patterns, shapes, static_masks)

__all__ = [
    "HEAD_SYMBOLS", "ALL_SYMBOLS", "ENTRY", "int_exprs", "nonnegative_exprs", "at_least", "conditions",
    "atoms", "static_masks", "head_switches", "dynamic_atoms", "head_selections", "patterns", "rendered_patterns",
    "pattern_sources", "lengths", "shapes", "kernel_shapes", "attention_inputs", "assert_matches_reference",
    "KERNEL_LAYOUTS", "pattern_scales", "scale_lengths",
]
