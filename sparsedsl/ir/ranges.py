"""Interval arithmetic over integer IR expressions: a sound (lo, hi) for every
node, so that the compiler can prove that no intermediate value leaves
[-INT_LIMIT, INT_LIMIT] (and so never overflows 64-bit arithmetic) for any
sequence length and head count the runtime accepts.

    value_range(node)   (lo, hi) of the expression's value
    widest(node)        the largest |value| any node of the expression may take

Both walk the expression as a DAG (each shared node once) and remember what
they computed for the default symbol ranges.
"""
from __future__ import annotations

import math
import weakref

from . import nodes as ir

INT_LIMIT = 2**62  # the language's integers lie in [-INT_LIMIT, INT_LIMIT]
POSITION_LIMIT = 2**31  # head counts are at most this
SEQUENCE_LIMIT = 2**30  # sequences have fewer queries and keys than this (runtime/inputs.py)

_P, _L = POSITION_LIMIT, SEQUENCE_LIMIT
SYMBOL_RANGES: dict[str, tuple[int, int]] = {
    # q = Lk - Lq + row is negative in the first rows when Lq > Lk
    "q": (-(_L - 1), _L - 1),
    "k": (0, _L - 1),
    "h": (0, _P - 1),
    "hk": (0, _P - 1),
    "H": (1, _P),
    "Hk": (1, _P),
    # the kernel's tile symbols
    "q0": (0, _L),
    "q1": (0, _L),
    "k0": (0, _L),
    "k1": (0, _L),
    "Lq": (0, _L),
    "Lk": (0, _L),
    # a probe's blocks (q // q_block, k // k_block with blocks >= 1)
    "qb": (-(_L - 1), _L - 1),
    "kb": (0, _L - 1),
}

_RANGE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # for SYMBOL_RANGES only
_WIDE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _floordiv(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    # x // y is monotone in x, and in y on each side of 0, so the corners bound it;
    # a divisor is never 0 at run time (checked), so 0 is cut out of b.
    parts = [p for p in ((b[0], min(b[1], -1)), (max(b[0], 1), b[1])) if p[0] <= p[1]]
    if not parts:
        return (0, 0)
    vals = [x // y for lo, hi in parts for x in a for y in (lo, hi)]
    return min(vals), max(vals)


def _mod(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    out = []
    if b[1] >= 1:  # positive divisors d: the result is in [0, d - 1], or x itself when 0 <= x < d
        d_lo, d_hi = max(b[0], 1), b[1]
        out.append(a if a[0] >= 0 and a[1] < d_lo else (0, d_hi - 1))
    if b[0] <= -1:  # negative divisors d: the result is in [d + 1, 0]
        d_lo, d_hi = b[0], min(b[1], -1)
        out.append(a if a[1] <= 0 and a[0] > d_hi else (d_lo + 1, 0))
    if not out:
        return (0, 0)
    return min(lo for lo, _ in out), max(hi for _, hi in out)


def _abs(a: tuple[int, int]) -> tuple[int, int]:
    if a[0] >= 0:
        return a
    if a[1] <= 0:
        return (-a[1], -a[0])
    return (0, max(-a[0], a[1]))


def _mul(a, b):
    vals = [x * y for x in a for y in b]
    return min(vals), max(vals)


_OPS = {
    "+": lambda a, b: (a[0] + b[0], a[1] + b[1]),
    "-": lambda a, b: (a[0] - b[1], a[1] - b[0]),
    "*": _mul,
    "//": _floordiv,
    "%": _mod,
    "min": lambda a, b: (min(a[0], b[0]), min(a[1], b[1])),
    "max": lambda a, b: (max(a[0], b[0]), max(a[1], b[1])),
    "neg": lambda a: (-a[1], -a[0]),
    "abs": _abs,
}


def _fill(node: ir.Node, ranges, memo) -> tuple[int, int]:
    for n in ir.post_order(node, memo):
        if isinstance(n, ir.Const):
            memo[n] = (n.value, n.value)
        elif isinstance(n, ir.Sym):
            memo[n] = ranges[n.name]
        elif isinstance(n, ir.IntOp):
            memo[n] = _OPS[n.op](*(memo[a] for a in n.args))
        else:
            raise TypeError(f"not an integer expression: {n!r}")
    return memo[node]


def value_range(node: ir.Node, ranges: dict[str, tuple[int, int]] = SYMBOL_RANGES) -> tuple[int, int]:
    """A sound (lo, hi) of an integer expression, with symbols in `ranges`."""
    return _fill(node, ranges, _RANGE_CACHE if ranges is SYMBOL_RANGES else {})


def widest(node: ir.Node, ranges: dict[str, tuple[int, int]] = SYMBOL_RANGES) -> int:
    """The largest absolute value that any node of the expression may take."""
    default = ranges is SYMBOL_RANGES
    rmemo, memo = (_RANGE_CACHE, _WIDE_CACHE) if default else ({}, {})
    _fill(node, ranges, rmemo)
    for n in ir.post_order(node, memo):
        lo, hi = rmemo[n]
        memo[n] = max([abs(lo), abs(hi)] + [memo[c] for c in n.children()])
    return memo[node]


# ---- messages (shared by the language and the Python builder) --------------------

def bound_text(v: int) -> str:
    """v exactly when it is below 2**64, else as a power of two: 2**93, -2**93.6."""
    if abs(v) < 2**64:
        return str(v)
    e = round(math.log2(abs(v)), 1)
    return f"{'-' if v < 0 else ''}2**{int(e) if e == int(e) else e}"


def describe(node: ir.Node, limit: int = 80) -> str:
    """Short source-like text of an expression (printed only when small)."""
    from .printer import expr

    size, stack = 0, [node]
    while stack and size <= 60:  # (a shared DAG may print exponentially long)
        n = stack.pop()
        size += 1
        stack.extend(n.children())
    if size > 60:
        return "this expression"
    text = expr(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


LIMIT_TEXT = "integers lie in [-2**62, 2**62]"


def range_problem(node: ir.Node, text: str | None = None) -> str | None:
    """Why an integer expression may leave [-INT_LIMIT, INT_LIMIT] (None when it may not).
    Checks the node itself (its operands are checked when they are built); `text`
    names the expression (default: the printed IR)."""
    lo, hi = value_range(node)
    if -INT_LIMIT <= lo and hi <= INT_LIMIT:
        return None
    if isinstance(node, ir.Const):
        return f"integer {node.value} is out of range: {LIMIT_TEXT}"
    v = hi if abs(hi) >= abs(lo) else lo
    return (f"{text or describe(node)} may reach {bound_text(v)}: {LIMIT_TEXT} at every step, for every "
            "position (-2**30 < q < 2**30, 0 <= k < 2**30) and head (0 <= h < H <= 2**31)")
