"""The optimizer: small named IR -> IR passes run in one pipeline.

Each pass keeps the mask of every head exactly (tests/test_passes.py checks
this on random patterns); `verify` runs after each one."""
from __future__ import annotations

from ..ir import nodes as ir
from ..ir.graph import verify
from .base import Pass
from .canonicalize import CANONICALIZE
from .simplify import SIMPLIFY

PIPELINE: tuple[Pass, ...] = (CANONICALIZE, SIMPLIFY)


def optimize(root: ir.Pattern, trace: list | None = None, check: bool = True) -> ir.Pattern:
    """Run the pipeline. With `trace`, append (pass, IR after it) for each pass."""
    for p in PIPELINE:
        root = p.apply(root)
        if check:
            verify(root)
        if trace is not None:
            trace.append((p, root))
    return root
