"""dynamic split: a branch mask with data-dependent atoms -> what its kernels walk.

The language lets topk/landmarks stand only in the top-level union, optionally
under one enclosing intersection C with static masks (ir/check.py). So a
branch mask reads  C & (S | topk | landmarks)  or  S | topk | landmarks, and

- the static part is the mask with the dynamic atoms replaced by `none`
  (walked by the ordinary segment plan);
- a selected key block adds the pairs  C & ~static  (keys already visible
  through the static part are not counted twice; a block whose keys are all
  static for the tile's queries is skipped);
- landmark entries are extra keys that C does not restrict;
- a compensation entry is one extra key per query: the mean of the keys
  C & ~S that the static part hides, one span [lo, hi) per query in closed
  form (ir/compensation.py; the compile-time check made sure there is one).

At most one topk atom and one landmarks atom per branch are compiled to kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import build
from ..ir import compensation
from ..ir import nodes as ir
from ..atoms import atom_arg, is_dynamic
from ..ir.plan import Topk, TopkPart
from .base import rewrite
from .simplify import rule as simplify_rule

NONE = build.atom("none")


@dataclass(frozen=True)
class DynamicSplit:
    static: ir.Node
    topk: TopkPart | None = None
    landmarks: int | None = None  # the landmark block size
    compensation: tuple[ir.Node, ir.Node] | None = None  # the hidden keys [lo, hi) of the query at q


class Unsupported(ValueError):
    """The pattern is valid but has no generated kernel (the reference runs it)."""


def _atoms(mask: ir.Node) -> list[ir.Atom]:
    out, seen, stack = [], set(), [mask]
    while stack:
        n = stack.pop()
        if n in seen:  # (a DAG: each node once)
            continue
        seen.add(n)
        if is_dynamic(n):
            out.append(n)
        stack.extend(n.children())
    return out


def _static(mask: ir.Node) -> ir.Node:
    return rewrite(rewrite(mask, lambda n: NONE if is_dynamic(n) else None), simplify_rule)


def decode_topk(atom: ir.Atom) -> Topk:
    """A topk atom's arguments (each the same for every head: checked before this)."""
    return Topk(atom, atom_arg(atom, "n").value, atom_arg(atom, "block").value, atom_arg(atom, "score"),
                atom_arg(atom, "causal").value)


def split(mask: ir.Node) -> DynamicSplit:
    found = _atoms(mask)
    if not found:
        return DynamicSplit(mask)
    topks = [a for a in found if a.kind == "topk"]
    marks = [a for a in found if a.kind == "landmarks"]
    if len(topks) > 1 or len(marks) > 1:
        raise Unsupported("kernels take at most one topk(...) and one landmarks(...) atom per head branch; "
                          "use backend='reference'")
    static = _static(mask)
    context, inner = [], static
    if isinstance(mask, ir.Inter):  # C & (S | dynamic): C & ~(C & S) = C & ~S
        context = [a for a in mask.args if not _atoms(a)]
        inner = _static(build.union(*[a for a in mask.args if _atoms(a)]))
    topk = None
    if topks:
        a = topks[0]
        sel_mask = build.inter(*context, build.compl(inner)) if context else build.compl(inner)
        t = decode_topk(topks[0])
        topk = TopkPart(t.atom, t.n, t.block, t.score, t.causal, rewrite(sel_mask, simplify_rule))
    landmarks = atom_arg(marks[0], "block").value if marks else None
    hidden = _hidden(mask) if compensation.holds(mask) else None
    return DynamicSplit(static, topk, landmarks, hidden)


def _hidden(mask: ir.Node) -> tuple[ir.Node, ir.Node]:
    """The span of keys a branch's compensation entry averages (checked on the pattern as written;
    an optimized branch that lost its closed form runs on the reference)."""
    why = "no closed form for the keys compensation() hides in this branch; use backend='reference'"
    parts = compensation.parts(mask)
    if parts is None:
        raise Unsupported(why)
    try:
        return compensation.span(parts)
    except compensation.NoSpan as e:
        raise Unsupported(why) from e
