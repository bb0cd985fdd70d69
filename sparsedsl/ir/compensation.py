"""compensation(): the keys a head branch hides from each query, as one span in closed form.

A branch body holding the atom reads  C & (S1 | ... | Sn | compensation())  or
C & compensation()  (n = 0), C being the static operands of the enclosing intersection
and S1 .. Sn the static operands of the atom's union. The entry of the query at q
averages the hidden keys  C & ~(S1 | ... | Sn)  at q.

The kernels need those keys as one span [lo, hi) per query. They are one when C holds
`causal` (or an atom inside it) and every operand of C and every Si keeps, of the causal
keys 0 <= k <= q, a prefix [0, e) or a suffix [s, q] (AtomDef.causal_keys: sink, global,
none give prefixes; causal, full, window, band, local_blocks, chunked give suffixes). With
C's keys [cs, ce) (cs the largest suffix start, ce the smallest prefix end, q + 1 at most)
and the union's [0, P) and [S, q] (P the largest prefix end, S the smallest suffix start):

    hidden(q) = [max(cs, P), min(ce, S))      (no key when lo >= hi)

StreamingLLM's static part, causal & (sink(n) | window(w)), hides [n, q - w + 1)."""
from __future__ import annotations

from dataclasses import dataclass

from . import build
from . import nodes as ir
from .atoms import ATOMS, is_dynamic

COMPENSATION = ir.Atom("compensation", ())
_Q = ir.Sym("q")
_ZERO = ir.Const(0)
_NEXT = build.int_op("+", _Q, ir.Const(1))  # q + 1: the end of the causal keys


@dataclass(frozen=True)
class Parts:
    """A branch body's compensation: the operands of C, and the other operands of its union."""

    candidates: tuple[ir.Node, ...]
    shown: tuple[ir.Node, ...]


class NoSpan(ValueError):
    """The hidden keys are not one span in closed form: `node` (None: the branch) is why."""

    def __init__(self, why: str, node: ir.Node | None = None):
        super().__init__(why)
        self.node = node


def holds(body: ir.Node) -> bool:
    """Whether compensation() stands anywhere in the body."""
    return any(n is COMPENSATION for n in ir.post_order(body))


def parts(body: ir.Node) -> Parts | None:
    """The compensation of a branch body (the atom as a direct operand of the top union or
    intersection, or of a union under the top intersection); None when it stands nowhere
    else either or only deeper (inside a heads[...] expression)."""
    if body is COMPENSATION:
        return Parts((), ())
    if isinstance(body, ir.Union) and COMPENSATION in body.args:
        return Parts((), tuple(a for a in body.args if a is not COMPENSATION))
    if isinstance(body, ir.Inter):
        for d in body.args:
            inner = parts(d) if d is COMPENSATION or isinstance(d, ir.Union) else None
            if inner is not None:
                return Parts(tuple(a for a in body.args if a is not d), inner.shown)
    return None


def _keys(node: ir.Node) -> tuple[str, ir.Node]:
    if isinstance(node, ir.Atom) and not is_dynamic(node):
        d = ATOMS[node.kind]
        found = d.causal_keys(d.args(node))
        if found is not None:
            return found
    what = node.kind if isinstance(node, ir.Atom) else "this operand"
    raise NoSpan(f"{what} does not keep a prefix [0, e) or a suffix [s, q] of the causal keys k <= q, "
                 "so the keys it leaves hidden are not one span per query", node)


def span(p: Parts) -> tuple[ir.Node, ir.Node]:
    """(lo, hi): the hidden keys of the query at q are [lo, hi), expressions over q and the
    head symbols. NoSpan when they are not one span in closed form."""
    if not any(isinstance(c, ir.Atom) and ATOMS[c.kind].causal_only for c in p.candidates):
        raise NoSpan("the keys it averages must be causal: write it under an intersection with causal, "
                     "as in causal & (sink(4) | window(1024) | compensation())")
    lo, hi = _ZERO, _NEXT
    for c in p.candidates:
        kind, x = _keys(c)
        lo, hi = (build.int_op("max", lo, x), hi) if kind == "suffix" else (lo, build.int_op("min", hi, x))
    for s in p.shown:
        kind, x = _keys(s)
        lo, hi = (build.int_op("max", lo, x), hi) if kind == "prefix" else (lo, build.int_op("min", hi, x))
    return lo, hi


def hidden(body: ir.Node) -> ir.Node:
    """The mask of the keys the compensation entry of a branch body averages (none without one)."""
    p = parts(body)
    if p is None:
        return ir.Atom("none", ())
    shown = build.union(*p.shown) if p.shown else ir.Atom("none", ())
    return build.inter(*p.candidates, build.compl(shown)) if p.candidates else build.compl(shown)
