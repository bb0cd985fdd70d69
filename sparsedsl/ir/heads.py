"""Head selections as conditions over h and H (Python index and slice semantics)."""
from __future__ import annotations

from . import build
from . import nodes as ir

ZERO, ONE = ir.Const(0), ir.Const(1)


def _neg_flag(x):
    """1 when x < 0 else 0, as integer arithmetic: min(1, max(0, -x))."""
    return build.int_op("min", ONE, build.int_op("max", ZERO, build.int_op("neg", x)))


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
