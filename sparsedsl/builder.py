"""Build patterns in Python with the same IR as the language:

    import sparsedsl as sd
    p = sd.compile_pattern(sd.causal & (sd.sink(4) | sd.window(1024)))
    sd.window(64 * (sd.h % 4 + 1))            # head-dependent arguments
    sd.where((sd.q - sd.k) % 4 == 0)          # conditions: & | ~ for and, or, not
    sd.heads([(slice(0, 8), sd.causal), ("*", sd.window(256))])
"""
from __future__ import annotations

import inspect
import keyword

from .errors import PatternError
from .ir import build
from .ir import nodes as ir
from .atoms import ATOMS, arg_problem, atom_problem, call_problem
from .atoms.dynamic import AttentionScore
from .ir.ranges import range_problem


def _in_range(node: ir.Node) -> ir.Node:
    problem = range_problem(node)
    if problem:
        raise PatternError(problem)
    return node


def _int(x) -> ir.Node:
    if isinstance(x, Int):
        return x.node
    if isinstance(x, int) and not isinstance(x, bool):
        return _in_range(ir.Const(x))
    raise PatternError(f"expected an integer, got {x!r}")


def _fold(op, *args):
    try:
        return _in_range(build.int_op(op, *args))
    except ZeroDivisionError:
        raise PatternError("division or modulo by zero") from None


class Int:
    """An integer expression (h, H, hk, Hk, q, k, and arithmetic on them)."""

    __slots__ = ("node",)
    __hash__ = None

    def __init__(self, node: ir.Node):
        self.node = node

    def _bin(op, swap=False):  # noqa: N805
        def method(self, other):
            a, b = _int(self), _int(other)
            if swap:
                a, b = b, a
            if op in ("//", "%") and ir.symbols(b) & {"q", "k"}:
                raise PatternError(f"the divisor of '{op}' may not depend on q or k")
            return Int(_fold(op, a, b))

        return method

    __add__, __radd__ = _bin("+"), _bin("+", True)
    __sub__, __rsub__ = _bin("-"), _bin("-", True)
    __mul__, __rmul__ = _bin("*"), _bin("*", True)
    __floordiv__, __rfloordiv__ = _bin("//"), _bin("//", True)
    __mod__, __rmod__ = _bin("%"), _bin("%", True)

    def __neg__(self):
        return Int(_fold("neg", self.node))

    def __abs__(self):
        return Int(_fold("abs", self.node))

    def _cmp(op):  # noqa: N805
        def method(self, other):
            return Cond(build.cmp(op, _int(self), _int(other)))

        return method

    __lt__, __le__, __gt__, __ge__ = _cmp("<"), _cmp("<="), _cmp(">"), _cmp(">=")
    __eq__, __ne__ = _cmp("=="), _cmp("!=")

    def __bool__(self):
        raise PatternError("a symbolic integer has no truth value; use it inside where(...)")

    def __repr__(self):
        from .ir.printer import expr

        return f"Int({expr(self.node)})"


class Cond:
    """A condition for where(...): combine with & (and), | (or), ~ (not)."""

    __slots__ = ("node",)

    def __init__(self, node: ir.Node):
        self.node = node

    def __and__(self, other):
        return Cond(build.logic("and", self.node, _cond(other)))

    def __or__(self, other):
        return Cond(build.logic("or", self.node, _cond(other)))

    def __rand__(self, other):
        return Cond(build.logic("and", _cond(other), self.node))

    def __ror__(self, other):
        return Cond(build.logic("or", _cond(other), self.node))

    def __invert__(self):
        return Cond(build.logic("not", self.node))

    def __bool__(self):
        raise PatternError("a condition has no truth value here; combine conditions with &, | and ~")


def _cond(x) -> ir.Node:
    if isinstance(x, Cond):
        return x.node
    if isinstance(x, bool):
        return ir.Bool(x)
    raise PatternError(f"expected a condition, got {x!r}")


class Mask:
    """A pattern expression: | union, & intersection, - difference, ~ complement."""

    __slots__ = ("node",)

    def __init__(self, node: ir.Node):
        self.node = node

    def __or__(self, other):
        return Mask(build.union(self.node, _mask(other)))

    def __and__(self, other):
        return Mask(build.inter(self.node, _mask(other)))

    def __sub__(self, other):
        return Mask(build.diff(self.node, _mask(other)))

    def __invert__(self):
        return Mask(build.compl(self.node))

    def __repr__(self):
        from .ir.printer import expr

        return f"Mask({expr(self.node)})"


