"""The static cost of a pattern on the kernels: for a sequence shape and a tile
size, the key tiles each query tile of the forward visits, how many of them
skip the element mask (full) or evaluate it (partial), and how many hold at
least one visible pair (needed). It walks the kernel plan's segments exactly
as the generated forward does (kernels/generate.py: each segment minus the
tiles of the earlier ones, strided segments block by block, the residue layout
of dilated patterns), evaluated for all query tiles of a head at once. `needed`
is counted from the mask on the visited partial tiles only: a full tile is
needed by definition, and the bounds never leave out a tile that holds a
visible pair (the property tests check both against brute force)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..atoms import condition
from ..atoms.solve import block_probe, fallbacks
from ..ir import nodes as ir
from ..ir.evaluate import eval_cond, eval_int
from ..kernels.generate import strided_walk
from ..reference.evaluate import eval_mask

RATIO_WARNING = 1.5  # `sparsedsl check` warns above this visited / needed ratio
_CHUNK = 1 << 22  # mask elements evaluated at once


@dataclass(frozen=True)
class HeadCost:
    visited: int  # key tiles the forward visits, over all query tiles
    full: int  # of those, the tiles that skip the element mask
    partial: int  # and those that evaluate it
    needed: int  # tiles that hold at least one visible pair
    flops: int  # 4 * BLOCK_M * BLOCK_N * head_dim per visited tile (QK^T and PV)
    probed: int = 0  # tiles a block-level probe checked and skipped (not visited)


@dataclass(frozen=True)
class CostReport:
    q_len: int
    kv_len: int
    num_heads: int
    num_kv_heads: int
    tile: tuple[int, int]
    head_dim: int
    visited: int
    full: int
    partial: int
    needed: int
    ratio: float  # visited / needed (1.0 when nothing is needed)
    flops: int
    per_head: tuple[HeadCost, ...]
    probed: int = 0  # tiles checked by a block-level probe and skipped

    def __str__(self) -> str:
        bm, bn = self.tile
        probed = f"; {self.probed} more checked by a block probe and skipped" if self.probed else ""
        lines = [f"cost: Lq={self.q_len} Lk={self.kv_len} H={self.num_heads} Hk={self.num_kv_heads} "
                 f"tile={bm}x{bn} head_dim={self.head_dim}",
                 f"  visited {self.visited} key tiles ({self.full} full, {self.partial} partial), "
                 f"needed {self.needed}, ratio {self.ratio:.2f}, {self.flops / 1e9:.3f} GFLOP{probed}",
                 "  head  visited     full  partial   needed  ratio"]
        for h, c in enumerate(self.per_head):
            r = c.visited / c.needed if c.needed else 1.0
            lines.append(f"  {h:4d} {c.visited:8d} {c.full:8d} {c.partial:8d} {c.needed:8d} {r:6.2f}")
        return "\n".join(lines)


def _first_u(x, c: int, rate: int):
    """The first index u with c + rate * u >= x."""
    return -torch.div(c - x, rate, rounding_mode="floor")


def _floor_to(x, n: int):
    return torch.div(x, n, rounding_mode="floor") * n


def _tensor(x, like: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int64) if isinstance(x, torch.Tensor) else torch.full_like(like, int(x))


def branch_of(plan, env: dict):
    """The plan's branch of the head in `env` (h, hk, H, Hk): the first whose condition
    holds, or None."""
    for br in plan.branches:
        v = eval_cond(br.cond, env)
        if bool(v if not isinstance(v, torch.Tensor) else v.all()):
            return br
    return None


def pattern_cost(root: ir.Pattern, plan, q_len: int, kv_len: int, num_heads: int, num_kv_heads: int,
                 tile: tuple[int, int], head_dim: int) -> CostReport:
    bm, bn = tile
    heads = []
    for h in range(num_heads):
        heads.append(_head_cost(root, plan, q_len, kv_len, h, num_heads, num_kv_heads, bm, bn, head_dim))
    visited = sum(c.visited for c in heads)
    needed = sum(c.needed for c in heads)
    return CostReport(q_len, kv_len, num_heads, num_kv_heads, (bm, bn), head_dim, visited,
                      sum(c.full for c in heads), sum(c.partial for c in heads), needed,
                      visited / needed if needed else 1.0, sum(c.flops for c in heads), tuple(heads),
                      sum(c.probed for c in heads))


def _head_cost(root, plan, lq, lk, h, H, Hk, bm, bn, head_dim) -> HeadCost:
    heads = {"h": h, "hk": h // (H // Hk), "H": H, "Hk": Hk, "Lk": lk, "Lq": lq}
    br = branch_of(plan, heads)
    rate = plan.rate
    walk = all(b % bn == 0 for b in plan.blocks)  # (as kernels/generate.py decides for fixed tiles)
    visited = full = needed = probed = 0
    for c in range(rate):
        u_start = int(_first_u(torch.tensor(lk - lq), c, rate))
        u_end = int(_first_u(torch.tensor(lk), c, rate))
        num_u = u_end  # keys of class c: u in [0, num_u)
        t0 = torch.arange(u_start, u_end, bm, dtype=torch.int64)
        nk = -(-max(num_u, 0) // bn)
        if len(t0) == 0 or nk == 0 or br is None:
            continue
        q0 = c + rate * t0
        q1 = c + rate * (torch.clamp(t0 + bm, max=u_end) - 1) + 1
        env = dict(heads, q0=q0, q1=q1)
        u0 = torch.arange(nk, dtype=torch.int64).view(1, -1) * bn  # [1, NK] key tiles
        seen = torch.zeros(len(t0), nk, dtype=torch.bool)
        whole = torch.zeros_like(seen)
        for seg in br.segments:
            g = eval_cond(seg.guard, env)
            if not bool(g if not isinstance(g, torch.Tensor) else g.all()):
                continue
            lo = torch.clamp(_tensor(eval_int(seg.lo, env), q0), 0, lk).view(-1, 1)
            hi = torch.clamp(_tensor(eval_int(seg.hi, env), q0), 0, lk).view(-1, 1)
            ua = _floor_to(_first_u(lo, c, rate), bn)
            ub = torch.where(hi > lo, _floor_to(_first_u(hi, c, rate) + bn - 1, bn), ua)
            inside = (u0 >= ua) & (u0 < ub)
            strided = strided_walk(seg, plan, walk)
            if strided:
                blk = seg.block.value
                s, off = int(eval_int(seg.stride, env)), int(eval_int(seg.offset, env))
                inside &= torch.remainder(torch.div(u0, blk, rounding_mode="floor") + off, s) == 0
            new = inside & ~seen
            if seg.probe:  # (rate 1: positions are the indices)
                hit = _probe_hits(seg.probe, heads, q0, q1, u0, bn, lk)
                probed += int((new & ~hit).sum())
                new &= hit
            if seg.has_full and (strided or not seg.strided):
                flo = torch.clamp(_tensor(eval_int(seg.full_lo, env), q0), 0, lk).view(-1, 1)
                fhi = torch.clamp(_tensor(eval_int(seg.full_hi, env), q0), 0, lk).view(-1, 1)
                fa = _floor_to(_first_u(flo, c, rate) + bn - 1, bn)
                fb = _floor_to(torch.clamp(_first_u(fhi, c, rate), max=num_u), bn)
                whole |= new & (u0 >= fa) & (u0 < fb)
            seen |= new
        visited += int(seen.sum())
        full += int(whole.sum())
        needed += int(whole.sum()) + _needed(root, seen & ~whole, t0, u_end, num_u, c, rate, bm, bn, h, H, Hk)
    return HeadCost(visited, full, visited - full, needed, 4 * bm * bn * head_dim * visited, probed)


def _probe_hits(probes, heads: dict, q0, q1, u0, bn: int, lk: int) -> torch.Tensor:
    """[query tiles, key tiles]: whether some probe holds for some (query block, key block)
    of the tile, the blocks the kernel's probe loops walk."""
    hit = torch.zeros(len(q0), u0.shape[1], dtype=torch.bool)
    k_last = torch.clamp(u0 + bn, max=lk) - 1
    for p in probes:
        qa, qz = torch.div(q0, p.q_block, rounding_mode="floor"), torch.div(q1 - 1, p.q_block, rounding_mode="floor")
        ka, kz = torch.div(u0, p.k_block, rounding_mode="floor"), torch.div(k_last, p.k_block, rounding_mode="floor")
        for i in range(int((qz - qa).max()) + 1 if len(q0) else 0):
            for j in range(int((kz - ka).max()) + 1):
                v = eval_cond(p.cond, dict(heads, qb=(qa + i).view(-1, 1), kb=ka + j))
                ok = ((qa + i) <= qz).view(-1, 1) & ((ka + j) <= kz)
                hit |= torch.as_tensor(v, dtype=torch.bool) & ok
    return hit


