"""Exact key segments of a condition over positions (and query segments, for
the transposed walk), in closed form.

A comparison of integer expressions is solved for the key k when it separates
into V(k) OP R(q), with V monotone in k and built from +, -, negation,
multiplication by a nonzero factor and floor division by a positive divisor
(constants or head expressions of known sign), and R any expression of q and
the heads that is monotone in q. For one query the keys then form a half-line
[B(q), ...) or (..., B(q)), with B in closed form; over the tile q0 <= q < q1
the keys some query sees start at the smallest B and the keys every query sees
at the largest (a monotone B takes both at the tile's ends). `==` is `<=` and
`>=`, `!=` is `<` or `>`, `and` intersects, `or` unites, `not` moves inwards.
A comparison on q alone holds for some or every query of the tile or for none;
one on the heads alone guards the segment. Whatever stays outside (k and q in
one term, a modulo or a product of positions, a non-monotone side) falls back
to every key with no full interval: `fallbacks` names those comparisons. One that
reads the positions only as q // bq and k // bk gets a block-level probe (its
tiles are tested block by block in the kernel and skipped where it fails).

The same solution with the roles of q and k swapped gives the query segments
of a key tile k0 <= k < k1."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..ir import build
from ..ir import nodes as ir
from ..ir.ranges import INT_LIMIT, value_range, widest
from ..ir.plan import Probe
from .segments import (K0, K1, LK, ONE, Q0, Q1, Q_START, ZERO, Segment, add, bounded, div, flag, intersect,
                       maximum, minimum, mul, neg, sub)


@dataclass(frozen=True)
class Side:
    var: str  # solved for: "k" for key segments, "q" for query segments
    other: str  # the tile's variable
    lo: ir.Node  # the tile's first and last position of `other`
    last: ir.Node
    start: ir.Node  # the positions of `var`: [start, end)
    end: ir.Node


KEYS = Side("k", "q", Q0, sub(Q1, ONE), ZERO, LK)
QUERIES = Side("q", "k", K0, sub(K1, ONE), Q_START, LK)


class _Fallback(Exception):
    pass


def key_segments(cond: ir.Node) -> tuple[Segment, ...]:
    """Key segments of the query tile q0 <= q < q1 under `cond`."""
    return _solve(cond, KEYS)


def query_segments(cond: ir.Node) -> tuple[Segment, ...]:
    """Query segments of the key tile k0 <= k < k1 under `cond`."""
    return _solve(cond, QUERIES)


def fallbacks(cond: ir.Node) -> list[ir.Node]:
    """The comparisons of `cond` that get no closed form (every key, never full)."""
    out = []
    for n in ir.post_order(cond):
        if isinstance(n, ir.Cmp) and ir.symbols(n) & {"q", "k"}:
            try:
                for side in (KEYS, QUERIES):
                    _compare(n.op, n.a, n.b, side)
            except _Fallback:
                out.append(n)
    return out


# A probe loops over the blocks a tile spans: blocks shorter than this would make it
# cost as much as the tile it might skip.
PROBE_MIN_BLOCK = 32


def block_probe(cond: ir.Node) -> tuple[Probe, ...]:
    """A comparison without a closed form that reads the positions only as q // bq and
    k // bk (constants bq, bk >= PROBE_MIN_BLOCK), e.g. BigBird's hashed random blocks: the
    kernels test it once per (query block, key block) of a tile and skip the tiles where it
    fails everywhere. () when it reads them otherwise."""
    blocks: dict[str, int] = {}
    memo: dict = {}

    def lift(n: ir.Node) -> ir.Node:
        out = memo.get(n)
        if out is not None:
            return out
        if isinstance(n, ir.IntOp) and n.op == "//" and isinstance(n.args[0], ir.Sym) \
                and n.args[0].name in ("q", "k") and isinstance(n.args[1], ir.Const):
            name, b = n.args[0].name, n.args[1].value
            if b < PROBE_MIN_BLOCK or blocks.setdefault(name, b) != b:
                raise _Fallback
            out = ir.Sym(name + "b")
        elif isinstance(n, ir.Sym) and n.name in ("q", "k"):
            raise _Fallback
        elif isinstance(n, ir.IntOp):
            out = build.int_op(n.op, *(lift(a) for a in n.args))
        elif isinstance(n, ir.Cmp):
            out = build.cmp(n.op, lift(n.a), lift(n.b))
        elif isinstance(n, ir.Logic):
            out = build.logic(n.op, *(lift(a) for a in n.args))
        else:
            out = n
        memo[n] = out
        return out

    try:
        lifted = lift(cond)
    except _Fallback:
        return ()
    if set(blocks) != {"q", "k"}:
        return ()
    return (Probe(lifted, blocks["q"], blocks["k"]),)


def _solve(cond: ir.Node, side: Side) -> tuple[Segment, ...]:
    if isinstance(cond, ir.Bool):
        return (Segment(side.start, side.end, side.start, side.end),) if cond.value else ()
    if not ir.symbols(cond) & {"q", "k"}:  # a condition on the heads only
        return (Segment(side.start, side.end, side.start, side.end, guard=cond),)
    if isinstance(cond, ir.Cmp):
        try:
            return _compare(cond.op, cond.a, cond.b, side)
        except _Fallback:
            return (Segment(side.start, side.end, probe=block_probe(cond)),)
    if cond.op == "not":
        return _solve(_negate(cond.args[0]), side)
    parts = [_solve(a, side) for a in cond.args]
    if cond.op == "or":
        return bounded(tuple(s for p in parts for s in p))
    out = parts[0]
    for p in parts[1:]:
        out = bounded(intersect(out, p))
    return out


_FLIP = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


def _negate(c: ir.Node) -> ir.Node:
    if isinstance(c, ir.Bool):
        return ir.Bool(not c.value)
    if isinstance(c, ir.Cmp):
        return ir.Cmp(_FLIP[c.op], c.a, c.b)
    if c.op == "not":
        return c.args[0]
    return build.logic("or" if c.op == "and" else "and", *(_negate(a) for a in c.args))


def _abs(x: ir.Node):
    return x.args[0] if isinstance(x, ir.IntOp) and x.op == "abs" else None


_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _compare(op: str, a: ir.Node, b: ir.Node, side: Side) -> tuple[Segment, ...]:
    if _abs(b) is not None and _abs(a) is None:  # (abs on the left)
        return _compare(_MIRROR[op], b, a, side)
    x = _abs(a)
    if x is not None and op in ("<", "<=", ">", ">="):
        # abs(x) <= y: -y <= x <= y; abs(x) >= y: x >= y or x <= -y
        if op in ("<", "<="):
            return bounded(intersect(_compare(op, x, b, side), _compare(_MIRROR[op], x, neg(b), side)))
        return _compare(op, x, b, side) + _compare(_MIRROR[op], x, neg(b), side)
    if op == "==":
        return bounded(intersect(_compare("<=", a, b, side), _compare(">=", a, b, side)))
    if op == "!=":
        return _compare("<", a, b, side) + _compare(">", a, b, side)
    # a - b OP 0 as V(var) + R OP 0, with `<` and `>` made `<=` and `>=`
    at_least = op in (">", ">=")
    c0 = {"<": -1, "<=": 0, ">": 1, ">=": 0}[op]
    v, r = _separate(a, b, side.var)
    c = sub(ir.Const(c0), r)  # V(var) >= c or V(var) <= c, c over `other` and the heads
    if v is None:  # no var: a condition on the tile's variable alone
        return _on_other(r, at_least, c0, side)
    lower, bound = _halfline(v, side.var, at_least, c)
    d = direction(bound, side.other)
    if d is None:
        raise _Fallback
    at_lo, at_last = _subst(bound, side.other, side.lo), _subst(bound, side.other, side.last)
    small, big = (at_lo, at_last) if d >= 0 else (at_last, at_lo)
    for x in (small, big):
        if widest(x) > INT_LIMIT:
            raise _Fallback
    if lower:  # var >= B: some query sees [min B, end), every query [max B, end)
        return (Segment(small, side.end, big, side.end),)
    return (Segment(side.start, big, side.start, small),)  # var < B


def _on_other(r: ir.Node, at_least: bool, c0: int, side: Side) -> tuple[Segment, ...]:
    """R(other) OP c0 with no var: every key for some (every) position of the tile, or none."""
    # R >= c0 (or R <= c0) as a half-line in `other`: other >= B or other < B, B over the heads
    lower, bound = _halfline(r, side.other, at_least, ir.Const(c0))
    if lower:
        some, every = flag(add(sub(side.last, bound), ONE)), flag(add(sub(side.lo, bound), ONE))
    else:
        some, every = flag(sub(bound, side.lo)), flag(sub(bound, side.last))
    for x in (some, every):
        if widest(x) > INT_LIMIT:
            raise _Fallback
    span = sub(side.end, side.start)
    return (Segment(side.start, add(side.start, mul(some, span)), side.start, add(side.start, mul(every, span))),)


def _halfline(v: ir.Node, var: str, at_least: bool, c: ir.Node) -> tuple[bool, ir.Node]:
    """{var : V(var) >= c} (at_least) or {var : V(var) <= c} as (True, B): var >= B, or
    (False, B): var < B."""
    d = direction(v, var)
    if d == 1:
        return (True, least_ge(v, c, var)) if at_least else (False, least_ge(v, add(c, ONE), var))
    if d == -1:
        return (False, least_le(v, sub(c, ONE), var)) if at_least else (True, least_le(v, c, var))
    raise _Fallback


def _separate(a: ir.Node, b: ir.Node, var: str) -> tuple[ir.Node | None, ir.Node]:
    """a - b as V + R: V the terms with var (None if none), R those without; a term with
    both positions cannot be solved. Equal terms are collected (q + q is 2 * q), on the
    DAG: an expression that doubles itself n times stays n nodes."""
    memo: dict = {}
    terms: dict = {}
    for t, n in _linear(a, memo).items():
        terms[t] = terms.get(t, 0) + n
    for t, n in _linear(b, memo).items():
        terms[t] = terms.get(t, 0) - n
    v = r = None
    for t, n in terms.items():
        if n == 0:
            continue
        syms = ir.symbols(t)
        if {"q", "k"} <= syms:
            raise _Fallback
        scaled = t if abs(n) == 1 else mul(ir.Const(abs(n)), t)
        if var in syms:
            v = _sum(v, n, scaled)
        else:
            r = _sum(r, n, scaled)
    return v, (r if r is not None else ZERO)


def _linear(e: ir.Node, memo: dict) -> dict:
    """e as {term: integer coefficient}, the terms not sums, differences or negations."""
    out = memo.get(e)
    if out is not None:
        return out
    if isinstance(e, ir.IntOp) and e.op in ("+", "-", "neg"):
        out = dict(_linear(e.args[0], memo))
        if e.op == "neg":
            out = {t: -n for t, n in out.items()}
        else:
            sign = 1 if e.op == "+" else -1
            for t, n in _linear(e.args[1], memo).items():
                out[t] = out.get(t, 0) + sign * n
    elif isinstance(e, ir.Const):
        out = {ir.Const(1): e.value} if e.value else {}
    else:
        out = {e: 1}
    memo[e] = out
    return out


def _sum(acc, sign, t):
    if acc is None:
        return t if sign > 0 else neg(t)
    return add(acc, t) if sign > 0 else sub(acc, t)


def _sign(e: ir.Node) -> int:
    """1 when e >= 1, -1 when e <= -1 (for every head), else 0."""
    lo, hi = value_range(e)
    return 1 if lo >= 1 else -1 if hi <= -1 else 0


@functools.lru_cache(maxsize=4096)
def direction(e: ir.Node, var: str) -> int | None:
    """+1 when e is nondecreasing in var, -1 nonincreasing, 0 without var, None unknown."""
    if var not in ir.symbols(e):
        return 0
    if isinstance(e, ir.Sym):
        return 1
    if not isinstance(e, ir.IntOp):
        return None
    op, args = e.op, e.args
    if op in ("+", "-", "min", "max"):
        ds = [direction(args[0], var), direction(args[1], var)]
        if op == "-":
            ds[1] = None if ds[1] is None else -ds[1]
        if None in ds:
            return None
        nonzero = {d for d in ds if d}
        return nonzero.pop() if len(nonzero) == 1 else None
    if op == "neg":
        d = direction(args[0], var)
        return None if d is None else -d
    if op == "*":
        x, m = (args[0], args[1]) if var not in ir.symbols(args[1]) else (args[1], args[0])
        if var in ir.symbols(m):
            return None
        d, s = direction(x, var), _sign(m)
        return None if d is None or s == 0 else d * s
    if op == "//":
        x, s = args
        return direction(x, var) if var not in ir.symbols(s) and _sign(s) == 1 else None
    return None  # %, abs


def _split(e: ir.IntOp, var: str):
    """(the operand with var, the one without) of a binary operation."""
    a, b = e.args
    if var in ir.symbols(a) and var in ir.symbols(b):
        raise _Fallback
    return (a, b) if var not in ir.symbols(b) else (b, a)


def _ceil_div(c, m):
    return neg(div(neg(c), m))


def least_ge(f: ir.Node, c: ir.Node, var: str) -> ir.Node:
    """The smallest var with f(var) >= c, f nondecreasing in var."""
    if isinstance(f, ir.Sym):
        return c
    op = f.op
    if op == "+":
        x, y = _split(f, var)
        return least_ge(x, sub(c, y), var)
    if op == "-":
        x, y = f.args
        _split(f, var)  # (not both)
        if var in ir.symbols(x):  # x(v) - y >= c
            return least_ge(x, add(c, y), var)
        return least_le(y, sub(x, c), var)  # x - y(v) >= c: y(v) <= x - c
    if op == "neg":
        return least_le(f.args[0], neg(c), var)
    if op == "*":
        x, m = _split(f, var)
        if _sign(m) == 1:
            return least_ge(x, _ceil_div(c, m), var)
        return least_le(x, div(c, m), var)  # m <= -1: x * m >= c iff x <= floor(c / m)
    if op == "//":
        x, s = f.args
        return least_ge(x, mul(c, s), var)
    if op in ("min", "max") and all(var in ir.symbols(a) for a in f.args):
        parts = [least_ge(a, c, var) for a in f.args]  # min >= c: both; max >= c: either
        return maximum(*parts) if op == "min" else minimum(*parts)
    raise _Fallback


def least_le(f: ir.Node, c: ir.Node, var: str) -> ir.Node:
    """The smallest var with f(var) <= c, f nonincreasing in var."""
    op = getattr(f, "op", None)
    if op == "+":
        x, y = _split(f, var)
        return least_le(x, sub(c, y), var)
    if op == "-":
        x, y = f.args
        _split(f, var)  # (not both)
        if var in ir.symbols(x):  # x(v) - y <= c
            return least_le(x, add(c, y), var)
        return least_ge(y, sub(x, c), var)  # x - y(v) <= c: y(v) >= x - c
    if op == "neg":
        return least_ge(f.args[0], neg(c), var)
    if op == "*":
        x, m = _split(f, var)
        if _sign(m) == 1:
            return least_le(x, div(c, m), var)
        return least_ge(x, _ceil_div(c, m), var)  # m <= -1: x * m <= c iff x >= ceil(c / m)
    if op == "//":  # x // s <= c iff x <= (c + 1) * s - 1
        x, s = f.args
        return least_le(x, sub(mul(add(c, ONE), s), ONE), var)
    if op in ("min", "max") and all(var in ir.symbols(a) for a in f.args):
        parts = [least_le(a, c, var) for a in f.args]  # min <= c: either; max <= c: both
        return minimum(*parts) if op == "min" else maximum(*parts)
    raise _Fallback


def _subst(e: ir.Node, name: str, value: ir.Node, memo: dict | None = None) -> ir.Node:
    """e with the symbol `name` replaced by `value` (constants fold)."""
    memo = {} if memo is None else memo
    if isinstance(e, ir.Sym):
        return value if e.name == name else e
    if not isinstance(e, ir.IntOp) or name not in ir.symbols(e):
        return e
    out = memo.get(e)
    if out is None:
        out = memo[e] = build.int_op(e.op, *(_subst(a, name, value, memo) for a in e.args))
    return out
