"""The static atoms, each defined once: signature, meaning (a condition over q,
k and the heads), key segments of a query tile q0 <= q < q1 and query segments
of a key tile k0 <= k < k1 (hand-written where the closed form is cheaper or the
kernel walks a strided layout; otherwise solved from the condition), and
simplification facts."""
from __future__ import annotations

from dataclasses import replace

from ..ir import build
from ..ir import nodes as ir
from ..ir.ranges import INT_LIMIT, value_range
from .base import AtomDef, Param, int_param
from .segments import (K0, K1, LK, LQ, ONE, Q0, Q1, Q_START, ZERO, Segment, add, div, flag, maximum, minimum,
                       mod, mul, sub)

Q, K = ir.Sym("q"), ir.Sym("k")
_BLOCK = int_param("block", 64, 1)


def _and(*xs):
    return build.logic("and", *xs)


def _or(*xs):
    return build.logic("or", *xs)


def _cmp(op, a, b):
    return build.cmp(op, a, b)


def _const(x) -> int | None:
    return x.value if isinstance(x, ir.Const) else None


def _upto(f):
    """Queries [start, start + f * Lq): all of them when f is 1, none when 0."""
    return add(Q_START, mul(f, LQ))


class Full(AtomDef):
    name, formula = "full", "always"

    def condition(self, a):
        return ir.Bool(True)

    def segments(self, a, rate):
        return (Segment(ZERO, LK, ZERO, LK),)

    def query_segments(self, a, rate):
        return (Segment(Q_START, LK, Q_START, LK),)

    def causal_keys(self, a):
        return ("suffix", ZERO)


class Nothing(AtomDef):
    name, formula = "none", "never"

    def condition(self, a):
        return ir.Bool(False)

    def segments(self, a, rate):
        return ()

    def query_segments(self, a, rate):
        return ()

    def causal_keys(self, a):
        return ("prefix", ZERO)


class Causal(AtomDef):
    name, formula, causal_only = "causal", "k <= q", True

    def condition(self, a):
        return _cmp("<=", K, Q)

    def segments(self, a, rate):  # every query of the tile sees k <= q0
        return (Segment(ZERO, Q1, ZERO, add(Q0, ONE)),)

    def query_segments(self, a, rate):  # every query q >= k1 - 1 sees the whole tile
        return (Segment(K0, LK, sub(K1, ONE), LK),)

    def causal_keys(self, a):
        return ("suffix", ZERO)


class Window(AtomDef):
    name, params, formula = "window", (int_param("size", minimum=1),), "q - size < k <= q"
    merge, causal_only = "size", True

    def condition(self, a):
        return _and(_cmp("<", sub(Q, a.size), K), _cmp("<=", K, Q))

    def segments(self, a, rate):
        return (Segment(add(sub(Q0, a.size), ONE), Q1, sub(Q1, a.size), add(Q0, ONE)),)

    def query_segments(self, a, rate):  # k <= q < k + size
        last = sub(K1, ONE)
        return (Segment(K0, add(last, a.size), last, add(K0, a.size)),)

    def causal_keys(self, a):
        return ("suffix", add(sub(Q, a.size), ONE))


class Band(AtomDef):
    name, formula = "band", "q - left <= k <= q + right"
    params = (int_param("left", minimum=0), int_param("right", minimum=0))

    def condition(self, a):
        return _and(_cmp("<=", sub(Q, a.left), K), _cmp("<=", K, add(Q, a.right)))

    def segments(self, a, rate):
        last = sub(Q1, ONE)
        return (Segment(sub(Q0, a.left), add(Q1, a.right), sub(last, a.left), add(add(Q0, a.right), ONE)),)

    def query_segments(self, a, rate):  # k - right <= q <= k + left
        last = sub(K1, ONE)
        return (Segment(sub(K0, a.right), add(add(last, a.left), ONE), sub(last, a.right),
                        add(add(K0, a.left), ONE)),)

    def rewrite(self, a):  # band(l, 0) = window(l + 1) (when l + 1 stays in range)
        if _const(a.right) == 0 and value_range(a.left)[1] < INT_LIMIT:
            return ir.Atom("window", (build.int_op("+", a.left, ir.Const(1)),))
        return None

    def causal_keys(self, a):  # (k <= q + right holds for every causal key)
        return ("suffix", sub(Q, a.left))


