"""Head selections as conditions over h and H (Python index and slice semantics)."""
from __future__ import annotations

from . import build
from .evaluate import eval_int
from . import nodes as ir

ZERO, ONE = ir.Const(0), ir.Const(1)


def _clamp01(x):
    return build.int_op("min", ONE, build.int_op("max", ZERO, x))


def _neg_flag(x):
    """1 when x < 0 else 0, as integer arithmetic: min(1, max(0, -x))."""
    return _clamp01(build.int_op("neg", x))


def _slice_bound(x):
    """x + H if x < 0, then clamped to [0, H]."""
    H = ir.Sym("H")
    shifted = build.int_op("+", x, build.int_op("*", H, _neg_flag(x)))
    return build.int_op("min", H, build.int_op("max", ZERO, shifted))


def branch_condition(b: ir.Branch) -> ir.Node:
    """The condition over h and H under which a head's selection names branch `b`."""
    h, H = ir.Sym("h"), ir.Sym("H")
    if b.kind == "all":
        return ir.Bool(True)
    if b.kind == "index":
        return build.cmp("==", h, build.int_op("+", b.start, build.int_op("*", H, _neg_flag(b.start))))
    lo = ZERO if b.start is None else _slice_bound(b.start)
    hi = H if b.stop is None else _slice_bound(b.stop)
    return build.logic("and", build.cmp(">=", h, lo), build.cmp("<", h, hi))


def indicator(cond: ir.Node) -> ir.Node:
    """An integer expression equal to 1 where the condition (over the head symbols) holds and
    0 elsewhere: min/max arithmetic on its comparisons, which the kernels compute per head."""
    if isinstance(cond, ir.Bool):
        return ir.Const(int(cond.value))
    if isinstance(cond, ir.Logic):
        parts = [indicator(a) for a in cond.args]
        if cond.op == "not":
            return build.int_op("-", ONE, parts[0])
        out = parts[0]
        for x in parts[1:]:
            out = build.int_op("min" if cond.op == "and" else "max", out, x)
        return out
    a, b, op = cond.a, cond.b, cond.op
    if op in (">", ">="):
        a, b, op = b, a, "<" if op == ">" else "<="
    if op in ("<", "<="):  # a < b: b - a >= 1; a <= b: b - a + 1 >= 1
        return _clamp01(build.int_op("+", build.int_op("-", b, a), ONE) if op == "<=" else build.int_op("-", b, a))
    differ = build.int_op("min", ONE, build.int_op("abs", build.int_op("-", a, b)))
    return differ if op == "!=" else build.int_op("-", ONE, differ)


def branch_heads(b: ir.Branch, num_heads: int, num_kv_heads: int) -> range:
    """The heads a branch selection names (before first-match resolution)."""
    env = {"H": num_heads, "Hk": num_kv_heads}
    if b.kind == "all":
        return range(num_heads)
    if b.kind == "index":
        i = eval_int(b.start, env)
        i = i + num_heads if i < 0 else i
        return range(i, i + 1) if 0 <= i < num_heads else range(0)
    start = None if b.start is None else eval_int(b.start, env)
    stop = None if b.stop is None else eval_int(b.stop, env)
    return range(num_heads)[slice(start, stop)]


def head_segments(node: ir.Heads, num_heads: int, num_kv_heads: int) -> list[tuple[int, int, int]]:
    """[(start, stop, branch)] covering range(num_heads) in order: the heads
    start..stop-1 take branch `branch` (-1: no branch covers them). Selections are
    ranges, so this needs no list of every head."""
    segs = [(0, num_heads, -1)]
    for i, b in enumerate(node.branches):
        r = branch_heads(b, num_heads, num_kv_heads)
        lo, hi = r.start, r.stop
        if lo >= hi:
            continue
        out = []
        for a, z, owner in segs:
            if owner >= 0 or z <= lo or a >= hi:
                out.append((a, z, owner))
                continue
            out.extend(s for s in ((a, max(a, lo), -1), (max(a, lo), min(z, hi), i), (min(z, hi), z, -1))
                       if s[0] < s[1])
        segs = out
    return segs
