"""Integer and condition IR evaluated on Python ints or torch tensors: 64-bit
arithmetic with Python's floor semantics for // and %. The reference, the
runtime's checks and the cost report evaluate IR with these; symbols come from
an `env` dict (q, k, h, hk, H, Hk, the tile symbols...)."""
from __future__ import annotations

import torch

from .build import COMPARE
from . import nodes as ir


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(x)


def _floordiv(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return torch.div(_t(a), _t(b), rounding_mode="floor")


def _mod(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a % b
    return torch.remainder(_t(a), _t(b))


def _minmax(fn_int, fn_t):
    def op(a, b):
        if isinstance(a, int) and isinstance(b, int):
            return fn_int(a, b)
        return fn_t(_t(a), _t(b))

    return op


_INT = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": _floordiv,
    "%": _mod,
    "min": _minmax(min, torch.minimum),
    "max": _minmax(max, torch.maximum),
    "neg": lambda a: -a,
    "abs": lambda a: abs(a),
}


_MISSING = object()


def eval_int(node: ir.Node, env: dict, memo: dict | None = None):
    """`memo` (node -> value for this env) makes a shared subexpression evaluate once."""
    if isinstance(node, ir.Const):
        return node.value
    if isinstance(node, ir.Sym):
        return env[node.name]
    memo = {} if memo is None else memo
    out = memo.get(node, _MISSING)
    if out is _MISSING:
        out = memo[node] = _INT[node.op](*(eval_int(a, env, memo) for a in node.args))
    return out


def eval_cond(node: ir.Node, env: dict, memo: dict | None = None):
    if isinstance(node, ir.Bool):
        return node.value
    memo = {} if memo is None else memo
    out = memo.get(node, _MISSING)
    if out is _MISSING:
        out = memo[node] = _eval_cond(node, env, memo)
    return out


def _eval_cond(node: ir.Node, env: dict, memo: dict):
    if isinstance(node, ir.Cmp):
        return COMPARE[node.op](eval_int(node.a, env, memo), eval_int(node.b, env, memo))
    values = [eval_cond(a, env, memo) for a in node.args]
    if node.op == "not":
        v = values[0]
        return (not v) if isinstance(v, bool) else torch.logical_not(v)
    out = values[0]
    for v in values[1:]:
        if isinstance(out, bool) and isinstance(v, bool):
            out = (out and v) if node.op == "and" else (out or v)
        else:
            fn = torch.logical_and if node.op == "and" else torch.logical_or
            out = fn(_t(out), _t(v))
    return out