class Sink(AtomDef):
    name, params, formula, merge = "sink", (int_param("n", minimum=0),), "k < n", "n"

    def condition(self, a):
        return _cmp("<", K, a.n)

    def segments(self, a, rate):
        return (Segment(ZERO, a.n, ZERO, a.n),)

    def query_segments(self, a, rate):  # every query, when some (every) key of the tile is a sink
        return (Segment(Q_START, _upto(flag(sub(a.n, K0))), Q_START, _upto(flag(sub(a.n, sub(K1, ONE))))),)

    def rewrite(self, a):  # (not global(0): it holds for the negative positions of Lq > Lk)
        return ir.Atom("none", ()) if _const(a.n) == 0 else None

    def causal_keys(self, a):
        return ("prefix", a.n)


class Global(AtomDef):
    name, params, formula = "global", (int_param("n", minimum=0),), "q < n or k < n"

    def condition(self, a):
        return _or(_cmp("<", Q, a.n), _cmp("<", K, a.n))

    def segments(self, a, rate):
        some = flag(sub(a.n, Q0))  # some query of the tile is global: it sees every key
        every = flag(sub(a.n, sub(Q1, ONE)))  # every query is global
        return (Segment(ZERO, maximum(a.n, mul(some, LK)), ZERO, maximum(a.n, mul(every, LK))),)

    def query_segments(self, a, rate):  # queries < n see everything; every query sees keys < n
        n, last = a.n, sub(K1, ONE)
        return (Segment(Q_START, maximum(n, _upto(flag(sub(n, K0)))), Q_START, maximum(n, _upto(flag(sub(n, last))))),)

    def causal_keys(self, a):  # a query q < n sees every key, and its causal keys are all < n
        return ("prefix", a.n)


class Dilated(AtomDef):
    name, formula = "dilated", "0 <= q - k < size * rate and (q - k) % rate == 0"
    params = (int_param("size", minimum=1), int_param("rate", minimum=1))
    product = ("size", "rate")

    def condition(self, a):
        d = sub(Q, K)
        return _and(_cmp(">=", d, ZERO), _cmp("<", d, mul(a.size, a.rate)), _cmp("==", mod(d, a.rate), ZERO))

    def segments(self, a, rate):
        seg = Segment(sub(Q0, mul(sub(a.size, ONE), a.rate)), Q1)
        r = _const(a.rate)
        if r is not None and rate % r == 0:
            # queries and keys of the tile are congruent modulo r: the distance test decides
            return (replace(seg, full_lo=sub(Q1, mul(a.size, a.rate)), full_hi=add(Q0, ONE)),)
        return (seg,)

    def query_segments(self, a, rate):  # k <= q <= k + (size - 1) * rate
        last = sub(K1, ONE)
        seg = Segment(K0, add(last, add(mul(sub(a.size, ONE), a.rate), ONE)))
        r = _const(a.rate)
        if r is not None and rate % r == 0:
            return (replace(seg, full_lo=last, full_hi=add(K0, mul(a.size, a.rate))),)
        return (seg,)

    def rewrite(self, a):
        return ir.Atom("window", (a.size,)) if _const(a.rate) == 1 else None

    def causal_keys(self, a):  # (with rate 1: the window of size keys)
        return ("suffix", add(sub(Q, a.size), ONE)) if _const(a.rate) == 1 else None


class LocalBlocks(AtomDef):
    name, params, formula = "local_blocks", (int_param("n", minimum=1), _BLOCK), "0 <= q // block - k // block < n"
    product = ("n", "block")

    def condition(self, a):
        d = sub(div(Q, a.block), div(K, a.block))
        return _and(_cmp(">=", d, ZERO), _cmp("<", d, a.n))

    def segments(self, a, rate):
        b, n, last = a.block, a.n, sub(Q1, ONE)
        return (Segment(mul(add(sub(div(Q0, b), n), ONE), b), mul(add(div(last, b), ONE), b),
                        mul(add(sub(div(last, b), n), ONE), b), mul(add(div(Q0, b), ONE), b)),)

    def query_segments(self, a, rate):  # k // b <= q // b < k // b + n
        b, n, last = a.block, a.n, sub(K1, ONE)
        return (Segment(mul(div(K0, b), b), mul(add(div(last, b), n), b), mul(div(last, b), b),
                        mul(add(div(K0, b), n), b)),)

    def rewrite(self, a):
        return ir.Atom("window", (a.n,)) if _const(a.block) == 1 else None

    def causal_keys(self, a):  # k // block > q // block - n
        return ("suffix", mul(add(sub(div(Q, a.block), a.n), ONE), a.block))


