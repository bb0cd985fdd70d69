"""IR expressions -> Triton source text (the plan-specific parts of a kernel).

Integer // and % keep Python's floor semantics (Triton's are C's): plain
operators are emitted only when the dividend is known non-negative and the
divisor a positive constant; otherwise the _fdiv/_fmod helpers of the template.

The IR is a DAG: an `Emitter` computes a node used more than once into a
temporary (so the text grows with the number of nodes, not with the size of
the unfolded tree), and writes n-ary unions, intersections, `and`s and `or`s as
balanced trees (Triton's code generator recurses on the depth of an
expression). With `wide`, symbols are read as 64-bit integers.
"""
from __future__ import annotations

from collections import Counter

from ..ir import nodes as ir
from ..atoms import condition
from ..ir.heads import branch_condition
from ..ir.ranges import SYMBOL_RANGES, value_range

# How each symbol is spelled in the kernel (Lq, Lk: the sequence's counts, which a shard's
# local row counts need not be: codegen/common.py.jinja _positions).
NAMES = {"h": "h", "H": "H", "hk": "hk", "Hk": "Hk", "q": "q_pos", "k": "k_pos",
         "q0": "q0", "q1": "q1", "k0": "k0", "k1": "k1", "Lk": "seq_lk", "Lq": "seq_lq", "qb": "pq", "kb": "pk"}
NONNEG_SYMBOLS = {"h", "H", "hk", "Hk", "k", "k0", "k1", "Lk", "Lq", "kb"}
# the symbols' ranges as the kernels see them: a tile's first and last query may be negative (Lq > Lk)
KERNEL_RANGES = {**SYMBOL_RANGES, "q0": SYMBOL_RANGES["q"], "q1": SYMBOL_RANGES["q"]}
_INLINE = (ir.Const, ir.Sym, ir.Bool)


def nonneg(n: ir.Node) -> bool:
    """True when the integer expression can never be negative: by its form, or by its
    range (a head-dependent argument, e.g. a merged branch's 1024 * [h >= H // 2])."""
    if _nonneg_form(n):
        return True
    try:
        return value_range(n, KERNEL_RANGES)[0] >= 0
    except (KeyError, TypeError):  # a symbol the ranges do not know
        return False


def _nonneg_form(n: ir.Node) -> bool:
    if isinstance(n, ir.Const):
        return n.value >= 0
    if isinstance(n, ir.Sym):
        return n.name in NONNEG_SYMBOLS
    if isinstance(n, ir.IntOp):
        if n.op in ("+", "*", "min"):
            return all(_nonneg_form(a) for a in n.args)
        if n.op == "max":
            return any(_nonneg_form(a) for a in n.args)
        if n.op in ("//", "%"):
            return _nonneg_form(n.args[0]) and _nonneg_form(n.args[1])
        return n.op == "abs"
    return False


def _tree(op: str, parts: list[str]) -> str:
    """parts joined by a binary operator, as a balanced tree."""
    if len(parts) == 1:
        return parts[0]
    mid = len(parts) // 2
    return f"({_tree(op, parts[:mid])} {op} {_tree(op, parts[mid:])})"


def _operands(n: ir.Node) -> tuple[ir.Node, ...]:
    """The children an emitter visits (a Heads node: its branches' conditions and bodies)."""
    if isinstance(n, ir.Heads):
        return tuple(x for b in n.branches for x in (branch_condition(b), b.body))
    if isinstance(n, ir.Atom):  # the element mask emits the atom's condition
        return (condition(n),)
    return n.children()