def _needed(root, tiles, t0, u_end, num_u, c, rate, bm, bn, h, H, Hk) -> int:
    """How many of the given (query tile, key tile) pairs hold a visible pair: the mask
    evaluated on those tiles only, in chunks."""
    idx = tiles.nonzero()
    if len(idx) == 0:
        return 0
    rows = torch.arange(bm, dtype=torch.int64)
    cols = torch.arange(bn, dtype=torch.int64)
    ids = torch.tensor([h])
    count = 0
    step = max(1, _CHUNK // (bm * bn))
    for s in range(0, len(idx), step):
        part = idx[s:s + step]
        qu = t0[part[:, 0]].view(-1, 1) + rows.view(1, -1)  # [P, BM] class indices
        ku = part[:, 1].view(-1, 1) * bn + cols.view(1, -1)  # [P, BN]
        q_ok, k_ok = qu < u_end, ku < num_u
        env = {"H": H, "Hk": Hk, "head_ids": ids, "h": ids.view(1, 1, 1, 1),
               "hk": ids.view(1, 1, 1, 1) // (H // Hk),
               "q": (c + rate * qu).view(-1, 1, bm, 1), "k": (c + rate * ku).view(-1, 1, 1, bn)}
        vis = eval_mask(root, env).expand(len(part), 1, bm, bn)[:, 0]
        vis = vis & q_ok.view(-1, bm, 1) & k_ok.view(-1, 1, bn)
        count += int(vis.flatten(1).any(1).sum())
    return count


def responsible(root: ir.Node) -> list[ir.Node]:
    """The parts of a pattern whose bounds fall back to every key: comparisons of
    where(...) without a closed form (and without a block probe), and complements."""
    out = []
    for n in ir.post_order(root):
        if isinstance(n, ir.Atom) and n.kind == "where":
            out += [c for c in fallbacks(condition(n)) if not block_probe(c)]
        elif isinstance(n, ir.Compl):
            out.append(n)
    return out
