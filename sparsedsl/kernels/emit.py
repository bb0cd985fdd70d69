"""IR expressions -> Triton source text (the plan-specific parts of a kernel).

Integer // and % keep Python's floor semantics (Triton's are C's): plain
operators are emitted only when the dividend is known non-negative and the
divisor a positive constant; otherwise the _fdiv/_fmod helpers of the template.
"""
from __future__ import annotations

from ..ir import nodes as ir
from ..ir.atoms import atom_arg
from ..ir.heads import branch_condition

# How each symbol is spelled in the kernel.
NAMES = {"h": "h", "H": "H", "hk": "hk", "Hk": "Hk", "q": "q_pos", "k": "k_pos",
         "q0": "q0", "q1": "q1", "k0": "k0", "k1": "k1", "Lk": "Lk", "Lq": "Lq"}
NONNEG_SYMBOLS = {"h", "H", "hk", "Hk", "k", "k0", "k1", "Lk", "Lq"}


def nonneg(n: ir.Node) -> bool:
    """True when the integer expression can never be negative."""
    if isinstance(n, ir.Const):
        return n.value >= 0
    if isinstance(n, ir.Sym):
        return n.name in NONNEG_SYMBOLS
    if isinstance(n, ir.IntOp):
        if n.op in ("+", "*", "min"):
            return all(nonneg(a) for a in n.args)
        if n.op == "max":
            return any(nonneg(a) for a in n.args)
        if n.op in ("//", "%"):
            return nonneg(n.args[0]) and nonneg(n.args[1])
        return n.op == "abs"
    return False


def int_expr(n: ir.Node) -> str:
    if isinstance(n, ir.Const):
        return str(n.value) if n.value >= 0 else f"({n.value})"
    if isinstance(n, ir.Sym):
        return NAMES[n.name]
    a = [int_expr(x) for x in n.args]
    if n.op in ("+", "-", "*"):
        return f"({a[0]} {n.op} {a[1]})"
    if n.op == "neg":
        return f"(-{a[0]})"
    if n.op == "abs":
        return f"tl.abs({a[0]})"
    if n.op in ("min", "max"):
        return f"tl.{n.op}imum({a[0]}, {a[1]})"
    num, den = n.args
    positive_const = isinstance(den, ir.Const) and den.value > 0
    if positive_const and nonneg(num):
        return f"({a[0]} {n.op} {a[1]})"
    helper = "_fdiv" if n.op == "//" else "_fmod"
    return f"{helper}({a[0]}, {a[1]})"


def cond_expr(n: ir.Node) -> str:
    if isinstance(n, ir.Bool):
        return "True" if n.value else "False"
    if isinstance(n, ir.Cmp):
        return f"({int_expr(n.a)} {n.op} {int_expr(n.b)})"
    parts = [cond_expr(a) for a in n.args]
    if n.op == "not":
        return f"({parts[0]} == 0)"
    return "(" + (" & " if n.op == "and" else " | ").join(parts) + ")"


def mask_expr(n: ir.Node) -> str:
    """The element mask over q_pos [BM, 1] and k_pos [1, BN] (scalars broadcast)."""
    if isinstance(n, ir.Atom):
        return _atom(n)
    if isinstance(n, ir.Union):
        return "(" + " | ".join(mask_expr(a) for a in n.args) + ")"
    if isinstance(n, ir.Inter):
        return "(" + " & ".join(mask_expr(a) for a in n.args) + ")"
    if isinstance(n, ir.Diff):
        return f"({mask_expr(n.a)} & ({mask_expr(n.b)} == 0))"
    if isinstance(n, ir.Compl):
        return f"({mask_expr(n.a)} == 0)"
    if isinstance(n, ir.Heads):
        out = "(q_pos < k_pos) & (q_pos > k_pos)"  # all false: uncovered heads are rejected before
        for b in reversed(n.branches):
            out = f"tl.where({cond_expr(branch_condition(b))}, {mask_expr(b.body)}, {out})"
        return out
    raise TypeError(f"not a mask: {n!r}")


def _atom(a: ir.Atom) -> str:
    kind = a.kind
    arg = lambda name: int_expr(atom_arg(a, name))  # noqa: E731
    q, k = "q_pos", "k_pos"
    if kind == "full":
        return f"({k} >= 0) | ({q} == {q})"
    if kind == "none":
        return f"({k} < 0) & ({q} == {q})"
    if kind == "causal":
        return f"({k} <= {q})"
    if kind == "window":
        return f"(({q} - {arg('size')} < {k}) & ({k} <= {q}))"
    if kind == "band":
        return f"(({q} - {arg('left')} <= {k}) & ({k} <= {q} + {arg('right')}))"
    if kind == "sink":
        return f"(({k} < {arg('n')}) | ({q} != {q}))"
    if kind == "global":
        return f"(({q} < {arg('n')}) | ({k} < {arg('n')}))"
    if kind == "dilated":
        d = ir.IntOp("-", (ir.Sym("q"), ir.Sym("k")))
        rate = atom_arg(a, "rate")
        mod = int_expr(ir.IntOp("%", (d, rate)))
        return (f"(({q} - {k} >= 0) & ({q} - {k} < {arg('size')} * {arg('rate')}) & ({mod} == 0))")
    if kind == "local_blocks":
        b = atom_arg(a, "block")
        qb = int_expr(ir.IntOp("//", (ir.Sym("q"), b)))
        kb = int_expr(ir.IntOp("//", (ir.Sym("k"), b)))
        return f"(({qb} - {kb} >= 0) & ({qb} - {kb} < {arg('n')}))"
    if kind == "strided":
        e = ir.IntOp("%", (ir.IntOp("+", (ir.IntOp("//", (ir.Sym("k"), atom_arg(a, "block"))),
                                          atom_arg(a, "offset"))), atom_arg(a, "stride")))
        return f"(({int_expr(e)} == 0) | ({q} != {q}))"
    if kind == "where":
        return f"({cond_expr(a.args[0])} | (({q} != {q}) & ({k} != {k})))"
    raise NotImplementedError(f"no kernel code for atom {kind!r}")