class Emitter:
    """Text of IR expressions; `lines` collects the temporaries they need."""

    def __init__(self, prefix: str = "e", wide: bool = False, indent: str = ""):
        self.prefix, self.wide, self.indent = prefix, wide, indent
        self.lines: list[str] = []
        self._text: dict[ir.Node, str] = {}
        self._uses: Counter = Counter()
        self._seen: set = set()
        self._fresh = 0

    def fresh(self) -> str:
        self._fresh += 1
        return f"{self.prefix}{self._fresh}"

    def _count(self, root: ir.Node) -> None:
        stack = [root]
        while stack:
            n = stack.pop()
            self._uses[n] += 1
            if n not in self._seen:
                self._seen.add(n)
                stack.extend(_operands(n))

    def _emit(self, n: ir.Node, make) -> str:
        hit = self._text.get(n)
        if hit is not None:
            return hit
        text = make()
        if self._uses[n] > 1 and not isinstance(n, _INLINE):
            name = self.fresh()
            self.lines.append(f"{self.indent}{name} = {text}")
            text = name
        self._text[n] = text
        return text

    def _root(self, n: ir.Node) -> None:
        if n not in self._seen:
            self._count(n)

    def int(self, n: ir.Node) -> str:
        self._root(n)
        return self._int(n)

    def cond(self, n: ir.Node) -> str:
        self._root(n)
        return self._cond(n)

    def mask(self, n: ir.Node) -> str:
        """The element mask over q_pos [BM, 1] and k_pos [1, BN] (scalars broadcast)."""
        self._root(n)
        return self._mask(n)

    def _int(self, n: ir.Node) -> str:
        if isinstance(n, ir.Const):
            return str(n.value) if n.value >= 0 else f"({n.value})"
        if isinstance(n, ir.Sym):
            name = NAMES[n.name]
            return f"{name}.to(tl.int64)" if self.wide else name
        return self._emit(n, lambda: self._int_op(n))

    def _int_op(self, n: ir.IntOp) -> str:
        a = [self._int(x) for x in n.args]
        if n.op in ("+", "-", "*"):
            return f"({a[0]} {n.op} {a[1]})"
        if n.op == "neg":
            return f"(-{a[0]})"
        if n.op == "abs":
            return f"tl.abs({a[0]})"
        if n.op in ("min", "max"):
            return f"tl.{n.op}imum({a[0]}, {a[1]})"
        num, den = n.args
        if isinstance(den, ir.Const) and den.value > 0 and nonneg(num):
            return f"({a[0]} {n.op} {a[1]})"
        return f"{'_fdiv' if n.op == '//' else '_fmod'}({a[0]}, {a[1]})"

    def _cond(self, n: ir.Node) -> str:
        if isinstance(n, ir.Bool):
            return "True" if n.value else "False"
        if isinstance(n, ir.Cmp):
            return self._emit(n, lambda: f"({self._int(n.a)} {n.op} {self._int(n.b)})")
        if n.op == "not":
            return self._emit(n, lambda: f"({self._cond(n.args[0])} == 0)")
        return self._emit(n, lambda: _tree("&" if n.op == "and" else "|", [self._cond(a) for a in n.args]))

    def _mask(self, n: ir.Node) -> str:
        if isinstance(n, ir.Atom):
            return self._emit(n, lambda: self._atom(n))
        if isinstance(n, ir.Union):
            return self._emit(n, lambda: _tree("|", [self._mask(a) for a in n.args]))
        if isinstance(n, ir.Inter):
            return self._emit(n, lambda: _tree("&", [self._mask(a) for a in n.args]))
        if isinstance(n, ir.Diff):
            return self._emit(n, lambda: f"({self._mask(n.a)} & ({self._mask(n.b)} == 0))")
        if isinstance(n, ir.Compl):
            return self._emit(n, lambda: f"({self._mask(n.a)} == 0)")
        if isinstance(n, ir.Heads):
            return self._emit(n, lambda: self._heads(n))
        raise TypeError(f"not a mask: {n!r}")

    def _heads(self, n: ir.Heads) -> str:
        # first match wins: assign from the last branch back, one line each (no deep nesting)
        name = self.fresh()
        self.lines.append(f"{self.indent}{name} = (q_pos < k_pos) & (q_pos > k_pos)  # uncovered heads: rejected "
                          "before")
        for b in reversed(n.branches):
            cond, body = self._cond(branch_condition(b)), self._mask(b.body)
            self.lines.append(f"{self.indent}{name} = tl.where({cond}, {body}, {name})")
        return name

    def _atom(self, a: ir.Atom) -> str:
        # the atom's condition (sparsedsl/atoms/), broadcast to [BM, BN] when it misses q or k
        cond = condition(a)
        q, k = "q_pos", "k_pos"
        if isinstance(cond, ir.Bool):
            return f"({k} >= 0) | ({q} == {q})" if cond.value else f"({k} < 0) & ({q} == {q})"
        text = self._cond(cond)
        if {"q", "k"} <= ir.symbols(cond):
            return text
        return f"({text} | (({q} != {q}) & ({k} != {k})))"
