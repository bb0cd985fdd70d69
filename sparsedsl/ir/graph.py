"""The IR as a networkx DiGraph, and verify(): the invariants every pass keeps.

Nodes are the (interned) IR nodes, so a sub-pattern used twice is one graph
node; an edge parent -> child carries the operand positions in `index`.
"""
from __future__ import annotations

import networkx as nx

from . import nodes as ir
from .atoms import ATOMS
from .check import NESTED, dynamic_positions


class VerifyError(AssertionError):
    """An IR invariant does not hold (a compiler bug, not a user error)."""

    def __init__(self, node: ir.Node, why: str):
        super().__init__(f"IR verify failed at {node!r}: {why}")
        self.node = node


def to_graph(root: ir.Node) -> nx.DiGraph:
    g = nx.DiGraph(root=root)
    for node in ir.pre_order(root):
        g.add_node(node, kind=type(node).__name__)
        for i, child in enumerate(node.children()):
            if g.has_edge(node, child):
                g.edges[node, child]["index"].append(i)
            else:
                g.add_edge(node, child, index=[i])
    return g


def from_graph(g: nx.DiGraph) -> ir.Node:
    roots = [n for n in g.nodes if g.in_degree(n) == 0]
    if len(roots) != 1:
        raise VerifyError(roots[0] if roots else ir.Const(0), f"graph has {len(roots)} roots, expected 1")
    return roots[0]


def verify(target) -> None:
    """Check the invariants of an IR tree (a root node) or graph; raise VerifyError."""
    g = target if isinstance(target, nx.DiGraph) else to_graph(target)
    root = from_graph(g)
    if not nx.is_directed_acyclic_graph(g):
        raise VerifyError(root, "graph has a cycle")
    for node in g.nodes:
        kids = node.children()
        for child in g.successors(node):
            for i in g.edges[node, child]["index"]:
                if i >= len(kids) or kids[i] is not child:
                    raise VerifyError(node, f"edge to operand {i} does not match the node's fields")
        if g.out_degree(node) != len(set(kids)):
            raise VerifyError(node, "graph edges and node operands differ")
        _verify_node(node)
    if isinstance(root, ir.Pattern):
        for atom, pos, _ in dynamic_positions(root):
            if pos == NESTED:
                raise VerifyError(atom, "dynamic atom outside the top-level union / intersection")


def _verify_node(node: ir.Node) -> None:
    if isinstance(node, ir.Atom):
        sig = ATOMS[node.kind]
        for p, v in zip(sig.params, node.args):
            if isinstance(v, ir.Node):
                deps = ir.symbols(v)
                if p.kind == "int" and deps & {"q", "k"}:
                    raise VerifyError(node, f"argument {p.name} depends on q/k")
                if p.constant and deps:
                    raise VerifyError(node, f"argument {p.name} must not depend on heads")
                if p.minimum is not None and isinstance(v, ir.Const) and v.value < p.minimum:
                    raise VerifyError(node, f"argument {p.name} below its minimum {p.minimum}")
    elif isinstance(node, ir.IntOp) and node.op in ("//", "%"):
        if ir.symbols(node.args[1]) & {"q", "k"}:
            raise VerifyError(node, "divisor depends on q/k")
        if isinstance(node.args[1], ir.Const) and node.args[1].value == 0:
            raise VerifyError(node, "constant zero divisor")
    elif isinstance(node, ir.Branch):
        for bound in (node.start, node.stop):
            if bound is not None and ir.symbols(bound) & {"h", "hk", "q", "k"}:
                raise VerifyError(node, "head selection depends on h, hk, q or k")
    elif isinstance(node, ir.Pattern) and ir.symbols(node) & {"q", "k"}:
        _check_qk_only_in_where(node)


def _check_qk_only_in_where(root: ir.Node) -> None:
    seen, stack = set(), [root]
    while stack:
        n = stack.pop()
        if n in seen:  # (a DAG: each node once)
            continue
        seen.add(n)
        if isinstance(n, ir.Atom) and n.kind == "where":
            continue
        if isinstance(n, ir.Sym) and n.name in ("q", "k"):
            raise VerifyError(n, "q or k used outside where(...)")
        stack.extend(n.children())
