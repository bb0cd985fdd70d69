"""Reference attention: exact, chunked over queries so memory stays bounded
(a 32K-token call never holds an L x L matrix), in float32 or float64."""
from __future__ import annotations

import math

import torch

from ..ir import nodes as ir
from ..atoms import atom_arg
from ..ir.check import dynamic_atoms
from .compensation import entries, hidden_pattern
from .evaluate import eval_mask, grid_env
from .heads import active_heads
from .select import group_of_rows, landmark_keys, select_topk, selected_block_mask

# Logit elements per chunk (B * H * rows * Lk); 2**25 float32 = 128 MiB.
CHUNK_ELEMENTS = 1 << 25
LOG2E = 1.4426950408889634


def compute_selection(root: ir.Node, q: torch.Tensor, k: torch.Tensor, dtype=None, clamp: bool = False,
                      scale: float | None = None) -> dict:
    """{topk atom: int32 [B, H, R, n]} for every topk atom of the pattern
    (clamp=True: [B, H, R, min(n, nb)], for masks and attention). `scale`: the
    logit scale of score=attention(...) (default 1 / sqrt(D))."""
    dtype = dtype or (torch.float64 if q.dtype == torch.float64 else torch.float32)
    out = {}
    for atom in dynamic_atoms(root):
        if atom.kind == "topk":
            out[atom] = select_topk(q.to(dtype), k.to(dtype), atom_arg(atom, "n").value,
                                    atom_arg(atom, "block").value, atom_arg(atom, "score"),
                                    atom_arg(atom, "causal").value, clamp, scale)
    return out


