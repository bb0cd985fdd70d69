"""IR -> text in the .attn language. Parsing the text gives back the same IR."""
from __future__ import annotations

import threading

from . import nodes as ir
from .atoms import ATOMS

# Binding strength, loosest first; matches grammar/attn.lark.
_PREC = {"or": 1, "and": 2, "not": 3, "cmp": 4, "|": 5, "-": 6, "+": 6, "&": 7, "*": 8, "//": 8, "%": 8,
         "unary": 9, "atom": 10}


def to_text(root: ir.Node) -> str:
    """A Pattern as a complete .attn definition; any other node as an expression.

    The IR is a DAG: when printing it as a tree would repeat shared parts many
    times over, each shared part is printed once, as a `let`."""
    if isinstance(root, ir.Pattern):
        _STATE.names = {}
        lets = [f"    let {name} = {text}" for name, text in _lets(root.body)]
        try:
            if isinstance(root.body, ir.Heads):
                lines = [f"    {_branch(b)}" for b in root.body.branches]
            else:
                lines = [f"    {expr(root.body)}"]
        finally:
            _STATE.names = {}
        return f"pattern {root.name}() {{\n" + "\n".join(lets + lines) + "\n}\n"
    return expr(root)


_STATE = threading.local()  # .names: shared node -> its let name, while this thread prints a pattern
_INLINE = (ir.Const, ir.Sym, ir.Bool, ir.Branch, ir.Heads)


def _lets(body: ir.Node) -> list[tuple[str, str]]:
    """(name, text) of the shared nodes to bind first, children first; none when the
    tree is at most a few times the DAG (ordinary patterns print as they always did)."""
    order, uses, size = ir.post_order(body), {}, {}
    for n in order:
        size[n] = 1 + sum(size[c] for c in n.children())
        for c in n.children():
            uses[c] = uses.get(c, 0) + 1
    if size[body] <= 4 * len(order) + 200:
        return []
    out = []
    for n in order:
        if uses.get(n, 0) > 1 and not isinstance(n, _INLINE) and n.children():
            text = expr(n)
            _STATE.names[n] = f"shared_{len(out) + 1}"
            out.append((_STATE.names[n], text))
    return out


def expr(node: ir.Node) -> str:
    return _expr(node)[0]


def _wrap(node: ir.Node, min_prec: int) -> str:
    text, prec = _expr(node)
    return f"({text})" if prec < min_prec else text


def _binary(op: str, left: ir.Node, right: ir.Node) -> tuple[str, int]:
    p = _PREC[op]
    return f"{_wrap(left, p)} {op} {_wrap(right, p + 1)}", p


def _chain(op: str, args) -> tuple[str, int]:
    p = _PREC[op]
    return f" {op} ".join(_wrap(a, p + 1) if i else _wrap(a, p) for i, a in enumerate(args)), p


def _expr(n: ir.Node) -> tuple[str, int]:
    name = getattr(_STATE, "names", {}).get(n)
    if name is not None:
        return name, _PREC["atom"]
    if isinstance(n, ir.Const):
        return str(n.value), (_PREC["unary"] if n.value < 0 else _PREC["atom"])
    if isinstance(n, ir.Sym):
        return n.name, _PREC["atom"]
    if isinstance(n, ir.Bool):
        return ("true" if n.value else "false"), _PREC["atom"]
    if isinstance(n, ir.IntOp):
        if n.op == "neg":
            return f"-{_wrap(n.args[0], _PREC['unary'])}", _PREC["unary"]
        if n.op in ("min", "max", "abs"):
            return f"{n.op}({', '.join(expr(a) for a in n.args)})", _PREC["atom"]
        return _binary(n.op, *n.args)
    if isinstance(n, ir.Cmp):
        p = _PREC["cmp"]
        return f"{_wrap(n.a, p + 1)} {n.op} {_wrap(n.b, p + 1)}", p
    if isinstance(n, ir.Logic):
        if n.op == "not":
            return f"not {_wrap(n.args[0], _PREC['not'])}", _PREC["not"]
        return _chain(n.op, n.args)
    if isinstance(n, ir.Union):
        return _chain("|", n.args)
    if isinstance(n, ir.Inter):
        return _chain("&", n.args)
    if isinstance(n, ir.Diff):
        return _binary("-", n.a, n.b)
    if isinstance(n, ir.Compl):
        return f"~{_wrap(n.a, _PREC['unary'])}", _PREC["unary"]
    if isinstance(n, ir.Atom):
        return _atom(n), _PREC["atom"]
    if isinstance(n, ir.Heads):
        return "(" + ", ".join(_branch(b) for b in n.branches) + ")", _PREC["atom"]
    raise TypeError(f"cannot print {n!r}")


def _branch(b: ir.Branch) -> str:
    if b.kind == "all":
        sel = "*"
    elif b.kind == "index":
        sel = expr(b.start)
    else:
        sel = f"{expr(b.start) if b.start is not None else ''}:{expr(b.stop) if b.stop is not None else ''}"
    return f"heads[{sel}] => {expr(b.body)}"


def _atom(n: ir.Atom) -> str:
    sig = ATOMS[n.kind]
    if not sig.params:
        return n.kind
    parts = []
    for p, v in zip(sig.params, n.args):
        if p.default is not None and v == p.default:
            continue
        text = expr(v) if isinstance(v, ir.Node) else str(v)  # (a choice: a name, or a call value)
        parts.append(text if p.default is None else f"{p.name}={text}")
    return f"{n.kind}({', '.join(parts)})" if parts else n.kind
