"""An independent oracle for the meaning of a pattern: one (head, query, key)
at a time, with plain Python ints, written from the semantics table of the
language (not from sparsedsl.reference; no torch).

A key k is visible to query row i (0-based) when the mask holds at
q = kv_len - q_len + i (bottom-right alignment):

    full             always
    none             never
    causal           k <= q
    window(size)     q - size < k <= q
    band(l, r)       q - l <= k <= q + r
    sink(n)          k < n
    global(n)        q < n or k < n
    dilated(s, r)    0 <= q - k < s * r and (q - k) % r == 0
    local_blocks(n, b)          0 <= q // b - k // b < n
    strided(stride, b, offset)  (k // b + offset) % stride == 0
    where(cond)      cond

Symbols: h (query head), H, hk = h // (H // Hk), Hk, q, k. // and % floor.
A heads switch gives each head the first branch that selects it: index i
(negative counts from H), slice a:b (Python slice semantics over range(H)),
or * (every head).
"""
from __future__ import annotations

# Only the *structure* of the IR is read here: node classes by name and fields.

ARG_NAMES = {
    "full": (),
    "none": (),
    "causal": (),
    "window": ("size",),
    "band": ("left", "right"),
    "sink": ("n",),
    "global": ("n",),
    "dilated": ("size", "rate"),
    "local_blocks": ("n", "block"),
    "strided": ("stride", "block", "offset"),
    "chunked": ("size", "offset"),
    "random_blocks": ("n", "block", "seed"),
    "where": ("cond",),
}


class Uncovered(Exception):
    """A head that no heads[...] branch selects."""


def _kind(node) -> str:
    return type(node).__name__


def int_value(node, env: dict) -> int:
    kind = _kind(node)
    if kind == "Const":
        return node.value
    if kind == "Sym":
        return env[node.name]
    if kind != "IntOp":
        raise TypeError(f"not an integer expression: {node!r}")
    vals = [int_value(a, env) for a in node.args]
    op = node.op
    if op == "neg":
        return -vals[0]
    if op == "abs":
        return abs(vals[0])
    a, b = vals
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "//":
        return a // b
    if op == "%":
        return a % b
    if op == "min":
        return min(a, b)
    if op == "max":
        return max(a, b)
    raise ValueError(f"unknown int op {op!r}")


def cond_value(node, env: dict) -> bool:
    kind = _kind(node)
    if kind == "Bool":
        return node.value
    if kind == "Cmp":
        a, b = int_value(node.a, env), int_value(node.b, env)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b, "!=": a != b}[node.op]
    if kind != "Logic":
        raise TypeError(f"not a condition: {node!r}")
    if node.op == "not":
        return not cond_value(node.args[0], env)
    vals = [cond_value(a, env) for a in node.args]
    return all(vals) if node.op == "and" else any(vals)


def selects(branch, h: int, H: int, Hk: int) -> bool:
    """Does this heads[...] selection hold head h?"""
    env = {"H": H, "Hk": Hk}
    if branch.kind == "all":
        return True
    if branch.kind == "index":
        i = int_value(branch.start, env)
        if i < 0:
            i += H
        return i == h
    start = None if branch.start is None else int_value(branch.start, env)
    stop = None if branch.stop is None else int_value(branch.stop, env)
    return h in list(range(H))[start:stop]


def random_picks(qb: int, h: int, n: int, seed: int) -> set:
    """The key blocks random_blocks(n, seed=seed) gives query block qb of head h, as
    docs/language.md states it: the blocks 0..qb in min(n, qb + 1) contiguous strata of
    near-equal size, and in stratum i the block lo + y % size, y the 16-bit hash of
    (seed, h, qb, i)."""
    if qb < 0:
        return set()
    m = qb + 1
    r = min(n, m)
    picks = set()
    for i in range(r):
        lo, hi = i * m // r, (i + 1) * m // r
        x = ((seed % 65536) * 40503 + h * 24593 + qb * 92821 + i * 68917) % 65536
        y = x * 2654435761 % 2 ** 32 // 65536
        picks.add(lo + y % (hi - lo))
    return picks


