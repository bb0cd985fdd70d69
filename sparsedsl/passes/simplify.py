"""simplify: algebraic facts of the atoms (window(a) | window(b) = window(max(a, b)),
causal & window(w) = window(w), band(l, 0) = window(l + 1), dilated(w, 1) =
window(w), empty sinks and strides of 1, ...)."""
from __future__ import annotations

from ..ir import nodes as ir
from ..ir.ranges import INT_LIMIT, value_range
from .base import Pass, rewrite
from .canonicalize import FULL, NONE, has_landmarks
from .canonicalize import rule as canonical

CAUSAL = ir.Atom("causal", ())


def _const(x) -> int | None:
    return x.value if isinstance(x, ir.Const) else None


def _atom(n, kind):
    return isinstance(n, ir.Atom) and n.kind == kind


def _window_size(n) -> int | None:
    """w when n is window(w) with a constant w."""
    return _const(n.args[0]) if _atom(n, "window") else None


def atom_rule(n: ir.Node):
    """Rewrites of single atoms into simpler equivalent atoms."""
    if not isinstance(n, ir.Atom):
        return None
    a = [_const(x) if isinstance(x, ir.Node) else x for x in n.args]
    if n.kind == "band" and a[1] == 0 and value_range(n.args[0])[1] < INT_LIMIT:  # (left + 1 stays in range)
        return ir.Atom("window", (ir.IntOp("+", (n.args[0], ir.Const(1))) if a[0] is None else ir.Const(a[0] + 1),))
    if n.kind == "dilated" and a[1] == 1:
        return ir.Atom("window", (n.args[0],))
    if n.kind == "sink" and a[0] == 0:  # (not global(0): it holds for the negative positions of Lq > Lk)
        return NONE
    if n.kind == "strided" and a[0] == 1:
        return FULL
    if n.kind == "local_blocks" and a[1] == 1:
        return ir.Atom("window", (n.args[0],))
    return None


def _merge(args, kind, pick):
    """Replace all constant-size `kind` atoms in args by one with pick(sizes)."""
    sizes = [_const(x.args[0]) for x in args if _atom(x, kind) and _const(x.args[0]) is not None]
    if len(sizes) < 2:
        return None
    rest = [x for x in args if not (_atom(x, kind) and _const(x.args[0]) is not None)]
    return rest + [ir.Atom(kind, (ir.Const(pick(sizes)),))]


def set_rule(n: ir.Node):
    """Facts about unions and intersections of atoms."""
    if isinstance(n, (ir.Union, ir.Inter)):
        union = isinstance(n, ir.Union)
        args = list(n.args)
        # absorption: a | (a & b) = a, a & (a | b) = a
        inner = ir.Inter if union else ir.Union
        absorbed = [x for x in args if isinstance(x, inner) and not has_landmarks(x) and any(a in x.args for a in args if a is not x)]
        if absorbed:
            kept = [x for x in args if x not in absorbed]
            return type(n)(tuple(kept)) if len(kept) > 1 else kept[0]
        kept = args
        if CAUSAL in args and any(_atom(x, "window") for x in args):
            # window(w) lies inside causal: causal | window = causal, causal & window = window
            kept = [x for x in args if not _atom(x, "window")] if union else [x for x in args if x is not CAUSAL]
        for kind in ("window", "sink"):  # same-kind atoms merge into the widest / narrowest
            kept = _merge(kept, kind, max if union else min) or kept
        if kept != args:
            return type(n)(tuple(kept)) if len(kept) > 1 else kept[0]
    if isinstance(n, ir.Diff):
        wa, wb = _window_size(n.a), _window_size(n.b)
        if wa is not None and wb is not None and wb >= wa:
            return NONE
        if n.b is CAUSAL and _atom(n.a, "window"):
            return NONE
    return None


def rule(n: ir.Node):
    for r in (atom_rule, set_rule, canonical):
        out = r(n)
        if out is not None and out is not n:
            return out
    return None


def run(root: ir.Pattern) -> ir.Pattern:
    return rewrite(root, rule)


SIMPLIFY = Pass("simplify", "algebraic facts of the atoms (window | window = wider window, "
                "causal & window = window, band(l, 0) = window(l + 1), dilated(w, 1) = window(w), ...)", run)
