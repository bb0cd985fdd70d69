"""bounds analysis: for a tile of queries whose positions lie in [q0, q1), in
closed form, the key segments that can hold visible keys, and inside each
segment the keys that every query of the tile sees (its `full` interval: no
mask needed there). Exact for the atoms, conservative for where(...) on
positions, complements and differences (never drops a visible key, may call a
full tile partial). The results are IR expressions over q0, q1, Lk and the head
symbols, evaluated in the kernel per tile: nothing depends on the sequence
length at compile time and nothing costs O(L^2)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..ir import build
from ..ir import nodes as ir
from ..ir.atoms import atom_arg

Q0, Q1, LK = (ir.Sym(n) for n in ("q0", "q1", "Lk"))
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


def segments(node: ir.Node, rate: int = 1) -> tuple[Segment, ...]:
    """Segments whose union holds every key visible to some query of the tile.

    `rate` is the layout's residue step: queries and keys of a tile are then
    congruent modulo rate (plan.py)."""
    if isinstance(node, ir.Atom):
        return _atom(node, rate)
    if isinstance(node, ir.Union):
        return tuple(s for a in node.args for s in segments(a, rate))
    if isinstance(node, ir.Inter):
        out = segments(node.args[0], rate)
        for a in node.args[1:]:
            out = _intersect(out, segments(a, rate))
        return out
    if isinstance(node, ir.Diff):  # the keys of a; b may hide some, so nothing is known full
        return tuple(s.partial() for s in segments(node.a, rate))
    if isinstance(node, ir.Heads):  # a nested per-head choice: the union, all partial
        return tuple(s.partial() for b in node.branches for s in segments(b.body, rate))
    return EVERYTHING  # a complement


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
