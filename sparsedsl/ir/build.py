"""Smart constructors shared by the language and the Python builder, so both
make the identical IR: constants fold, unions, intersections, `and` and `or`
flatten and drop repeated operands (`a | a` is `a`: so `let a = a | a` does
not double the operands on every line). No other rewriting happens here (that
is the optimizer's job)."""
from __future__ import annotations

from .nodes import Atom, Bool, Cmp, Compl, Const, Diff, Inter, IntOp, Logic, Node, Union

_FOLD_INT = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
    "min": min,
    "max": max,
    "neg": lambda a: -a,
    "abs": abs,
}
COMPARE = {  # also used by the reference evaluator on tensors
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def int_op(op: str, *args: Node) -> Node:
    """An integer operation; folds when every operand is a constant.

    Raises ZeroDivisionError for a constant zero divisor."""
    if all(isinstance(a, Const) for a in args):
        if op in ("//", "%") and args[1].value == 0:
            raise ZeroDivisionError("integer division or modulo by zero")
        return Const(_FOLD_INT[op](*(a.value for a in args)))
    if len(args) == 2:  # identities: x + 0, 0 + x, x - 0, x * 1, 1 * x, x // 1
        a, b = args
        if (op in ("+", "-") and b == Const(0)) or (op in ("*", "//") and b == Const(1)):
            return a
        if (op == "+" and a == Const(0)) or (op == "*" and a == Const(1)):
            return b
    return IntOp(op, tuple(args))


def cmp(op: str, a: Node, b: Node) -> Node:
    if isinstance(a, Const) and isinstance(b, Const):
        return Bool(COMPARE[op](a.value, b.value))
    return Cmp(op, a, b)


def logic(op: str, *args: Node) -> Node:
    if op == "not":
        (a,) = args
        return Bool(not a.value) if isinstance(a, Bool) else Logic("not", (a,))
    flat: list[Node] = []
    for a in args:
        flat.extend(a.args if isinstance(a, Logic) and a.op == op else (a,))
    unit, zero = Bool(op == "and"), Bool(op != "and")  # true and x = x; false and x = false
    if zero in flat:
        return zero
    flat = [a for a in dict.fromkeys(flat) if a is not unit]
    if not flat:
        return unit
    return flat[0] if len(flat) == 1 else Logic(op, tuple(flat))


def _flat(cls, masks) -> Node:
    flat: dict[Node, None] = {}  # (ordered, without repeats)
    for m in masks:
        flat.update(dict.fromkeys(m.args if isinstance(m, cls) else (m,)))
    args = tuple(flat)
    return args[0] if len(args) == 1 else cls(args)


def union(*masks: Node) -> Node:
    return _flat(Union, masks)


def inter(*masks: Node) -> Node:
    return _flat(Inter, masks)


def diff(a: Node, b: Node) -> Node:
    return Diff(a, b)


def compl(a: Node) -> Node:
    return Compl(a)


def atom(kind: str, *args) -> Atom:
    return Atom(kind, tuple(args))
