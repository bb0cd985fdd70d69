"""What a pass is, and the bottom-up rewriter passes are written with."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..ir import build
from ..ir import nodes as ir


@dataclass(frozen=True)
class Pass:
    """A named IR -> IR transformation that keeps the mask of every head the same."""

    name: str
    purpose: str
    apply: Callable[[ir.Pattern], ir.Pattern]


def rebuild(node: ir.Node, fields: tuple) -> ir.Node:
    """`node` with new field values; unions and intersections flatten again."""
    if isinstance(node, ir.Union):
        return build.union(*fields[0])
    if isinstance(node, ir.Inter):
        return build.inter(*fields[0])
    if isinstance(node, ir.IntOp):
        return build.int_op(node.op, *fields[1])
    if isinstance(node, ir.Cmp):
        return build.cmp(node.op, fields[1], fields[2])
    if isinstance(node, ir.Logic):
        return build.logic(node.op, *fields[1])
    return type(node)(*fields)


def rewrite(root: ir.Node, rule: Callable[[ir.Node], ir.Node | None]) -> ir.Node:
    """Rewrite bottom-up: children first, then `rule` on the node until it returns None."""
    memo: dict[ir.Node, ir.Node] = {}

    def visit(node):
        if node in memo:
            return memo[node]
        fields = tuple(_map(v, visit) for v in node.fields())
        new = node if fields == node.fields() else rebuild(node, fields)
        seen = 0
        while True:
            out = rule(new)
            if out is None or out is new:
                break
            new = visit(out) if out not in memo else memo[out]
            seen += 1
            if seen > 100:  # pragma: no cover - a rule that never settles is a bug
                raise RuntimeError(f"rewrite did not settle at {node!r}")
        memo[node] = new
        return new

    return visit(root)


def _map(value, fn):
    if isinstance(value, ir.Node):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map(v, fn) for v in value)
    return value
