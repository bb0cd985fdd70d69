"""The atoms of the language, each defined once (static.py, dynamic.py): the
table that the parser, the IR checks, the printer, the reference, the kernels,
the bounds analysis, the simplifier and the test strategies read.

    ATOMS[name]          the definition (base.AtomDef): params, formula, facts
    condition(atom)      a static atom's meaning as a condition over q, k, heads
    atom_arg(atom, p)    an argument by parameter name
"""
from __future__ import annotations

import weakref

from ..ir import nodes
from ..ir.ranges import INT_LIMIT, LIMIT_TEXT, bound_text, value_range, widest
from . import dynamic, static
from .base import AtomDef, Param

ATOMS: dict[str, AtomDef] = {d.name: d for d in static.DEFINITIONS + dynamic.DEFINITIONS}
DYNAMIC_ATOMS = tuple(name for name, d in ATOMS.items() if d.dynamic)

__all__ = ["ATOMS", "DYNAMIC_ATOMS", "AtomDef", "Param", "atom_arg", "args", "condition", "is_dynamic",
           "arg_problem", "atom_problem"]


def atom_arg(atom: nodes.Atom, name: str):
    """The value of an atom's argument, by parameter name."""
    return atom.args[[p.name for p in ATOMS[atom.kind].params].index(name)]


def args(atom: nodes.Atom):
    """All of an atom's arguments by name (base.Args)."""
    return ATOMS[atom.kind].args(atom)


_CONDITIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def condition(atom: nodes.Atom) -> nodes.Node:
    """A static atom's pairs as a condition over q, k and the head symbols (built once per atom)."""
    out = _CONDITIONS.get(atom)
    if out is None:
        d = ATOMS[atom.kind]
        out = _CONDITIONS[atom] = d.condition(d.args(atom))
    return out


def is_dynamic(atom: nodes.Node) -> bool:
    return isinstance(atom, nodes.Atom) and ATOMS[atom.kind].dynamic


def _kind_name(v) -> str:
    if nodes.is_int(v):
        return "an integer"
    if nodes.is_bool(v):
        return "a condition"
    return "a mask" if nodes.is_mask(v) else type(v).__name__


def choice_text(p: Param) -> str:
    """The values a choice parameter takes, in words: `one of mean, minmax, given or attention(window=..., ...)`."""
    words = list(p.choices) + [f"{c.name}({', '.join(f + '=...' for f in c.fields())})" for c in p.calls]
    return "one of " + ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def call_problem(kind: str, v) -> str | None:
    """Why a call value (base.Call) cannot be an argument of atom `kind` (None when it can)."""
    for f in v.fields():
        x = getattr(v, f)
        if type(x) is not int:
            return f"{v.name}(...) in {kind}: {f} must be an integer, got {x!r}"
        if x < v.minimum:
            return f"{v.name}(...) in {kind}: {f} must be at least {v.minimum}, got {x}"
        if x > INT_LIMIT:
            return f"{v.name}(...) in {kind}: {f} leaves the range of integers: {LIMIT_TEXT}"
    return None


def arg_problem(kind: str, p: Param, v) -> str | None:
    """Why `v` cannot be argument `p` of atom `kind` (None when it can)."""
    if p.kind == "cond":
        return None if nodes.is_bool(v) else f"{kind}(...) needs a condition, got {_kind_name(v)}"
    if p.kind == "bool":
        return None if isinstance(v, nodes.Bool) else f"{p.name} of {kind} must be true or false, got {_kind_name(v)}"
    if p.kind == "choice":
        if isinstance(v, p.calls):
            return call_problem(kind, v)
        return None if v in p.choices else f"{p.name} of {kind} must be {choice_text(p)}"
    if not nodes.is_int(v):
        return f"argument {p.name!r} of {kind} needs an integer, got {_kind_name(v)}"
    deps = nodes.symbols(v)
    if deps & {"q", "k"}:
        return f"argument {p.name!r} of {kind} may not depend on q or k (conditions on positions go in where(...))"
    if p.constant and deps:
        return f"argument {p.name!r} of {kind} must be the same for every head (it uses {', '.join(sorted(deps))})"
    if p.minimum is not None and isinstance(v, nodes.Const) and v.value < p.minimum:
        what = "block size" if p.name == "block" else p.name
        return f"{kind}: {what} must be at least {p.minimum}, got {v.value}"
    if widest(v) > INT_LIMIT:
        return f"argument {p.name!r} of {kind} may leave the range of integers: {LIMIT_TEXT}"
    return None


def atom_problem(kind: str, values: tuple) -> str | None:
    """Why arguments that are each fine cannot go together (None when they can)."""
    d = ATOMS[kind]
    if d.product is None:
        return None
    a, b = (values[[p.name for p in d.params].index(n)] for n in d.product)
    top = value_range(a)[1] * value_range(b)[1]
    if top > INT_LIMIT:
        x, y = d.product
        if isinstance(a, nodes.Const) and isinstance(b, nodes.Const):
            return f"{kind}: {x} * {y} = {top} is larger than 2**62"
        return f"{kind}: {x} * {y} may reach {bound_text(top)}; it must be at most 2**62"
    return None