def _mask(x) -> ir.Node:
    if isinstance(x, Mask):
        return x.node
    raise PatternError(f"expected a mask, got {x!r}")


def _atom(kind: str, *args, **kwargs) -> Mask:
    sig = ATOMS[kind]
    names = [p.name for p in sig.params]
    if len(args) > len(names):
        raise PatternError(f"{kind} takes {len(names)} argument(s), got {len(args)}")
    given = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise PatternError(f"{kind} has no argument {key!r} (arguments: {', '.join(names)})")
        if key in given:
            raise PatternError(f"argument {key!r} of {kind} given twice")
        given[key] = value
    values = []
    for p in sig.params:
        if p.name not in given:
            if p.default is None:
                raise PatternError(f"{kind} needs its argument {p.name!r}")
            values.append(p.default)
            continue
        x = given[p.name]
        if p.kind == "cond":
            v = _cond(x)
        elif p.kind == "bool":
            v = ir.Bool(x) if isinstance(x, bool) else x
        elif p.kind == "choice":
            v = x
        else:
            v = _int(x) if isinstance(x, (int, Int)) else x
        problem = arg_problem(kind, p, v)
        if problem:
            raise PatternError(problem)
        values.append(v)
    problem = atom_problem(kind, tuple(values))
    if problem:
        raise PatternError(problem)
    return Mask(ir.Atom(kind, tuple(values)))


def attention(window, pool) -> AttentionScore:
    """topk's score=attention(window=w, pool=p) (SnapKV): `topk(n, block=1, score=attention(window=32,
    pool=7))`; the meaning is in docs/language.md (topk)."""
    value = AttentionScore(window, pool)
    problem = call_problem("topk", value)
    if problem:
        raise PatternError(problem)
    return value


h, H, hk, Hk, q, k = (Int(ir.Sym(n)) for n in ("h", "H", "hk", "Hk", "q", "k"))
full = Mask(ir.Atom("full", ()))
none = Mask(ir.Atom("none", ()))
causal = Mask(ir.Atom("causal", ()))
compensation = Mask(ir.Atom("compensation", ()))  # RazorAttention's compensation entry (docs/language.md)


def _builder(kind: str):
    """The builder function of an atom with parameters, made from its definition
    (sparsedsl/atoms/): `window(size)`, `strided(stride, block=64, offset=0)`, ..."""
    d = ATOMS[kind]

    def make(*args, **kwargs) -> Mask:
        return _atom(kind, *args, **kwargs)

    shown = [p.name if p.default is None else f"{p.name}={_shown(p.default)}" for p in d.params]
    make.__name__ = make.__qualname__ = kind + "_" if keyword.iskeyword(kind) else kind
    make.__doc__ = f"The `{kind}({', '.join(shown)})` atom: {d.formula}."
    make.__signature__ = inspect.Signature([
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=inspect.Parameter.empty if p.default is None else _shown(p.default))
        for p in d.params])
    return make


def _shown(default):
    if isinstance(default, ir.Const):
        return default.value
    return default.value if isinstance(default, ir.Bool) else default


# one function per atom with parameters (global is a Python keyword: global_)
ATOM_BUILDERS = {kind: _builder(kind) for kind, d in ATOMS.items() if d.params}
globals().update({f.__name__: f for f in ATOM_BUILDERS.values()})


def minimum(a, b) -> Int:
    return Int(_fold("min", _int(a), _int(b)))


def maximum(a, b) -> Int:
    return Int(_fold("max", _int(a), _int(b)))


def heads(branches) -> Mask:
    """Per-head choice: [(selection, mask), ...]; a selection is an int, a slice
    (of ints or H/Hk expressions) or "*". The first branch holding a head wins."""
    out = []
    for sel, mask in branches:
        if (isinstance(sel, str) and sel == "*") or sel is Ellipsis:
            kind, start, stop = "all", None, None
        elif isinstance(sel, slice):
            if sel.step not in (None, 1):
                raise PatternError("head slices take no step")
            kind = "slice"
            start = None if sel.start is None else _int(sel.start)
            stop = None if sel.stop is None else _int(sel.stop)
        else:
            kind, start, stop = "index", _int(sel), None
        for bound in (start, stop):
            if bound is not None and ir.symbols(bound) & {"h", "hk", "q", "k"}:
                raise PatternError("a head selection may use H and Hk but not h, hk, q or k")
        out.append(ir.Branch(kind, start, stop, _mask(mask)))
    if not out:
        raise PatternError("heads([...]) needs at least one branch")
    return Mask(ir.Heads(tuple(out)))
