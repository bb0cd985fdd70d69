"""Checks and facts that need the head count: argument limits of head-dependent
arguments, divisors, heads that no branch covers, and which heads each dynamic
atom serves."""
from __future__ import annotations

import torch

from ..errors import PatternError
from ..ir import nodes as ir
from ..ir.atoms import ATOMS, is_dynamic
from .evaluate import eval_int, head_assignment


def _env(ids: list[int], num_heads: int, num_kv_heads: int) -> dict:
    h = torch.tensor(ids, dtype=torch.long)
    return {"H": num_heads, "Hk": num_kv_heads, "h": h, "hk": h // (num_heads // num_kv_heads)}


def _first_bad(values, ids, test):
    if isinstance(values, int):
        return (ids[0], values) if test(values) else None
    bad = test(values)
    if bad.any():
        i = int(bad.nonzero()[0])
        return ids[i], int(values[i])
    return None


def check_heads(root: ir.Node, num_heads: int, num_kv_heads: int, spans: dict | None = None) -> None:
    """Raise PatternError if, for this head count, an argument is out of range,
    a divisor is zero, or a head is covered by no heads[...] branch."""
    spans = spans or {}
    # Post-order (children before their parent), so that a zero divisor inside
    # an argument or an outer divisor is reported before anything evaluates it.
    stack = [(root, list(range(num_heads)), False)]
    while stack:
        node, ids, done = stack.pop()
        if not ids:
            continue
        if done:
            if isinstance(node, ir.Atom):
                _check_atom(node, ids, num_heads, num_kv_heads, spans)
            elif isinstance(node, ir.IntOp) and node.op in ("//", "%"):
                d = eval_int(node.args[1], _env(ids, num_heads, num_kv_heads))
                bad = _first_bad(d, ids, lambda v: v == 0)
                if bad:
                    raise PatternError(f"division or modulo by zero for head {bad[0]} (H={num_heads})",
                                       spans.get(node) or spans.get(node.args[1]))
            continue
        if isinstance(node, ir.Heads):
            try:
                owner = head_assignment(node, num_heads, num_kv_heads)
            except ZeroDivisionError:
                raise PatternError(f"division by zero in a head selection (H={num_heads}, Hk={num_kv_heads})",
                                   spans.get(node) or spans.get(node.branches[0])) from None
            missing = [h for h in ids if owner[h] < 0]
            if missing:
                raise PatternError(
                    f"head {missing[0]} is not covered by any heads[...] branch (H={num_heads})",
                    spans.get(node) or spans.get(node.branches[0]),
                    ("add a branch for the remaining heads, e.g. heads[*] => none",),
                )
            for i, b in enumerate(node.branches):
                stack.append((b.body, [h for h in ids if owner[h] == i], False))
            continue
        stack.append((node, ids, True))
        stack.extend((c, ids, False) for c in node.children())


def _check_atom(node: ir.Atom, ids, num_heads, num_kv_heads, spans) -> None:
    for p, v in zip(ATOMS[node.kind].params, node.args):
        if p.kind != "int" or p.minimum is None or isinstance(v, ir.Const):
            continue
        values = eval_int(v, _env(ids, num_heads, num_kv_heads))
        bad = _first_bad(values, ids, lambda x: x < p.minimum)
        if bad:
            raise PatternError(
                f"{node.kind}: {p.name} must be at least {p.minimum}, got {bad[1]} for head {bad[0]} "
                f"(H={num_heads}, Hk={num_kv_heads})",
                spans.get(node),
            )


def dynamic_atoms(root: ir.Node) -> list[ir.Atom]:
    """Dynamic atoms in source order, each once."""
    out: list[ir.Atom] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if is_dynamic(node) and node not in out:
            out.append(node)
        stack.extend(reversed(node.children()))
    return out


def active_heads(root: ir.Node, atom: ir.Atom, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """bool [H]: the heads whose branch contains `atom` (for landmarks)."""
    active = torch.zeros(num_heads, dtype=torch.bool)
    stack = [(root, list(range(num_heads)))]
    while stack:
        node, ids = stack.pop()
        if node is atom:
            active[ids] = True
        elif isinstance(node, ir.Heads):
            owner = head_assignment(node, num_heads, num_kv_heads)
            for i, b in enumerate(node.branches):
                stack.append((b.body, [h for h in ids if owner[h] == i]))
        else:
            stack.extend((c, ids) for c in node.children() if ir.is_mask(c) or isinstance(c, ir.Heads))
    return active
