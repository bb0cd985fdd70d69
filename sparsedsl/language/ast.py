"""The syntax tree of an .attn file: what was written, with source spans.

Names are not resolved here; `lower.py` turns this into the IR.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Source, Span


@dataclass(frozen=True)
class Expr:
    span: Span = field(repr=False, compare=False)


@dataclass(frozen=True)
class Num(Expr):
    value: int = 0


@dataclass(frozen=True)
class BoolLit(Expr):
    value: bool = False


@dataclass(frozen=True)
class Name(Expr):
    id: str = ""


@dataclass(frozen=True)
class Keyword:
    name: str
    value: Expr
    span: Span = field(repr=False, compare=False)


@dataclass(frozen=True)
class Call(Expr):
    func: str = ""
    args: tuple[Expr, ...] = ()
    kwargs: tuple[Keyword, ...] = ()


@dataclass(frozen=True)
class BinOp(Expr):
    """op is one of | & - + * // % and or."""

    op: str = ""
    left: Expr | None = None
    right: Expr | None = None


@dataclass(frozen=True)
class UnaryOp(Expr):
    """op is one of - ~ not."""

    op: str = ""
    operand: Expr | None = None


@dataclass(frozen=True)
class Compare(Expr):
    """A comparison chain: operands[0] ops[0] operands[1] ops[1] ..."""

    ops: tuple[str, ...] = ()
    operands: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class Branch:
    """heads[SEL] => body; kind is 'all', 'index' (start) or 'slice' (start:stop)."""

    kind: str
    start: Expr | None
    stop: Expr | None
    body: Expr
    span: Span = field(repr=False, compare=False)


@dataclass(frozen=True)
class HeadSwitch(Expr):
    branches: tuple[Branch, ...] = ()


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Expr | None
    span: Span = field(repr=False, compare=False)


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    span: Span = field(repr=False, compare=False)


@dataclass(frozen=True)
class PatternDef:
    name: str
    params: tuple[Param, ...]
    lets: tuple[Let, ...]
    body: Expr
    span: Span = field(repr=False, compare=False)


@dataclass(frozen=True)
class Import:
    path: str
    span: Span = field(repr=False, compare=False)


@dataclass(frozen=True)
class Module:
    source: Source
    imports: tuple[Import, ...]
    patterns: tuple[PatternDef, ...]
