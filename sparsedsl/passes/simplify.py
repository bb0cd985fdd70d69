"""simplify: algebraic facts of the atoms, read from their definitions
(sparsedsl/atoms/): single-atom rewrites (band(l, 0) = window(l + 1),
dilated(w, 1) = window(w), empty sinks, strides of 1, a where(...) in the chunked
form = chunked(...)), atoms ordered by one argument merging (window(a) |
window(b) = window(max(a, b))), causal-only atoms inside causal (causal &
window(w) = window(w))."""
from __future__ import annotations

from ..ir import nodes as ir
from ..atoms import ATOMS
from .base import Pass, rewrite
from .canonicalize import FULL, NONE, has_landmarks
from .canonicalize import rule as canonical

CAUSAL = ir.Atom("causal", ())


def _const(x) -> int | None:
    return x.value if isinstance(x, ir.Const) else None


def _size(n) -> tuple | None:
    """(kind, the other arguments, the constant size) of an atom whose definition orders it by one
    argument (a larger value holds a superset of pairs: window, sink)."""
    if not isinstance(n, ir.Atom):
        return None
    d = ATOMS[n.kind]
    if d.merge is None:
        return None
    i = [p.name for p in d.params].index(d.merge)
    v = _const(n.args[i])
    return None if v is None else (n.kind, n.args[:i] + n.args[i + 1:], v)


def atom_rule(n: ir.Node):
    """Rewrites of single atoms into simpler equivalent masks (each atom's `rewrite`)."""
    if not isinstance(n, ir.Atom):
        return None
    d = ATOMS[n.kind]
    return d.rewrite(d.args(n))


def _merge(args, union: bool):
    """Atoms of one kind that differ only in their ordering argument merge into the widest
    (union) or the narrowest (intersection), which moves to the end."""
    out = list(args)
    for kind in ATOMS:
        group = [x for x in out if (_size(x) or (None,))[0] == kind]
        for rest in dict.fromkeys(_size(x)[1] for x in group):
            same = [x for x in group if _size(x)[1] == rest]
            if len(same) > 1:
                pick = (max if union else min)(same, key=lambda y: _size(y)[2])
                out = [x for x in out if x not in same] + [pick]
    return out if out != list(args) else None


def _causal_only(n) -> bool:
    return isinstance(n, ir.Atom) and n is not CAUSAL and ATOMS[n.kind].causal_only


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
        if CAUSAL in args and any(_causal_only(x) for x in args):
            # a causal-only atom lies inside causal: causal | it = causal, causal & it = it
            kept = [x for x in args if not _causal_only(x)] if union else [x for x in args if x is not CAUSAL]
        kept = _merge(kept, union) or kept
        if kept != args:
            return type(n)(tuple(kept)) if len(kept) > 1 else kept[0]
    if isinstance(n, ir.Diff):
        a, b = _size(n.a), _size(n.b)
        if a and b and a[:2] == b[:2] and b[2] >= a[2]:  # a smaller one of a kind minus a larger one
            return NONE
        if n.b is CAUSAL and _causal_only(n.a):
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