def atom_value(node, env: dict) -> bool:
    names = ARG_NAMES[node.kind]
    a = {}
    for name, v in zip(names, node.args):
        a[name] = v if name == "cond" else int_value(v, env)
    q, k = env["q"], env["k"]
    kind = node.kind
    if kind == "full":
        return True
    if kind == "none":
        return False
    if kind == "causal":
        return k <= q
    if kind == "window":
        return q - a["size"] < k <= q
    if kind == "band":
        return q - a["left"] <= k <= q + a["right"]
    if kind == "sink":
        return k < a["n"]
    if kind == "global":
        return q < a["n"] or k < a["n"]
    if kind == "dilated":
        d = q - k
        return 0 <= d < a["size"] * a["rate"] and d % a["rate"] == 0
    if kind == "local_blocks":
        d = q // a["block"] - k // a["block"]
        return 0 <= d < a["n"]
    if kind == "strided":
        return (k // a["block"] + a["offset"]) % a["stride"] == 0
    if kind == "chunked":  # block-diagonal: the same chunk of `size` positions, shifted by offset
        return (q + a["offset"]) // a["size"] == (k + a["offset"]) // a["size"]
    if kind == "random_blocks":
        return k // a["block"] in random_picks(q // a["block"], env["h"], a["n"], a["seed"])
    if kind == "where":
        return cond_value(a["cond"], env)
    raise ValueError(f"the oracle has no semantics for atom {kind!r}")


def mask_value(node, env: dict) -> bool:
    kind = _kind(node)
    if kind == "Pattern":
        return mask_value(node.body, env)
    if kind == "Atom":
        return atom_value(node, env)
    if kind == "Union":
        return any(mask_value(a, env) for a in node.args)
    if kind == "Inter":
        return all(mask_value(a, env) for a in node.args)
    if kind == "Diff":
        return mask_value(node.a, env) and not mask_value(node.b, env)
    if kind == "Compl":
        return not mask_value(node.a, env)
    if kind == "Heads":
        for b in node.branches:
            if selects(b, env["h"], env["H"], env["Hk"]):
                return mask_value(b.body, env)
        raise Uncovered(f"head {env['h']} is not covered (H={env['H']})")
    raise TypeError(f"not a mask: {node!r}")


def visible(pattern, head: int, row: int, key: int, q_len: int, kv_len: int,
            num_heads: int, num_kv_heads: int) -> bool:
    """Whether query row `row` of head `head` sees key `key`."""
    env = {
        "h": head,
        "H": num_heads,
        "hk": head // (num_heads // num_kv_heads),
        "Hk": num_kv_heads,
        "q": kv_len - q_len + row,
        "k": key,
    }
    return mask_value(pattern, env)


def dense(pattern, q_len: int, kv_len: int, num_heads: int = 1, num_kv_heads: int | None = None):
    """Nested lists [head][row][key] of bools."""
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    return [[[visible(pattern, h, i, j, q_len, kv_len, num_heads, num_kv_heads) for j in range(kv_len)]
             for i in range(q_len)]
            for h in range(num_heads)]


def block_layout(m, q_len: int, kv_len: int, block: int):
    """From dense nested lists: [head][qb][kb] = 0 (nothing visible), 2 (every
    in-bounds pair visible) or 1."""
    nq, nk = -(-q_len // block), -(-kv_len // block)
    out = []
    for rows in m:
        layout = []
        for qb in range(nq):
            line = []
            for kb in range(nk):
                cells = [rows[i][j]
                         for i in range(qb * block, min(q_len, (qb + 1) * block))
                         for j in range(kb * block, min(kv_len, (kb + 1) * block))]
                line.append(2 if all(cells) else 1 if any(cells) else 0)
            layout.append(line)
        out.append(layout)
    return out
