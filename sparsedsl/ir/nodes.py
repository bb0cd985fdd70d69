"""IR nodes: immutable and interned, so building the same node twice gives the
same object and equality is identity (identical sub-patterns are one node).

Integer expressions: Const, Sym, IntOp.  Conditions: Bool, Cmp, Logic.
Masks: Atom, Union, Inter, Diff, Compl, Heads (made of Branch).  Root: Pattern.
"""
from __future__ import annotations

import weakref

INT_OPS = ("+", "-", "*", "//", "%", "neg", "min", "max", "abs")
CMP_OPS = ("<", "<=", ">", ">=", "==", "!=")
LOGIC_OPS = ("and", "or", "not")
SYMBOLS = ("h", "H", "hk", "Hk", "q", "k")
# Symbols of kernel plans only (never written by users): the bounding box of a
# tile, q0 <= q < q1 and k0 <= k < k1, and the numbers of keys Lk and queries Lq
# (query positions run over [Lk - Lq, Lk): bottom-right alignment); a probe's query
# and key blocks qb = q // q_block, kb = k // k_block (ir/plan.py Probe).
PLAN_SYMBOLS = ("q0", "q1", "k0", "k1", "Lk", "Lq", "qb", "kb")
BRANCH_KINDS = ("all", "index", "slice")


class Node:
    """Base of all IR nodes. Subclasses list their fields in `_fields`."""

    __slots__ = ("__weakref__",)
    _fields: tuple[str, ...] = ()
    _table: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def __new__(cls, *args):
        if len(args) != len(cls._fields):
            raise TypeError(f"{cls.__name__} takes {len(cls._fields)} fields, got {len(args)}")
        cls._check(args)
        key = (cls, args)
        node = Node._table.get(key)
        if node is None:
            node = object.__new__(cls)
            for name, value in zip(cls._fields, args):
                object.__setattr__(node, name, value)
            Node._table[key] = node
        return node

    @classmethod
    def _check(cls, args) -> None:
        """Type checks of the fields; raise TypeError."""

    def __setattr__(self, name, value):
        raise AttributeError(f"IR nodes are immutable ({type(self).__name__}.{name})")

    def __reduce__(self):
        return (type(self), self.fields())

    def fields(self) -> tuple:
        return tuple(getattr(self, f) for f in self._fields)

    def children(self) -> tuple[Node, ...]:
        """Operand nodes, in order (nested tuples flattened)."""
        out: list[Node] = []
        for value in self.fields():
            _collect(value, out)
        return tuple(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(v) for v in self.fields())})"


def _collect(value, out: list) -> None:
    if isinstance(value, Node):
        out.append(value)
    elif isinstance(value, tuple):
        for v in value:
            _collect(v, out)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise TypeError(msg)


# ---- integer expressions -------------------------------------------------------

class Const(Node):
    __slots__ = ("value",)
    _fields = ("value",)

    @classmethod
    def _check(cls, args):
        _need(type(args[0]) is int, f"Const needs an int, got {args[0]!r}")


class Sym(Node):
    """A built-in variable: h, H, hk, Hk (heads) or q, k (positions, in where only)."""

    __slots__ = ("name",)
    _fields = ("name",)

    @classmethod
    def _check(cls, args):
        _need(args[0] in SYMBOLS or args[0] in PLAN_SYMBOLS, f"unknown symbol {args[0]!r}")


class IntOp(Node):
    __slots__ = ("op", "args")
    _fields = ("op", "args")

    @classmethod
    def _check(cls, args):
        op, operands = args
        _need(op in INT_OPS, f"unknown int op {op!r}")
        _need(isinstance(operands, tuple) and all(is_int(a) for a in operands), "IntOp operands must be ints")
        arity = 1 if op in ("neg", "abs") else 2
        _need(len(operands) == arity, f"{op} takes {arity} operands")


# ---- conditions -------------------------------------------------------------------

class Bool(Node):
    __slots__ = ("value",)
    _fields = ("value",)

    @classmethod
    def _check(cls, args):
        _need(type(args[0]) is bool, f"Bool needs a bool, got {args[0]!r}")


class Cmp(Node):
    __slots__ = ("op", "a", "b")
    _fields = ("op", "a", "b")

    @classmethod
    def _check(cls, args):
        _need(args[0] in CMP_OPS and is_int(args[1]) and is_int(args[2]), "bad Cmp")


class Logic(Node):
    __slots__ = ("op", "args")
    _fields = ("op", "args")

    @classmethod
    def _check(cls, args):
        op, operands = args
        _need(op in LOGIC_OPS and isinstance(operands, tuple), "bad Logic")
        _need(all(is_bool(a) for a in operands), "Logic operands must be conditions")
        _need(len(operands) == 1 if op == "not" else len(operands) >= 2, f"bad arity for {op}")


