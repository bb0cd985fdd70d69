"""canonicalize: flatten and order unions/intersections, drop duplicates, fold
full/none, remove double complements and unreachable head branches."""
from __future__ import annotations

import hashlib
import weakref

from ..ir import nodes as ir
from ..ir.printer import expr
from .base import Pass, rewrite

FULL = ir.Atom("full", ())
NONE = ir.Atom("none", ())
_LANDMARKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_BIG = 2000  # operands of more tree nodes than this sort by a digest, not by their text
_SIZES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plain_fields(value):
    """The fields of a node without its operand nodes (those are in the digest by their digests)."""
    if isinstance(value, tuple):
        return tuple(_plain_fields(v) for v in value)
    return None if isinstance(value, ir.Node) else value


def _key(n: ir.Node) -> str:
    """The sort key of an operand: its printed text or, for a big one (a shared
    DAG may print exponentially long), a digest of its structure sorted last."""
    for x in ir.post_order(n, _SIZES):  # tree sizes, capped
        _SIZES[x] = min(_BIG + 1, 1 + sum(_SIZES[c] for c in x.children()))
    if _SIZES[n] <= _BIG:
        return expr(n)
    for x in ir.post_order(n, _DIGESTS):
        parts = [type(x).__name__, repr(_plain_fields(x.fields()))] + [_DIGESTS[c] for c in x.children()]
        _DIGESTS[x] = hashlib.sha256(repr(parts).encode()).hexdigest()
    return "\uffff" + _DIGESTS[n]


def _order(args) -> tuple:
    unique = list(dict.fromkeys(args))
    return tuple(sorted(unique, key=lambda n: (type(n).__name__ != "Atom", _key(n))))


def has_landmarks(n: ir.Node) -> bool:
    """Landmark entries are extra keys that no mask operator restricts: a
    rewrite may drop an operand only when it holds none."""
    for x in ir.post_order(n, _LANDMARKS):
        _LANDMARKS[x] = (isinstance(x, ir.Atom) and x.kind == "landmarks") or any(
            _LANDMARKS[c] for c in x.children())
    return _LANDMARKS[n]


def rule(n: ir.Node):
    if isinstance(n, (ir.Union, ir.Inter)) and (FULL if isinstance(n, ir.Union) else NONE) in n.args \
            and any(has_landmarks(a) for a in n.args):
        return None  # full | landmarks and none & (x | landmarks) keep their landmarks
    if isinstance(n, ir.Atom) and n.kind == "where" and isinstance(n.args[0], ir.Bool):
        return FULL if n.args[0].value else NONE
    if isinstance(n, ir.Union):
        if FULL in n.args:
            return FULL
        args = _order(a for a in n.args if a is not NONE)
        return _collapse(ir.Union, args, NONE)
    if isinstance(n, ir.Inter):
        if NONE in n.args:
            return NONE
        args = _order(a for a in n.args if a is not FULL)
        return _collapse(ir.Inter, args, FULL)
    if isinstance(n, ir.Diff):
        if n.b is NONE:
            return n.a
        if n.a is NONE or n.b is FULL or n.a is n.b:
            return NONE
        if n.a is FULL:
            return ir.Compl(n.b)
    if isinstance(n, ir.Compl):
        if n.a is FULL:
            return NONE
        if n.a is NONE:
            return FULL
        if isinstance(n.a, ir.Compl):
            return n.a.a
    if isinstance(n, ir.Heads):
        return _heads(n)
    return None


def _collapse(cls, args, empty):
    if not args:
        return empty
    if len(args) == 1:
        return args[0]
    return cls(args)


def _heads(n: ir.Heads):
    branches = []
    for b in n.branches:
        branches.append(b)
        if b.kind == "all":
            break
    if len(branches) == 1 and branches[0].kind == "all":
        return branches[0].body
    if len({b.body for b in branches}) == 1 and branches[-1].kind == "all":
        return branches[0].body
    if len(branches) != len(n.branches):
        return ir.Heads(tuple(branches))
    return None


def run(root: ir.Pattern) -> ir.Pattern:
    return rewrite(root, rule)


CANONICALIZE = Pass("canonicalize", __doc__.split(":", 1)[1].strip().replace("\n", " "), run)