class Strided(AtomDef):
    name, formula = "strided", "(k // block + offset) % stride == 0"
    params = (int_param("stride", minimum=1), _BLOCK, int_param("offset", 0))

    def condition(self, a):
        return _cmp("==", mod(add(div(K, a.block), a.offset), a.stride), ZERO)

    def segments(self, a, rate):  # the kernel visits only the strided blocks: all of them are full
        return (Segment(ZERO, LK, ZERO, LK, a.block, a.stride, a.offset),)

    def query_segments(self, a, rate):  # a condition on k only: blocks ja..jb of the tile
        ja, jb = div(K0, a.block), div(sub(K1, ONE), a.block)
        first = add(ja, mod(build.int_op("neg", add(ja, a.offset)), a.stride))
        some = flag(add(sub(jb, first), ONE))  # a lattice block lies in [ja, jb]
        every = maximum(ZERO, sub(sub(ONE, sub(jb, ja)), minimum(ONE, mod(add(ja, a.offset), a.stride))))
        return (Segment(Q_START, _upto(some), Q_START, _upto(every)),)

    def rewrite(self, a):
        return ir.Atom("full", ()) if _const(a.stride) == 1 else None


class Chunked(AtomDef):
    name, formula = "chunked", "(q + offset) // size == (k + offset) // size"
    params = (int_param("size", minimum=1), int_param("offset", 0))

    def condition(self, a):
        return _cmp("==", div(add(Q, a.offset), a.size), div(add(K, a.offset), a.size))

    def causal_keys(self, a):  # the keys of the query's own chunk
        return ("suffix", sub(mul(div(add(Q, a.offset), a.size), a.size), a.offset))


class RandomBlocks(AtomDef):
    """BigBird's random blocks, exactly n per query block: the key blocks 0 .. qb of query block
    qb = q // block are split into r = min(n, qb + 1) contiguous strata of near-equal size
    (stratum i: blocks [i * m // r, (i + 1) * m // r), m = qb + 1), and stratum i contributes
    the block start + hash(seed, h, qb, i) % size: a counter-based hash of 16 bits
    (Knuth's multiplicative constant on a mix of the four), so the choice is the same at every
    length, differs between heads, and needs no random state."""

    name = "random_blocks"
    formula = "k // block is the hashed pick of its stratum among the blocks 0 .. q // block"
    params = (int_param("n", minimum=1), _BLOCK, int_param("seed", 0))

    def condition(self, a):
        qb, kb = div(Q, a.block), div(K, a.block)
        m = maximum(add(qb, ONE), ONE)  # candidates 0 .. qb (none before the first query block)
        r = minimum(a.n, m)
        stratum = div(sub(mul(add(kb, ONE), r), ONE), m)  # the i with i * m // r <= kb < (i + 1) * m // r
        start = div(mul(stratum, m), r)
        size = sub(div(mul(add(stratum, ONE), m), r), start)
        mix = mod(add(add(mul(mod(a.seed, C16), ir.Const(40503)), mul(ir.Sym("h"), ir.Const(24593))),
                      add(mul(qb, ir.Const(92821)), mul(stratum, ir.Const(68917)))), C16)
        pick = add(start, mod(div(mod(mul(mix, ir.Const(2654435761)), ir.Const(1 << 32)), C16), size))
        return _and(_cmp("<=", kb, qb), _cmp("==", kb, pick))


C16 = ir.Const(1 << 16)


class Where(AtomDef):
    name, params, formula = "where", (Param("cond", "cond"),), "cond"

    def condition(self, a):
        return a.cond

    def rewrite(self, a):  # the chunked form, whichever way it was written
        return _recognize_chunked(a.cond)


def _recognize_chunked(cond):
    """chunked(size, offset) when cond is (q + offset) // size == (k + offset) // size."""
    if not (isinstance(cond, ir.Cmp) and cond.op == "=="):
        return None
    for x, y in ((cond.a, cond.b), (cond.b, cond.a)):
        qs, ks = _chunk_of(x, "q"), _chunk_of(y, "k")
        if qs and ks and qs == ks:
            return ir.Atom("chunked", qs)
    return None


def _chunk_of(e, var):
    """(size, offset) when e is (var + offset) // size with size a positive constant."""
    if not (isinstance(e, ir.IntOp) and e.op == "//" and isinstance(e.args[1], ir.Const) and e.args[1].value >= 1):
        return None
    x = e.args[0]
    if x == ir.Sym(var):
        return (e.args[1], ZERO)
    if isinstance(x, ir.IntOp) and x.op in ("+", "-") and x.args[0] == ir.Sym(var) \
            and isinstance(x.args[1], ir.Const):
        return (e.args[1], x.args[1] if x.op == "+" else ir.Const(-x.args[1].value))
    return None


DEFINITIONS = (Full(), Nothing(), Causal(), Window(), Band(), Sink(), Global(), Dilated(), LocalBlocks(),
               Strided(), Chunked(), RandomBlocks(), Where())