# ---- masks -------------------------------------------------------------------------

class Atom(Node):
    """A primitive pattern; `args` is the full argument tuple (defaults filled in)."""

    __slots__ = ("kind", "args")
    _fields = ("kind", "args")

    @classmethod
    def _check(cls, args):
        from .atoms import ATOMS

        kind, values = args
        _need(kind in ATOMS, f"unknown atom {kind!r}")
        _need(isinstance(values, tuple) and len(values) == len(ATOMS[kind].params), f"{kind}: wrong arity")
        for p, v in zip(ATOMS[kind].params, values):
            if not p.accepts(v):  # (the message only when needed: the repr of a DAG unfolds it)
                raise TypeError(f"{kind}: bad value {v!r} for {p.name}")


class Union(Node):
    __slots__ = ("args",)
    _fields = ("args",)

    @classmethod
    def _check(cls, args):
        _need(isinstance(args[0], tuple) and len(args[0]) >= 2 and all(is_mask(a) for a in args[0]), "bad Union")


class Inter(Node):
    __slots__ = ("args",)
    _fields = ("args",)

    @classmethod
    def _check(cls, args):
        _need(isinstance(args[0], tuple) and len(args[0]) >= 2 and all(is_mask(a) for a in args[0]), "bad Inter")


class Diff(Node):
    __slots__ = ("a", "b")
    _fields = ("a", "b")

    @classmethod
    def _check(cls, args):
        _need(is_mask(args[0]) and is_mask(args[1]), "bad Diff")


class Compl(Node):
    __slots__ = ("a",)
    _fields = ("a",)

    @classmethod
    def _check(cls, args):
        _need(is_mask(args[0]), "bad Compl")


class Branch(Node):
    """heads[...] => body. kind 'all'; 'index' (start); 'slice' (start, stop, each may be None)."""

    __slots__ = ("kind", "start", "stop", "body")
    _fields = ("kind", "start", "stop", "body")

    @classmethod
    def _check(cls, args):
        kind, start, stop, body = args
        _need(kind in BRANCH_KINDS, f"bad branch kind {kind!r}")
        _need(start is None or is_int(start), "branch start must be an int")
        _need(stop is None or is_int(stop), "branch stop must be an int")
        _need(kind != "index" or (start is not None and stop is None), "index branch needs start only")
        _need(kind != "all" or (start is None and stop is None), "'all' branch takes no bounds")
        _need(is_mask(body), "branch body must be a mask")


class Heads(Node):
    """Per-head choice: each head takes the first branch whose selection holds it."""

    __slots__ = ("branches",)
    _fields = ("branches",)

    @classmethod
    def _check(cls, args):
        _need(isinstance(args[0], tuple) and len(args[0]) >= 1, "Heads needs branches")
        _need(all(isinstance(b, Branch) for b in args[0]), "Heads takes Branch nodes")


class Pattern(Node):
    """The root: a named, fully instantiated pattern."""

    __slots__ = ("name", "body")
    _fields = ("name", "body")

    @classmethod
    def _check(cls, args):
        _need(isinstance(args[0], str) and is_mask(args[1]), "bad Pattern")


INT_NODES = (Const, Sym, IntOp)
BOOL_NODES = (Bool, Cmp, Logic)
MASK_NODES = (Atom, Union, Inter, Diff, Compl, Heads)


def is_int(x) -> bool:
    return isinstance(x, INT_NODES)


def is_bool(x) -> bool:
    return isinstance(x, BOOL_NODES)


def is_mask(x) -> bool:
    return isinstance(x, MASK_NODES)


def post_order(root: Node, done=()) -> list[Node]:
    """The nodes under root (a DAG) not in `done`, children before parents, each once."""
    out, seen, stack = [], set(), [(root, False)]
    while stack:
        n, expanded = stack.pop()
        if expanded:
            out.append(n)
        elif n not in seen and n not in done:
            seen.add(n)
            stack.append((n, True))
            stack.extend((c, False) for c in n.children())
    return out


def pre_order(root: Node) -> list[Node]:
    """The nodes under root (a DAG), parents before children and children in order (source
    order), each once."""
    out, seen, stack = [], set(), [root]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            out.append(n)
            stack.extend(reversed(n.children()))
    return out


def symbols(node: Node) -> frozenset[str]:
    """The built-in symbols an expression depends on."""
    return _symbols(node)


_SYMBOL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _symbols(node: Node) -> frozenset[str]:
    hit = _SYMBOL_CACHE.get(node)
    if hit is None:
        if isinstance(node, Sym):
            hit = frozenset((node.name,))
        else:
            hit = frozenset().union(*(_symbols(c) for c in node.children()))
        _SYMBOL_CACHE[node] = hit
    return hit
