"""Head-dependent arguments checked for a head count: every head covered by a
per-head switch, every argument within its atom's limits and no divisor zero,
for every head, in ranges of heads (interval arithmetic first, then the heads
in chunks), never a list of every head."""
from __future__ import annotations

import torch

from ..atoms import ATOMS
from ..errors import InputError, PatternError
from . import nodes as ir
from .evaluate import eval_int
from .heads import head_segments
from .ranges import POSITION_LIMIT, value_range

# A head-dependent argument that interval arithmetic cannot prove fine is
# checked head by head, for at most this many heads (in chunks of CHUNK).
MAX_ENUMERATED_HEADS = 1 << 20
CHUNK = 1 << 16

Segs = tuple  # ((start, stop), ...): the query heads a node is evaluated for


def _first_bad(expr: ir.Node, segs: Segs, num_heads: int, num_kv_heads: int, test, may_fail, what: str, span):
    """(head, value) of the first head in segs where test(value) holds, or None.
    may_fail(lo, hi): whether some value in [lo, hi] fails the test. Ranges of
    heads that interval arithmetic proves fine are skipped; the others are halved,
    and evaluated head by head once small (at most MAX_ENUMERATED_HEADS in all)."""
    group = num_heads // num_kv_heads
    base = {"H": num_heads, "Hk": num_kv_heads}
    if not ir.symbols(expr) & {"h", "hk"}:  # the same for every head: evaluate once
        v = eval_int(expr, base)
        return (segs[0][0], v) if test(v) else None
    budget = [MAX_ENUMERATED_HEADS]

    def scan(a: int, z: int):  # heads a .. z-1
        ranges = {**{n: (v, v) for n, v in base.items()}, "h": (a, z - 1), "hk": (a // group, (z - 1) // group)}
        if not may_fail(*value_range(expr, ranges)):
            return None
        if z - a > CHUNK:
            mid = (a + z) // 2
            return scan(a, mid) or scan(mid, z)
        budget[0] -= z - a
        if budget[0] < 0:
            raise PatternError(f"{what} depends on h and cannot be checked for all {num_heads} heads: interval "
                               f"arithmetic does not prove it, and at most 2**20 heads are checked one by one", span)
        h = torch.arange(a, z, dtype=torch.long)
        values = eval_int(expr, {**base, "h": h, "hk": h // group})
        values = values.expand(h.shape) if isinstance(values, torch.Tensor) else torch.full(h.shape, values)
        bad = test(values)
        if bad.any():
            i = int(bad.nonzero()[0])
            return int(h[i]), int(values[i])
        return None

    for a, z in segs:
        found = scan(a, z)
        if found:
            return found
    return None


def intersect_heads(segs: Segs, a: int, z: int) -> Segs:
    return tuple((max(s, a), min(e, z)) for s, e in segs if max(s, a) < min(e, z))


def check_heads(root: ir.Node, num_heads: int, num_kv_heads: int, spans: dict | None = None) -> None:
    """Raise PatternError if, for this head count, an argument is out of range,
    a divisor is zero, or a head is covered by no heads[...] branch. Heads are
    handled as ranges, so a large head count costs no list of every head."""
    if num_heads > POSITION_LIMIT:  # (the compile-time range checks assume it)
        raise InputError(f"num_heads must be at most 2**31, got {num_heads}")
    spans = spans or {}
    # Post-order (children before their parent), so that a zero divisor inside
    # an argument or an outer divisor is reported before anything evaluates it.
    # Each (node, heads) pair is visited once: the IR is a DAG.
    seen = set()
    stack = [(root, ((0, num_heads),), False)]
    while stack:
        node, segs, done = stack.pop()
        if not segs:
            continue
        if done:
            if isinstance(node, ir.Atom):
                _check_atom(node, segs, num_heads, num_kv_heads, spans)
            elif isinstance(node, ir.IntOp) and node.op in ("//", "%") and not isinstance(node.args[1], ir.Const):
                span = spans.get(node) or spans.get(node.args[1])
                bad = _first_bad(node.args[1], segs, num_heads, num_kv_heads, lambda v: v == 0,
                                 lambda lo, hi: lo <= 0 <= hi, "a divisor", span)
                if bad:
                    raise PatternError(f"division or modulo by zero for head {bad[0]} (H={num_heads})", span)
            continue
        if (node, segs) in seen:
            continue
        seen.add((node, segs))
        if isinstance(node, ir.Heads):
            try:
                owners = head_segments(node, num_heads, num_kv_heads)
            except ZeroDivisionError:
                raise PatternError(f"division by zero in a head selection (H={num_heads}, Hk={num_kv_heads})",
                                   spans.get(node) or spans.get(node.branches[0])) from None
            missing = [intersect_heads(segs, a, z) for a, z, i in owners if i < 0]
            missing = [m for m in missing if m]
            if missing:
                raise PatternError(
                    f"head {missing[0][0][0]} is not covered by any heads[...] branch (H={num_heads})",
                    spans.get(node) or spans.get(node.branches[0]),
                    ("add a branch for the remaining heads, e.g. heads[*] => none",),
                )
            for i, b in enumerate(node.branches):
                mine = sum((intersect_heads(segs, a, z) for a, z, j in owners if j == i), ())
                stack.append((b.body, mine, False))
            continue
        stack.append((node, segs, True))
        stack.extend((c, segs, False) for c in node.children())


def _check_atom(node: ir.Atom, segs: Segs, num_heads, num_kv_heads, spans) -> None:
    for p, v in zip(ATOMS[node.kind].params, node.args):
        if p.kind != "int" or p.minimum is None or isinstance(v, ir.Const):
            continue
        bad = _first_bad(v, segs, num_heads, num_kv_heads, lambda x: x < p.minimum, lambda lo, hi: lo < p.minimum,
                         f"argument {p.name!r} of {node.kind}", spans.get(node))
        if bad:
            raise PatternError(
                f"{node.kind}: {p.name} must be at least {p.minimum}, got {bad[1]} for head {bad[0]} "
                f"(H={num_heads}, Hk={num_kv_heads})",
                spans.get(node),
            )
