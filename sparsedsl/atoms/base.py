"""What an atom is: its signature (parameters, defaults, limits) and, for a
static atom, its meaning as a condition over the positions q, k and the head
symbols, its key segments for a query tile and query segments for a key tile,
and the facts the simplifier may use. Each atom is defined once, in static.py
or dynamic.py; the parser, the IR checks, the printer, the reference, the
kernels' element mask, the bounds analysis, the simplifier and the test
strategies all read these definitions."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..ir import nodes
from . import solve
from .segments import Segment


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "int", "bool", "cond" (a condition over q, k) or "choice"
    default: object = None  # an IR node, a str for choices, or None (required)
    minimum: int | None = None  # smallest legal value of an int
    choices: tuple[str, ...] = ()
    constant: bool = False  # must not depend on the head (dynamic atoms)
    calls: tuple[type, ...] = ()  # a choice may also be one of these call values (Call subclasses)

    def accepts(self, value) -> bool:
        if self.kind == "int":
            return nodes.is_int(value)
        if self.kind == "bool":
            return isinstance(value, nodes.Bool)
        if self.kind == "cond":
            return nodes.is_bool(value)
        return value in self.choices or isinstance(value, self.calls)


@dataclass(frozen=True)
class Call:
    """A choice written as a call with integer keyword arguments, `name(a=1, b=2)` (topk's
    score=attention(window=w, pool=p)). Subclasses are frozen dataclasses of int fields, each
    at least `minimum`; the value prints as it is written."""

    name = ""
    minimum = 1

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{f}={getattr(self, f)}' for f in self.fields())})"


def int_param(name, default=None, minimum=None, constant=False) -> Param:
    d = nodes.Const(default) if default is not None else None
    return Param(name, "int", d, minimum, (), constant)


class Args:
    """An atom's arguments by parameter name: `a.size`, `a["size"]`."""

    def __init__(self, names, values):
        self.__dict__.update(zip(names, values))

    def __getitem__(self, name):
        return self.__dict__[name]


class AtomDef:
    """One atom. Subclasses set the class attributes and, for a static atom,
    `condition`; segments default to the exact solution of the condition
    (solve.py), which atoms with a strided layout or a cheaper closed form
    override."""

    name: str = ""
    params: tuple[Param, ...] = ()
    formula: str = ""  # the meaning in words, for the docs and error messages
    dynamic: bool = False  # depends on the data (q, k): topk, landmarks
    # simplifier facts: `merge` names the one argument by which a larger value holds a superset
    # of pairs (unions of such atoms keep the largest, intersections the smallest); `causal_only`:
    # every pair it holds has k <= q (causal & it = it, causal | it = causal).
    merge: str | None = None
    causal_only: bool = False
    # products of two arguments the kernels compute (both >= 1): checked against the integer limit
    product: tuple[str, str] | None = None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def args(self, atom: nodes.Atom) -> Args:
        return Args((p.name for p in self.params), atom.args)

    def condition(self, a: Args) -> nodes.Node:
        """The pairs the atom holds: a condition over q, k and the head symbols."""
        raise NotImplementedError(f"{self.name} is decided by the data")

    def segments(self, a: Args, rate: int) -> tuple[Segment, ...]:
        """Key segments for the query tile q0 <= q < q1 (segments.py). `rate`: queries and
        keys of a tile are congruent modulo rate (the residue layout, passes/plan.py)."""
        return solve.key_segments(self.condition(a))

    def query_segments(self, a: Args, rate: int) -> tuple[Segment, ...]:
        """Query segments for the key tile k0 <= k < k1 (the backward's dK/dV kernel)."""
        return solve.query_segments(self.condition(a))

    def rewrite(self, a: Args) -> nodes.Node | None:
        """An equivalent simpler mask, or None."""
        return None

    def causal_keys(self, a: Args) -> tuple[str, nodes.Node] | None:
        """Of the causal keys 0 <= k <= q, the ones the atom holds, when they are a prefix or a
        suffix for every query: ("prefix", e), the keys k < e; ("suffix", s), the keys k >= s
        (e, s: expressions over q and the head symbols). None otherwise. compensation() reads
        it to find the keys a branch hides in closed form (ir/compensation.py)."""
        return None
