"""bounds analysis: in closed form, for a tile of queries [q0, q1) and keys
[k0, k1), (1) the key ranges that can hold visible keys (`hull`), and (2)
whether every pair of the tile is visible (`all_visible`) or none is
(`none_visible`). Exact for the atoms, conservative for where(...), and free of
the sequence length: the results are IR expressions over q0, q1, k0, k1, Lk
and the head symbols, evaluated inside the kernel."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import build
from ..ir import nodes as ir
from ..ir.atoms import atom_arg

Q0, Q1, K0, K1, LK = (ir.Sym(n) for n in ("q0", "q1", "k0", "k1", "Lk"))
ZERO, ONE = ir.Const(0), ir.Const(1)
TRUE, FALSE = ir.Bool(True), ir.Bool(False)


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


@dataclass(frozen=True)
class Segment:
    """Keys in [lo, hi); with `stride`, only keys k with (k // block + offset) % stride == 0;
    with `guard` (a condition over the heads), only for the heads where it holds."""

    lo: ir.Node
    hi: ir.Node
    block: ir.Node | None = None
    stride: ir.Node | None = None
    offset: ir.Node | None = None
    guard: ir.Node = ir.Bool(True)

    @property
    def strided(self) -> bool:
        return self.stride is not None

    def clip(self, other: "Segment") -> "Segment":
        return Segment(_max(self.lo, other.lo), _min(self.hi, other.hi), self.block, self.stride, self.offset,
                       build.logic("and", self.guard, other.guard))


EVERYTHING = (Segment(ZERO, LK),)


def hull(node: ir.Node) -> tuple[Segment, ...]:
    """Segments whose union holds every key visible to some query in [q0, q1)."""
    if isinstance(node, ir.Atom):
        return _atom_hull(node)
    if isinstance(node, ir.Union):
        return tuple(s for a in node.args for s in hull(a))
    if isinstance(node, ir.Inter):
        out = hull(node.args[0])
        for a in node.args[1:]:
            out = _intersect(out, hull(a))
        return out
    if isinstance(node, ir.Diff):
        return hull(node.a)
    if isinstance(node, ir.Heads):
        return tuple(s for b in node.branches for s in hull(b.body))
    return EVERYTHING  # Compl: conservative


def _intersect(xs, ys):
    out = []
    for x in xs:
        for y in ys:
            # A strided operand keeps its filter; with two different filters one is
            # kept (a superset: the element mask does the rest).
            out.append(y.clip(x) if (y.strided and not x.strided) else x.clip(y))
    return tuple(s for s in out if s.guard != FALSE)


def _atom_hull(a: ir.Atom) -> tuple[Segment, ...]:
    kind = a.kind
    arg = lambda name: atom_arg(a, name)  # noqa: E731
    if kind in ("none", "landmarks"):
        return ()
    if kind == "causal":
        return (Segment(ZERO, Q1),)
    if kind == "window":
        return (Segment(_add(_sub(Q0, arg("size")), ONE), Q1),)
    if kind == "band":
        return (Segment(_sub(Q0, arg("left")), _add(Q1, arg("right"))),)
    if kind == "sink":
        return (Segment(ZERO, arg("n")),)
    if kind == "global":
        n = arg("n")
        # [0, n), or all keys when some query of the tile is global (q0 < n)
        some_global = _min(ONE, _max(ZERO, _sub(n, Q0)))
        return (Segment(ZERO, _max(n, _mul(some_global, LK))),)
    if kind == "dilated":
        span = _mul(_sub(arg("size"), ONE), arg("rate"))
        return (Segment(_sub(Q0, span), Q1),)
    if kind == "local_blocks":
        b = arg("block")
        lo = _mul(_add(_sub(_div(Q0, b), arg("n")), ONE), b)
        hi = _mul(_add(_div(_sub(Q1, ONE), b), ONE), b)
        return (Segment(lo, hi),)
    if kind == "strided":
        return (Segment(ZERO, LK, arg("block"), arg("stride"), arg("offset")),)
    if kind == "where" and not ir.symbols(a.args[0]) & {"q", "k"}:
        return (Segment(ZERO, LK, guard=a.args[0]),)  # a condition on the head only
    return EVERYTHING  # full, where, topk (until selection is planned)


def _cmp(op, a, b):
    return build.cmp(op, a, b)


def _and(*xs):
    return build.logic("and", *xs)


def _or(*xs):
    return build.logic("or", *xs)


def all_visible(node: ir.Node, rate: int = 1) -> ir.Node:
    """A condition over the tile box that implies every pair in it is visible.

    `rate` is the residue step of the layout (queries and keys of one tile are
    congruent modulo rate)."""
    qa, qb, ka, kb = Q0, _sub(Q1, ONE), K0, _sub(K1, ONE)
    if isinstance(node, ir.Atom):
        kind, arg = node.kind, (lambda name: atom_arg(node, name))
        if kind == "full":
            return TRUE
        if kind == "causal":
            return _cmp("<=", kb, qa)
        if kind == "window":
            return _and(_cmp("<=", kb, qa), _cmp(">", ka, _sub(qb, arg("size"))))
        if kind == "band":
            return _and(_cmp(">=", ka, _sub(qb, arg("left"))), _cmp("<=", kb, _add(qa, arg("right"))))
        if kind == "sink":
            return _cmp("<", kb, arg("n"))
        if kind == "global":
            return _or(_cmp("<", qb, arg("n")), _cmp("<", kb, arg("n")))
        if kind == "dilated":
            r = arg("rate")
            aligned = _cmp("==", build.int_op("%", ir.Const(rate), r), ZERO) if not (
                isinstance(r, ir.Const) and r.value == 1) else TRUE
            return _and(aligned, _cmp("<=", kb, qa), _cmp(">", ka, _sub(qb, _mul(arg("size"), r))))
        if kind == "local_blocks":
            b = arg("block")
            return _and(_cmp(">=", _sub(_div(qa, b), _div(kb, b)), ZERO),
                        _cmp("<", _sub(_div(qb, b), _div(ka, b)), arg("n")))
        if kind == "strided":
            b = arg("block")
            return _and(_cmp("==", _div(ka, b), _div(kb, b)),
                        _cmp("==", build.int_op("%", _add(_div(ka, b), arg("offset")), arg("stride")), ZERO))
        if kind == "where" and not ir.symbols(node.args[0]) & {"q", "k"}:
            return node.args[0]
        return FALSE  # none, where on positions (conservative), dynamic atoms
    if isinstance(node, ir.Union):
        return _or(*(all_visible(a, rate) for a in node.args))
    if isinstance(node, ir.Inter):
        return _and(*(all_visible(a, rate) for a in node.args))
    if isinstance(node, ir.Diff):
        return _and(all_visible(node.a, rate), none_visible(node.b, rate))
    if isinstance(node, ir.Compl):
        return none_visible(node.a, rate)
    if isinstance(node, ir.Heads):
        return _per_head(node, lambda body: all_visible(body, rate))
    raise TypeError(f"not a mask: {node!r}")


def none_visible(node: ir.Node, rate: int = 1) -> ir.Node:
    """A condition over the tile box that implies no pair in it is visible."""
    qa, qb, ka, kb = Q0, _sub(Q1, ONE), K0, _sub(K1, ONE)
    if isinstance(node, ir.Atom):
        kind, arg = node.kind, (lambda name: atom_arg(node, name))
        if kind in ("none", "landmarks"):
            return TRUE
        if kind == "causal":
            return _cmp(">", ka, qb)
        if kind == "window":
            return _or(_cmp(">", ka, qb), _cmp("<=", kb, _sub(qa, arg("size"))))
        if kind == "band":
            return _or(_cmp("<", kb, _sub(qa, arg("left"))), _cmp(">", ka, _add(qb, arg("right"))))
        if kind == "sink":
            return _cmp(">=", ka, arg("n"))
        if kind == "global":
            return _and(_cmp(">=", qa, arg("n")), _cmp(">=", ka, arg("n")))
        if kind == "dilated":
            return _or(_cmp(">", ka, qb), _cmp("<=", kb, _sub(qa, _mul(arg("size"), arg("rate")))))
        if kind == "local_blocks":
            b = arg("block")
            return _or(_cmp("<", _sub(_div(qb, b), _div(ka, b)), ZERO),
                       _cmp(">=", _sub(_div(qa, b), _div(kb, b)), arg("n")))
        if kind == "strided":
            b = arg("block")
            return _and(_cmp("==", _div(ka, b), _div(kb, b)),
                        _cmp("!=", build.int_op("%", _add(_div(ka, b), arg("offset")), arg("stride")), ZERO))
        if kind == "where" and not ir.symbols(node.args[0]) & {"q", "k"}:
            return build.logic("not", node.args[0])
        return FALSE  # full, where on positions (conservative), topk
    if isinstance(node, ir.Union):
        return _and(*(none_visible(a, rate) for a in node.args))
    if isinstance(node, ir.Inter):
        return _or(*(none_visible(a, rate) for a in node.args))
    if isinstance(node, ir.Diff):
        return _or(none_visible(node.a, rate), all_visible(node.b, rate))
    if isinstance(node, ir.Compl):
        return all_visible(node.a, rate)
    if isinstance(node, ir.Heads):
        return _per_head(node, lambda body: none_visible(body, rate))
    raise TypeError(f"not a mask: {node!r}")


def branch_condition(b: ir.Branch) -> ir.Node:
    """The condition over h and H under which a head's selection holds `b`
    (Python index and slice semantics)."""
    h, H = ir.Sym("h"), ir.Sym("H")
    if b.kind == "all":
        return TRUE
    if b.kind == "index":
        i = b.start
        idx = build.int_op("+", i, build.int_op("*", H, _neg_flag(i)))
        return _cmp("==", h, idx)
    lo = ZERO if b.start is None else _slice_bound(b.start)
    hi = H if b.stop is None else _slice_bound(b.stop)
    return _and(_cmp(">=", h, lo), _cmp("<", h, hi))


def _neg_flag(x):
    """1 when x < 0 else 0, as integer arithmetic: min(1, max(0, -x))."""
    return _min(ONE, _max(ZERO, build.int_op("neg", x)))


def _slice_bound(x):
    """Python slice bound normalisation: x + H if x < 0, then clamp to [0, H]."""
    H = ir.Sym("H")
    return _min(H, _max(ZERO, _add(x, _mul(H, _neg_flag(x)))))


def _per_head(node: ir.Heads, fn) -> ir.Node:
    """First-match choice among branches, as a condition."""
    out = FALSE
    for b in reversed(node.branches):
        cond = branch_condition(b)
        out = _or(_and(cond, fn(b.body)), _and(build.logic("not", cond), out))
    return out
