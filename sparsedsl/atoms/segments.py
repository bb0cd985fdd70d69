"""Key segments of a query tile (and query segments of a key tile), the unit of
the bounds analysis: IR expressions over the tile's symbols q0, q1 (k0, k1), Lk,
Lq and the head symbols, evaluated by the kernels per tile."""
from __future__ import annotations

from dataclasses import replace

from ..ir import build
from ..ir import nodes as ir
from ..ir.plan import Segment  # noqa: F401 (the segment type lives with the plan's data)

Q0, Q1, K0, K1, LK, LQ = (ir.Sym(n) for n in ("q0", "q1", "k0", "k1", "Lk", "Lq"))
ZERO, ONE = ir.Const(0), ir.Const(1)
TRUE = ir.Bool(True)


def add(a, b):
    return build.int_op("+", a, b)


def sub(a, b):
    if a == ZERO and not isinstance(b, ir.Const):
        return neg(b)
    return build.int_op("-", a, b)


def mul(a, b):
    return build.int_op("*", a, b)


def div(a, b):
    return build.int_op("//", a, b)


def mod(a, b):
    return build.int_op("%", a, b)


def neg(a):
    if isinstance(a, ir.IntOp) and a.op == "neg":
        return a.args[0]
    return build.int_op("neg", a)


def minimum(a, b):
    return a if a is b else build.int_op("min", a, b)


def maximum(a, b):
    return a if a is b else build.int_op("max", a, b)


def flag(x):
    """1 when x > 0 else 0: min(1, max(0, x))."""
    return minimum(ONE, maximum(ZERO, x))


EVERYTHING = (Segment(ZERO, LK),)
Q_START = build.int_op("-", LK, LQ)  # the first query position
EVERY_QUERY = (Segment(Q_START, LK),)


# The kernel walks each segment minus the earlier ones: its code grows with the number of
# segments squared. Past this many, the last ones are merged into one masked range.
MAX_SEGMENTS = 6


def bounded(segs: tuple[Segment, ...]) -> tuple[Segment, ...]:
    """At most MAX_SEGMENTS segments: the first ones as they are, then their hull."""
    if len(segs) <= MAX_SEGMENTS:
        return segs
    return segs[:MAX_SEGMENTS - 1] + (_hull(segs[MAX_SEGMENTS - 1:]),)


def _hull(segs) -> Segment:
    """One partial segment holding the keys of all: their hull, under any of their guards;
    probed when each of them is (any of their probes, each under its segment's guard)."""
    guards = {s.guard for s in segs}
    guard = TRUE if TRUE in guards else balanced("or", [s.guard for s in segs], build.logic)
    probe = ()
    if all(s.probe for s in segs):
        probe = tuple(p if s.guard == TRUE else replace(p, cond=build.logic("and", s.guard, p.cond))
                      for s in segs for p in s.probe)
    return Segment(balanced("min", [s.lo for s in segs]), balanced("max", [s.hi for s in segs]), guard=guard,
                   probe=probe)


def probed_last(segs: tuple[Segment, ...]) -> tuple[Segment, ...]:
    """The probed segments merged into one, walked last. The kernel walks each segment minus
    the tiles of the earlier ones, so a tile that a probe skips must not be cut out of a
    later segment: every unprobed segment comes first (its tiles all walked)."""
    probed = [s for s in segs if s.probe]
    if not probed:
        return segs
    rest = tuple(s for s in segs if not s.probe)
    return rest + ((probed[0].partial() if len(probed) == 1 else _hull(probed)),)


def balanced(op: str, xs: list, make=build.int_op):
    """op over xs as a balanced tree (the kernel's expression depth stays logarithmic)."""
    if len(xs) == 1:
        return xs[0]
    mid = len(xs) // 2
    return make(op, balanced(op, xs[:mid], make), balanced(op, xs[mid:], make))


def intersect(xs, ys):
    """Segments holding the keys of both lists. A strided operand keeps its filter; with two
    different filters one is kept (a superset: the element mask does the rest, so neither is full)."""
    out = []
    for x in xs:
        for y in ys:
            if x.strided and y.strided:
                out.append(x.meet(y).partial())
            else:
                out.append(y.meet(x) if y.strided else x.meet(y))
    return tuple(s for s in out if s.guard != ir.Bool(False))