class _TopkMasks:
    """Turns selections into key visibility for the query rows being evaluated."""

    def __init__(self, selection: dict, q_len: int, kv_len: int):
        self.q_len, self.kv_len = q_len, kv_len
        self.blocks = {}
        for atom, sel in selection.items():
            block = atom_arg(atom, "block").value
            self.blocks[atom] = (block, selected_block_mask(sel, -(-kv_len // block)))
        self.rows = None

    def __call__(self, atom: ir.Atom, env: dict) -> torch.Tensor:
        block, hit = self.blocks[atom]
        grp = group_of_rows(self.q_len, self.kv_len, block, self.rows).to(hit.device)
        kblk = torch.arange(self.kv_len, device=hit.device) // block
        per_row = hit[:, env["head_ids"].to(hit.device)][:, :, grp]  # [B, Hs, C, nb]
        return per_row[..., kblk].to(env["q"].device)  # [B, Hs, C, Lk]


def visible(root: ir.Node, q_len: int, kv_len: int, num_heads: int, num_kv_heads: int,
            rows: torch.Tensor, selection: dict | None = None, positions=None) -> torch.Tensor:
    """Ordinary-key visibility for the given query rows (on rows' device):
    bool broadcastable to [B, H, C, Lk]. `positions`: see reference_attention."""
    q_pos, k_pos = _positions(q_len, kv_len, rows, positions)
    env = grid_env(num_heads, num_kv_heads, q_pos, k_pos)
    dynamic = None
    if selection:
        dynamic = _TopkMasks(selection, q_len, kv_len)
        dynamic.rows = rows
    return eval_mask(root, env, dynamic)


def _positions(q_len: int, kv_len: int, rows: torch.Tensor, positions) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of the query `rows` and of every key: the given ones, or
    bottom-right aligned (query row i at kv_len - q_len + i, key j at j)."""
    if positions is not None:
        return positions[0].to(rows.device)[rows], positions[1].to(rows.device)
    return kv_len - q_len + rows, torch.arange(kv_len, device=rows.device)


def reference_attention(root: ir.Node, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        scale: float | None = None, selection: dict | None = None,
                        compute_dtype: torch.dtype | None = None, chunk_elements: int | None = None,
                        positions: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Attention of q [B, H, Lq, D] over k, v [B, Hk, Lk, D/Dv] under the pattern `root`.

    Returns (out [B, H, Lq, Dv] in q's dtype, lse [B, H, Lq] in the compute dtype).
    A query row that sees nothing gets output 0 and lse -inf. Landmark and compensation
    entries are more columns of the same softmax. `positions`: the
    rows' positions, int64 [Lq] and [Lk], for a static pattern (context
    parallelism's shards); by default query row i is at Lk - Lq + i and key j at j."""
    b, h, lq, d = q.shape
    hk, lk, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = h // hk
    cd = compute_dtype or (torch.float64 if q.dtype == torch.float64 else torch.float32)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    qf, kf, vf = q.to(cd), k.to(cd), v.to(cd)
    if selection is None:
        selection = compute_selection(root, q, k, cd, clamp=True, scale=scale)
    landmarks = []
    for atom in dynamic_atoms(root):
        if atom.kind == "landmarks":
            block = atom_arg(atom, "block").value
            kl, vl = landmark_keys(kf, vf, block)
            landmarks.append((block, kl, vl, active_heads(root, atom, h, hk).to(q.device)))
    hidden = hidden_pattern(root)
    # A non-finite value must reach only the queries that see it: the product runs
    # on finite values, and the (query, column) entries with a visible non-finite
    # value are set afterwards as a sum over the visible keys would give them.
    nonfinite = [~torch.isfinite(x) for x in [vf] + [vl for _, _, vl, _ in landmarks]]
    if not any(bool(x.any()) for x in nonfinite):
        nonfinite = None  # (finite inputs: the plain product, exactly as before)
    out = torch.empty((b, h, lq, dv), dtype=cd, device=q.device)
    lse = torch.empty((b, h, lq), dtype=cd, device=q.device)
    if chunk_elements is None:  # read at call time, so the module setting can be changed
        chunk_elements = CHUNK_ELEMENTS
    rows_per_chunk = max(1, chunk_elements // max(1, b * h * max(lk, 1)))
    for r0 in range(0, lq, rows_per_chunk):
        rows = torch.arange(r0, min(lq, r0 + rows_per_chunk), device=q.device)
        c = len(rows)
        mask = visible(root, lq, lk, h, hk, rows, selection, positions)
        qc = qf[:, :, r0:r0 + c].reshape(b, hk, g, c, d)
        logits = torch.einsum("bgxcd,bgkd->bgxck", qc, kf).reshape(b, h, c, lk) * scale
        logits = logits.masked_fill(~mask, float("-inf"))
        values = [vf]
        q_pos = _positions(lq, lk, rows, positions)[0]
        for block, kl, vl, active in landmarks:
            lg = torch.einsum("bgxcd,bgkd->bgxck", qc, kl).reshape(b, h, c, kl.shape[2]) * scale
            seen = (torch.arange(kl.shape[2], device=q.device).view(1, -1)
                    < torch.div(q_pos, block, rounding_mode="floor").view(-1, 1))
            seen = seen.view(1, 1, c, -1) & active.view(1, h, 1, 1)
            logits = torch.cat([logits, lg.masked_fill(~seen, float("-inf"))], dim=-1)
            values.append(vl)
        if hidden is not None:  # one more column: the row's compensation entry
            kbar, vbar, seen = entries(hidden, lq, h, rows, kf, vf)
            lg = (qf[:, :, r0:r0 + c] * kbar).sum(-1, keepdim=True) * scale
            logits = torch.cat([logits, lg.masked_fill(~seen, float("-inf"))], dim=-1)
        m = logits.amax(dim=-1, keepdim=True) if logits.shape[-1] else torch.full((b, h, c, 1), float("-inf"), dtype=cd, device=q.device)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        # exp2 of base-2 logits: torch.exp on float32 CPU tensors intermittently (per process) returned
        # values 5e-5 off in relative terms (torch 2.13, AVX-512); exp2 stays at float32 rounding
        p = torch.exp2((logits - m_safe) * LOG2E)
        s = p.sum(dim=-1, keepdim=True)
        o = torch.zeros((b, h, c, dv), dtype=cd, device=q.device)
        counts = torch.zeros((3, b, h, c, dv), dtype=cd, device=q.device) if nonfinite else None
        offset = 0
        for i, vals in enumerate(values):
            n = vals.shape[2]
            pv = p[..., offset:offset + n].reshape(b, hk, g, c, n)
            if nonfinite:
                bad = nonfinite[i]
                seen = (logits[..., offset:offset + n] > float("-inf")).reshape(b, hk, g, c, n)
                _count_nonfinite(counts, seen, pv, vals)
                vals = vals.masked_fill(bad, 0)
            o += torch.einsum("bgxck,bgkd->bgxcd", pv, vals).reshape(b, h, c, dv)
            offset += n
        if hidden is not None:
            o += p[..., offset:] * vbar
        if nonfinite:
            nan, pos, neg = counts > 0
            o = torch.where(pos, torch.full_like(o, float("inf")), o)
            o = torch.where(neg, torch.full_like(o, float("-inf")), o)
            o = torch.where(nan | (pos & neg), torch.full_like(o, float("nan")), o)
        empty = s == 0
        out[:, :, r0:r0 + c] = torch.where(empty, torch.zeros_like(o), o / torch.where(empty, torch.ones_like(s), s))
        lse[:, :, r0:r0 + c] = torch.where(empty, torch.full_like(s, float("-inf")), torch.log(s) + m_safe).squeeze(-1)
    if lq == 0:  # (no row was written: still a result that autograd can go back through)
        zero = (qf.sum() + kf.sum() + vf.sum()) * 0
        out, lse = out + zero, lse + zero
    return out.to(q.dtype), lse


def _count_nonfinite(counts, seen, pv, vals) -> None:
    """Add, per (query, column), the visible keys whose value makes the sum NaN
    (a NaN, or an infinity with weight 0), +inf or -inf (with weight > 0)."""
    b, h, c, dv = counts.shape[1:]
    nan, inf = torch.isnan(vals), torch.isinf(vals)
    pos, neg = inf & (vals > 0), inf & (vals < 0)
    live = seen & (pv > 0)
    for j, (w, x) in enumerate(((seen, nan), (live, pos), (live, neg))):
        counts[j] += torch.einsum("bgxck,bgkd->bgxcd", w.to(vals.dtype), x.to(vals.dtype)).reshape(b, h, c, dv)
    counts[0] += torch.einsum("bgxck,bgkd->bgxcd", (seen & (pv == 0)).to(vals.dtype),
                              inf.to(vals.dtype)).reshape(b, h, c, dv)
