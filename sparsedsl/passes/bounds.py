"""bounds analysis: for a tile of queries whose positions lie in [q0, q1), in
closed form, the key segments that can hold visible keys, and inside each
segment the keys that every query of the tile sees (its `full` interval: no
mask needed there). Each atom's segments come from its definition
(sparsedsl/atoms/: hand-written, or solved exactly from its condition, which is
how where(...) on positions gets them); unions, intersections, complements and
differences combine them conservatively (never dropping a visible key, maybe
calling a full tile partial). The results are IR expressions over q0, q1, Lk and the head
symbols, evaluated in the kernel per tile: nothing depends on the sequence
length at compile time and nothing costs O(L^2).

The transposed analysis (transposed=True, used by the backward's dK/dV kernel)
answers the same for a tile of keys whose positions lie in [k0, k1): the query
segments that can see some key of the tile, and inside each segment the
queries that see every key of the tile. Query positions run over
[Lk - Lq, Lk); a transposed segment is never strided."""
from __future__ import annotations

from ..atoms import ATOMS
from ..atoms.segments import (EVERY_QUERY, EVERYTHING, K0, K1, LK, LQ, MAX_SEGMENTS, Q0, Q1, Q_START,  # noqa: F401
                              Segment, bounded, intersect, probed_last)
from ..ir import nodes as ir


def segments(node: ir.Node, rate: int = 1, transposed: bool = False) -> tuple[Segment, ...]:
    """Segments whose union holds every key visible to some query of the tile
    (transposed: every query that sees some key of the key tile).

    `rate` is the layout's residue step: queries and keys of a tile are then
    congruent modulo rate (plan.py)."""
    if isinstance(node, ir.Atom):
        d = ATOMS[node.kind]
        a = d.args(node)
        return d.query_segments(a, rate) if transposed else d.segments(a, rate)
    if isinstance(node, ir.Union):
        return bounded(tuple(s for a in node.args for s in segments(a, rate, transposed)))
    if isinstance(node, ir.Inter):
        out = segments(node.args[0], rate, transposed)
        for a in node.args[1:]:
            out = bounded(intersect(out, segments(a, rate, transposed)))
        return out
    if isinstance(node, ir.Diff):  # the pairs of a; b may hide some, so nothing is known full
        return tuple(s.partial() for s in segments(node.a, rate, transposed))
    if isinstance(node, ir.Heads):  # a nested per-head choice: the union, all partial
        return bounded(tuple(s.partial() for b in node.branches for s in segments(b.body, rate, transposed)))
    return EVERY_QUERY if transposed else EVERYTHING  # a complement
