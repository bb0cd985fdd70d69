"""The exact meaning of the IR, evaluated with torch on (batch, head, query, key)
grids. Integer arithmetic is 64-bit with Python's floor semantics for // and %.

env holds: h, hk (int64 [1, Hs, 1, 1]: the head ids evaluated), H, Hk (ints),
q ([1, 1, C, 1] query positions), k ([1, 1, 1, Lk] key positions) and
head_ids (the 1-D ids behind h). `dynamic` supplies the mask of a topk atom
for the current heads and queries (reference/select.py builds it).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..atoms import condition
from ..ir import nodes as ir
from ..ir.evaluate import _MISSING, eval_cond, eval_int  # noqa: F401 (eval_int re-exported)
from ..ir.heads import branch_condition, branch_heads, head_segments  # noqa: F401 (re-exported)

Value = "int | bool | torch.Tensor"


def _true(env) -> torch.Tensor:
    """All-true of the grid's shape and device (also under vmap)."""
    return (env["k"] >= 0) | (env["q"] == env["q"])


def _false(env) -> torch.Tensor:
    return (env["k"] < 0) & (env["q"] != env["q"])


def _bool(x, env) -> torch.Tensor:
    if isinstance(x, bool):
        return _true(env) if x else _false(env)
    return x


def atom_mask(a: ir.Atom, env: dict, dynamic: Callable | None, memo: dict | None = None) -> torch.Tensor:
    """The visibility of ordinary keys under one atom (broadcastable to [B, Hs, C, Lk])."""
    kind = a.kind
    memo = {} if memo is None else memo
    if kind in ("landmarks", "compensation"):  # they add extra entries; no ordinary key
        return _false(env)
    if kind == "topk":
        if dynamic is None:
            raise ValueError("topk needs a block selection (pass q and k)")
        return dynamic(a, env)
    return _bool(eval_cond(condition(a), env, memo), env) & _true(env)  # its definition (sparsedsl/atoms/)


def head_assignment(node: ir.Heads, num_heads: int, num_kv_heads: int) -> list[int]:
    """For each head, the index of the branch it takes (-1: no branch covers it)."""
    owner: list[int] = []
    for a, z, i in head_segments(node, num_heads, num_kv_heads):
        owner.extend([i] * (z - a))
    return owner


def restrict(env: dict, idx: torch.Tensor) -> dict:
    """env for a subset (positions idx) of the heads it covers."""
    out = dict(env)
    ids = env["head_ids"][idx]
    out["head_ids"] = ids
    out["h"] = ids.view(1, -1, 1, 1)
    out["hk"] = out["h"] // (env["H"] // env["Hk"])
    return out


def eval_mask(node: ir.Node, env: dict, dynamic: Callable | None = None, memo: dict | None = None) -> torch.Tensor:
    """Visibility of ordinary keys, broadcastable to [B, Hs, C, Lk]. `memo` (node ->
    value for this env) makes a sub-pattern used twice evaluate once."""
    memo = {} if memo is None else memo
    out = memo.get(node, _MISSING)
    if out is _MISSING:
        out = memo[node] = _eval_mask(node, env, dynamic, memo)
    return out


def _eval_mask(node: ir.Node, env: dict, dynamic, memo: dict) -> torch.Tensor:
    sub = lambda n: eval_mask(n, env, dynamic, memo)  # noqa: E731
    if isinstance(node, ir.Pattern):
        return sub(node.body)
    if isinstance(node, ir.Atom):
        return atom_mask(node, env, dynamic, memo)
    if isinstance(node, ir.Union):
        out = sub(node.args[0])
        for a in node.args[1:]:
            out = out | sub(a)
        return out
    if isinstance(node, ir.Inter):
        out = sub(node.args[0])
        for a in node.args[1:]:
            out = out & sub(a)
        return out
    if isinstance(node, ir.Diff):
        return sub(node.a) & ~sub(node.b)
    if isinstance(node, ir.Compl):
        return ~sub(node.a)
    if isinstance(node, ir.Heads):
        if "head_ids" not in env:  # scalar heads (FlexAttention's mask_mod): choose by condition
            conditions = env.get("branch_conditions") or {}
            out = _false(env)
            for b in reversed(node.branches):
                cond = conditions.get(b) or branch_condition(b)
                out = torch.where(_bool(eval_cond(cond, env, memo), env), sub(b.body), out)
            return out
        return _eval_heads(node, env, dynamic)
    raise TypeError(f"not a mask: {node!r}")


def _eval_heads(node: ir.Heads, env: dict, dynamic) -> torch.Tensor:
    ids = env["head_ids"]
    owner = torch.tensor(head_assignment(node, env["H"], env["Hk"]), dtype=torch.long, device=ids.device)[ids]
    parts = []
    for i, b in enumerate(node.branches):
        idx = (owner == i).nonzero().flatten()
        if idx.numel():
            parts.append((idx, eval_mask(b.body, restrict(env, idx), dynamic)))
    q_len = env["q"].shape[2]
    k_len = env["k"].shape[3]
    if not parts:
        return torch.zeros((1, len(owner), q_len, k_len), dtype=torch.bool, device=ids.device)
    batch = max(m.shape[0] for _, m in parts)
    out = torch.zeros((batch, len(owner), q_len, k_len), dtype=torch.bool, device=ids.device)
    for idx, m in parts:
        out[:, idx] = m.expand(batch, len(idx), q_len, k_len)
    return out


def grid_env(num_heads: int, num_kv_heads: int, q_pos: torch.Tensor, k_pos: torch.Tensor,
             head_ids: torch.Tensor | None = None) -> dict:
    """The environment for evaluating a mask over the given positions and heads."""
    ids = torch.arange(num_heads, device=q_pos.device) if head_ids is None else head_ids
    h = ids.view(1, -1, 1, 1)
    return {
        "H": num_heads,
        "Hk": num_kv_heads,
        "head_ids": ids,
        "h": h,
        "hk": h // (num_heads // num_kv_heads),
        "q": q_pos.view(1, 1, -1, 1),
        "k": k_pos.view(1, 1, 1, -1),
    }
