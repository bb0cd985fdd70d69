"""bounds analysis: for a tile of queries whose positions lie in [q0, q1), in
closed form, the key segments that can hold visible keys, and inside each
segment the keys that every query of the tile sees (its `full` interval: no
mask needed there). Exact for the atoms, conservative for where(...) on
positions, complements and differences (never drops a visible key, may call a
full tile partial). The results are IR expressions over q0, q1, Lk and the head
symbols, evaluated in the kernel per tile: nothing depends on the sequence
length at compile time and nothing costs O(L^2).

The transposed analysis (transposed=True, used by the backward's dK/dV kernel)
answers the same for a tile of keys whose positions lie in [k0, k1): the query
segments that can see some key of the tile, and inside each segment the
queries that see every key of the tile. Query positions run over
[Lk - Lq, Lk); a transposed segment is never strided."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..ir import build
from ..ir import nodes as ir
from ..ir.atoms import atom_arg

Q0, Q1, K0, K1, LK, LQ = (ir.Sym(n) for n in ("q0", "q1", "k0", "k1", "Lk", "Lq"))
ZERO, ONE = ir.Const(0), ir.Const(1)
TRUE = ir.Bool(True)


def _add(a, b):
    return build.int_op("+", a, b)


def _sub(a, b):
    return build.int_op("-", a, b)


def _mul(a, b):
    return build.int_op("*", a, b)


def _div(a, b):
    return build.int_op("//", a, b)


def _min(a, b):
    return a if a is b else build.int_op("min", a, b)


def _max(a, b):
    return a if a is b else build.int_op("max", a, b)


def _flag(x):
    """1 when x > 0 else 0: min(1, max(0, x))."""
    return _min(ONE, _max(ZERO, x))


@dataclass(frozen=True)
class Segment:
    """Keys in [lo, hi); with `stride`, only those in blocks j with
    (j + offset) % stride == 0; with `guard`, only for heads where it holds.
    Keys of the segment inside [full_lo, full_hi) are visible to every query of
    the tile (the kernel skips the element mask there)."""

    lo: ir.Node
    hi: ir.Node
    full_lo: ir.Node = ZERO
    full_hi: ir.Node = ZERO
    block: ir.Node | None = None
    stride: ir.Node | None = None
    offset: ir.Node | None = None
    guard: ir.Node = TRUE

    @property
    def strided(self) -> bool:
        return self.stride is not None

    def meet(self, other: "Segment") -> "Segment":
        """Keys in both segments (keeps this segment's stride filter)."""
        return Segment(_max(self.lo, other.lo), _min(self.hi, other.hi), _max(self.full_lo, other.full_lo),
                       _min(self.full_hi, other.full_hi), self.block, self.stride, self.offset,
                       build.logic("and", self.guard, other.guard))

    def partial(self) -> "Segment":
        """The same keys, with no full interval."""
        return replace(self, full_lo=ZERO, full_hi=ZERO)


EVERYTHING = (Segment(ZERO, LK),)
Q_START = build.int_op("-", LK, LQ)  # the first query position
EVERY_QUERY = (Segment(Q_START, LK),)


def segments(node: ir.Node, rate: int = 1, transposed: bool = False) -> tuple[Segment, ...]:
    """Segments whose union holds every key visible to some query of the tile
    (transposed: every query that sees some key of the key tile).

    `rate` is the layout's residue step: queries and keys of a tile are then
    congruent modulo rate (plan.py)."""
    if isinstance(node, ir.Atom):
        return _atom_t(node, rate) if transposed else _atom(node, rate)
    if isinstance(node, ir.Union):
        return _bounded(tuple(s for a in node.args for s in segments(a, rate, transposed)))
    if isinstance(node, ir.Inter):
        out = segments(node.args[0], rate, transposed)
        for a in node.args[1:]:
            out = _bounded(_intersect(out, segments(a, rate, transposed)))
        return out
    if isinstance(node, ir.Diff):  # the pairs of a; b may hide some, so nothing is known full
        return tuple(s.partial() for s in segments(node.a, rate, transposed))
    if isinstance(node, ir.Heads):  # a nested per-head choice: the union, all partial
        return _bounded(tuple(s.partial() for b in node.branches for s in segments(b.body, rate, transposed)))
    return EVERY_QUERY if transposed else EVERYTHING  # a complement


# The kernel walks each segment minus the earlier ones: its code grows with the number of
# segments squared. Past this many, the last ones are merged into one masked range.
MAX_SEGMENTS = 6


def _bounded(segs: tuple[Segment, ...]) -> tuple[Segment, ...]:
    """At most MAX_SEGMENTS segments: the first ones as they are, then their hull."""
    if len(segs) <= MAX_SEGMENTS:
        return segs
    keep, rest = segs[:MAX_SEGMENTS - 1], segs[MAX_SEGMENTS - 1:]
    guards = {s.guard for s in rest}
    guard = TRUE if TRUE in guards else _balanced("or", [s.guard for s in rest], build.logic)
    hull = Segment(_balanced("min", [s.lo for s in rest]), _balanced("max", [s.hi for s in rest]), guard=guard)
    return keep + (hull,)


def _balanced(op: str, xs: list, make=build.int_op):
    """op over xs as a balanced tree (the kernel's expression depth stays logarithmic)."""
    if len(xs) == 1:
        return xs[0]
    mid = len(xs) // 2
    return make(op, _balanced(op, xs[:mid], make), _balanced(op, xs[mid:], make))


def _intersect(xs, ys):
    # A strided operand keeps its filter; with two different filters one is kept
    # (a superset: the element mask does the rest, so neither is full).
    out = []
    for x in xs:
        for y in ys:
            if x.strided and y.strided:
                out.append(x.meet(y).partial())
            else:
                out.append(y.meet(x) if y.strided else x.meet(y))
    return tuple(s for s in out if s.guard != ir.Bool(False))


def _atom(a: ir.Atom, rate: int) -> tuple[Segment, ...]:
    kind = a.kind
    arg = lambda name: atom_arg(a, name)  # noqa: E731
    last = _sub(Q1, ONE)  # the last query position of the tile
    if kind in ("none", "landmarks"):
        return ()
    if kind == "full":
        return (Segment(ZERO, LK, ZERO, LK),)
    if kind == "causal":  # every query sees k <= q0
        return (Segment(ZERO, Q1, ZERO, _add(Q0, ONE)),)
    if kind == "window":
        w = arg("size")
        return (Segment(_add(_sub(Q0, w), ONE), Q1, _sub(Q1, w), _add(Q0, ONE)),)
    if kind == "band":
        left, right = arg("left"), arg("right")
        return (Segment(_sub(Q0, left), _add(Q1, right), _sub(last, left), _add(_add(Q0, right), ONE)),)
    if kind == "sink":
        return (Segment(ZERO, arg("n"), ZERO, arg("n")),)
    if kind == "global":
        n = arg("n")
        some = _flag(_sub(n, Q0))  # some query of the tile is global: it sees every key
        every = _flag(_sub(n, last))  # every query is global
        return (Segment(ZERO, _max(n, _mul(some, LK)), ZERO, _max(n, _mul(every, LK))),)
    if kind == "dilated":
        size, r = arg("size"), arg("rate")
        seg = Segment(_sub(Q0, _mul(_sub(size, ONE), r)), Q1)
        if isinstance(r, ir.Const) and rate % r.value == 0:
            # queries and keys of the tile are congruent modulo r: the distance test decides
            return (replace(seg, full_lo=_sub(Q1, _mul(size, r)), full_hi=_add(Q0, ONE)),)
        return (seg,)
    if kind == "local_blocks":
        b, n = arg("block"), arg("n")
        lo = _mul(_add(_sub(_div(Q0, b), n), ONE), b)
        hi = _mul(_add(_div(last, b), ONE), b)
        full_lo = _mul(_add(_sub(_div(last, b), n), ONE), b)
        full_hi = _mul(_add(_div(Q0, b), ONE), b)
        return (Segment(lo, hi, full_lo, full_hi),)
    if kind == "strided":  # the kernel visits only the strided blocks: all of them are full
        return (Segment(ZERO, LK, ZERO, LK, arg("block"), arg("stride"), arg("offset")),)
    if kind == "where" and not ir.symbols(a.args[0]) & {"q", "k"}:
        return (Segment(ZERO, LK, ZERO, LK, guard=a.args[0]),)  # a condition on the head only
    return EVERYTHING  # where over positions, topk (until selection is planned)


def _atom_t(a: ir.Atom, rate: int) -> tuple[Segment, ...]:
    """The transposed table: query segments for the key tile k0 <= k < k1."""
    kind = a.kind
    arg = lambda name: atom_arg(a, name)  # noqa: E731
    last = _sub(K1, ONE)  # the last key position of the tile
    start, end = Q_START, LK

    def upto(flag):  # queries [start, start + flag * Lq): all of them when flag is 1, none when 0
        return _add(start, _mul(flag, LQ))

    if kind in ("none", "landmarks"):
        return ()
    if kind == "full":
        return (Segment(start, end, start, end),)
    if kind == "causal":  # every query q >= last sees the whole tile
        return (Segment(K0, end, last, end),)
    if kind == "window":  # k <= q < k + w
        w = arg("size")
        return (Segment(K0, _add(last, w), last, _add(K0, w)),)
    if kind == "band":  # k - right <= q <= k + left
        left, right = arg("left"), arg("right")
        return (Segment(_sub(K0, right), _add(_add(last, left), ONE), _sub(last, right),
                        _add(_add(K0, left), ONE)),)
    if kind == "sink":  # a condition on k only: every query, when some (every) key of the tile is a sink
        n = arg("n")
        return (Segment(start, upto(_flag(_sub(n, K0))), start, upto(_flag(_sub(n, last)))),)
    if kind == "global":  # queries < n see everything; every query sees keys < n
        n = arg("n")
        return (Segment(start, _max(n, upto(_flag(_sub(n, K0)))), start, _max(n, upto(_flag(_sub(n, last))))),)
    if kind == "dilated":  # k <= q <= k + (size - 1) * rate
        size, r = arg("size"), arg("rate")
        seg = Segment(K0, _add(last, _add(_mul(_sub(size, ONE), r), ONE)))
        if isinstance(r, ir.Const) and rate % r.value == 0:
            return (replace(seg, full_lo=last, full_hi=_add(K0, _mul(size, r))),)
        return (seg,)
    if kind == "local_blocks":  # k // b <= q // b < k // b + n
        b, n = arg("block"), arg("n")
        lo = _mul(_div(K0, b), b)
        hi = _mul(_add(_div(last, b), n), b)
        full_lo = _mul(_div(last, b), b)
        full_hi = _mul(_add(_div(K0, b), n), b)
        return (Segment(lo, hi, full_lo, full_hi),)
    if kind == "strided":  # a condition on k only: blocks ja..jb of the tile
        block, stride, offset = arg("block"), arg("stride"), arg("offset")
        ja, jb = _div(K0, block), _div(last, block)
        first = _add(ja, build.int_op("%", build.int_op("neg", _add(ja, offset)), stride))
        some = _flag(_add(_sub(jb, first), ONE))  # a lattice block lies in [ja, jb]
        every = _max(ZERO, _sub(_sub(ONE, _sub(jb, ja)), _min(ONE, build.int_op("%", _add(ja, offset), stride))))
        return (Segment(start, upto(some), start, upto(every)),)
    if kind == "where" and not ir.symbols(a.args[0]) & {"q", "k"}:
        return (Segment(start, end, start, end, guard=a.args[0]),)  # a condition on the head only
    return EVERY_QUERY  # where over positions, topk
