"""The table of atoms: their parameters, defaults and limits.

One table drives the parser's argument binding, the IR's type checks, the
printer and the argument checks at run time.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import nodes
from .ranges import INT_LIMIT, LIMIT_TEXT, bound_text, value_range, widest


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "int", "bool", "cond" (a condition over q, k) or "choice"
    default: object = None  # an IR node, a str for choices, or None (required)
    minimum: int | None = None  # smallest legal value of an int
    choices: tuple[str, ...] = ()
    constant: bool = False  # must not depend on the head (dynamic atoms)

    def accepts(self, value) -> bool:
        if self.kind == "int":
            return nodes.is_int(value)
        if self.kind == "bool":
            return isinstance(value, nodes.Bool)
        if self.kind == "cond":
            return nodes.is_bool(value)
        return value in self.choices


@dataclass(frozen=True)
class AtomSig:
    name: str
    params: tuple[Param, ...]
    dynamic: bool = False
    formula: str = ""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def _int(name, default=None, minimum=None, constant=False):
    d = nodes.Const(default) if default is not None else None
    return Param(name, "int", d, minimum, (), constant)


_BLOCK = _int("block", 64, 1)

ATOMS: dict[str, AtomSig] = {
    s.name: s
    for s in (
        AtomSig("full", (), formula="always"),
        AtomSig("none", (), formula="never"),
        AtomSig("causal", (), formula="k <= q"),
        AtomSig("window", (_int("size", minimum=1),), formula="q - size < k <= q"),
        AtomSig("band", (_int("left", minimum=0), _int("right", minimum=0)), formula="q - left <= k <= q + right"),
        AtomSig("sink", (_int("n", minimum=0),), formula="k < n"),
        AtomSig("global", (_int("n", minimum=0),), formula="q < n or k < n"),
        AtomSig("dilated", (_int("size", minimum=1), _int("rate", minimum=1)),
                formula="0 <= q - k < size * rate and (q - k) % rate == 0"),
        AtomSig("local_blocks", (_int("n", minimum=1), _BLOCK), formula="0 <= q // block - k // block < n"),
        AtomSig("strided", (_int("stride", minimum=1), _BLOCK, _int("offset", 0)),
                formula="(k // block + offset) % stride == 0"),
        AtomSig("where", (Param("cond", "cond"),), formula="cond"),
        AtomSig("landmarks", (_int("block", 64, 1, constant=True),), dynamic=True,
                formula="one mean key/value per complete key block j, seen when j < q // block"),
        AtomSig("topk", (_int("n", minimum=1, constant=True), _int("block", 64, 1, constant=True),
                         Param("score", "choice", "mean", choices=("mean", "minmax")),
                         Param("causal", "bool", nodes.Bool(True))), dynamic=True,
                formula="the n best-scoring key blocks of each query block"),
    )
}

DYNAMIC_ATOMS = tuple(name for name, sig in ATOMS.items() if sig.dynamic)


def atom_arg(atom: nodes.Atom, name: str):
    """The value of an atom's argument, by parameter name."""
    sig = ATOMS[atom.kind]
    return atom.args[[p.name for p in sig.params].index(name)]


def is_dynamic(atom: nodes.Node) -> bool:
    return isinstance(atom, nodes.Atom) and ATOMS[atom.kind].dynamic


def _kind_name(v) -> str:
    if nodes.is_int(v):
        return "an integer"
    if nodes.is_bool(v):
        return "a condition"
    return "a mask" if nodes.is_mask(v) else type(v).__name__


def arg_problem(kind: str, p: Param, v) -> str | None:
    """Why `v` cannot be argument `p` of atom `kind` (None when it can)."""
    if p.kind == "cond":
        return None if nodes.is_bool(v) else f"{kind}(...) needs a condition, got {_kind_name(v)}"
    if p.kind == "bool":
        return None if isinstance(v, nodes.Bool) else f"{p.name} of {kind} must be true or false, got {_kind_name(v)}"
    if p.kind == "choice":
        return None if v in p.choices else f"{p.name} of {kind} must be one of {', '.join(p.choices)}"
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


# Products the kernels compute from an atom's arguments (both factors are >= 1).
PRODUCTS = {"local_blocks": ("n", "block"), "dilated": ("size", "rate")}


def atom_problem(kind: str, values: tuple) -> str | None:
    """Why arguments that are each fine cannot go together (None when they can)."""
    if kind not in PRODUCTS:
        return None
    a, b = (values[[p.name for p in ATOMS[kind].params].index(n)] for n in PRODUCTS[kind])
    top = value_range(a)[1] * value_range(b)[1]
    if top > INT_LIMIT:
        x, y = PRODUCTS[kind]
        if isinstance(a, nodes.Const) and isinstance(b, nodes.Const):
            return f"{kind}: {x} * {y} = {top} is larger than 2**62"
        return f"{kind}: {x} * {y} may reach {bound_text(top)}; it must be at most 2**62"
    return None
