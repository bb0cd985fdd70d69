"""Checks of an instantiated pattern that need the whole tree: where dynamic
atoms may stand, and which they are; the keys compensation() averages.
(Checks that need the head count are in reference/heads.py.)"""
from __future__ import annotations

import weakref

from ..errors import PatternError, Span
from . import nodes as ir
from .atoms import is_dynamic
from .compensation import COMPENSATION, NoSpan, holds, parts, span

# Where a node stands, seen from the root: at the top, an operand of the top
# intersection, an operand of the top union, or anywhere else.
TOP, TOP_INTER, TOP_UNION, NESTED = "top", "inter", "union", "nested"

def dynamic_positions(root: ir.Node):
    """Yield (atom, position, context) for each dynamic atom in the mask tree."""
    seen = set()  # (the IR is a DAG: a shared node in the same position is visited once)
    stack = [(root, TOP, "")]
    while stack:
        item = stack.pop()
        if item in seen:
            continue
        seen.add(item)
        node, pos, ctx = item
        if isinstance(node, ir.Pattern):
            stack.append((node.body, TOP, ""))
        elif isinstance(node, ir.Heads):
            stack.extend((b.body, pos, ctx) for b in node.branches)
        elif isinstance(node, ir.Union):
            child = TOP_UNION if pos in (TOP, TOP_INTER, TOP_UNION) else NESTED
            stack.extend((a, child, ctx or ("inside a union nested in another operator" if child == NESTED else ""))
                         for a in node.args)
        elif isinstance(node, ir.Inter):
            child = TOP_INTER if pos in (TOP, TOP_INTER) else NESTED
            dynamic_args = [a for a in node.args if has_dynamic(a)]
            for a in node.args:
                why = ctx or ("inside an intersection within a union" if child == NESTED else "")
                if child != NESTED and len(dynamic_args) > 1 and a in dynamic_args:
                    stack.append((a, NESTED, "intersected with another data-dependent mask"))
                else:
                    stack.append((a, child, why))
        elif isinstance(node, ir.Diff):
            stack.append((node.a, NESTED, ctx or "on the left of '-'"))
            stack.append((node.b, NESTED, ctx or "on the right of '-'"))
        elif isinstance(node, ir.Compl):
            stack.append((node.a, NESTED, ctx or "under '~'"))
        elif is_dynamic(node):
            yield node, pos, ctx


_HAS_DYNAMIC: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def has_dynamic(node: ir.Node) -> bool:
    hit = _HAS_DYNAMIC.get(node)
    if hit is None:
        seen, stack, hit = set(), [node], False
        while stack and not hit:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            known = _HAS_DYNAMIC.get(n)
            if known is not None:  # (an earlier answer for this sub-pattern)
                hit = known
                continue
            hit = is_dynamic(n)
            stack.extend(c for c in n.children() if ir.is_mask(c) or isinstance(c, ir.Branch))
        _HAS_DYNAMIC[node] = hit
    return hit


def dynamic_atoms(root: ir.Node) -> list[ir.Atom]:
    """Dynamic atoms in source order, each once."""
    return [n for n in ir.pre_order(root) if is_dynamic(n)]


def check_dynamic_placement(root: ir.Node, spans: dict | None = None) -> None:
    """Dynamic atoms may only be operands of the top-level union, optionally under
    one enclosing intersection with static masks; raise PatternError otherwise."""
    for atom, pos, ctx in dynamic_positions(root):
        if pos == NESTED:
            span: Span | None = (spans or {}).get(atom)
            raise PatternError(
                f"{atom.kind}(...) {ctx}: a data-dependent atom may only be an operand of the "
                "top-level union, optionally under one enclosing intersection with static masks",
                span,
                ("for example: causal & (window(512) | topk(8, block=64))",),
            )


def branch_bodies(root: ir.Pattern) -> tuple[ir.Node, ...]:
    """The bodies of the top-level heads[...] branches (the body itself without them)."""
    body = root.body
    return tuple(b.body for b in body.branches) if isinstance(body, ir.Heads) else (body,)


def check_compensation(root: ir.Pattern, spans: dict | None = None) -> None:
    """compensation() must hide one span of keys per query, found in closed form
    (ir/compensation.py), and be the only data-dependent atom of its head branch."""
    spans = spans or {}
    for body in branch_bodies(root):
        if not holds(body):
            continue
        others = sorted({n.kind for n in ir.post_order(body) if is_dynamic(n) and n is not COMPENSATION})
        p = parts(body)
        at = spans.get(COMPENSATION)
        if others:
            why = f"compensation() shares its head branch with {', '.join(others)}(...)"
        elif p is None:
            why = "compensation() inside a heads[...] expression: give the heads as the pattern's branches"
        else:
            try:
                span(p)
                continue
            except NoSpan as e:
                why = f"compensation(): {e}"
                at = spans.get(e.node) or at
        raise PatternError(why, at, _COMPENSATION_NOTE)


_COMPENSATION_NOTE = ("the keys hidden by causal & (sink(n) | window(w) | compensation()) are [n, q - w + 1); "
                      "see docs/language.md, compensation",)
