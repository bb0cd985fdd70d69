"""Tile coverage for `sparsedsl show` without the dense [H, Lq, Lk] mask.

The picture has at most cells x cells tiles (the grid of render.coverage).
Up to EXACT_PAIRS evaluated (head, query, key) triples every pair is evaluated,
in row chunks, so a tile's coverage is exact. Past that, each tile is evaluated
on a fixed grid of sample rows and columns (its first and last row and column
and evenly spaced ones between), so the cost does not grow with L^2: 'some' and
'all' (and 'none') then describe the sample, and the caller must say so."""
from __future__ import annotations

import torch

from .reference.attention import visible
from .reference.evaluate import eval_mask, grid_env

EXACT_PAIRS = 1 << 26  # h * Lq * Lk evaluated exactly up to this (a few seconds on a CPU)
SAMPLE_POSITIONS = 1024  # sample rows (and columns) along each axis past EXACT_PAIRS
CHUNK = 1 << 23  # elements evaluated at a time


def grid(length: int, cells: int) -> tuple[int, int]:
    """(positions per tile, tiles) along one axis, as render.coverage tiles it."""
    per = -(-length // min(cells, max(length, 1)))
    return per, -(-length // per)


def _positions(length: int, per: int, tiles: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions along one axis and the tile of each: all of them, or `samples`
    per tile (first, last and evenly spaced between)."""
    if samples >= per:
        pos = torch.arange(length)
        return pos, pos // per
    out = []
    for t in range(tiles):
        lo, hi = t * per, min(length, (t + 1) * per) - 1
        out.append(torch.linspace(lo, hi, min(samples, hi - lo + 1), dtype=torch.float64).round().long().unique())
    pos = torch.cat(out)
    return pos, pos // per


def coverage(p, lq: int, lk: int, h: int, hk: int, cells: int, mask: torch.Tensor | None = None,
             exact_pairs: int = EXACT_PAIRS, samples: int = SAMPLE_POSITIONS):
    """(fraction [h, nq, nk] of the evaluated pairs visible in each tile, density
    per head [h], sampled: bool). `mask` [h, Lq, Lk]: a dense mask to read
    instead of evaluating the (static) pattern."""
    rq, nq = grid(lq, cells)
    rk, nk = grid(lk, cells)
    sampled = h * lq * lk > exact_pairs and mask is None
    per_axis = max(1, samples // max(nq, nk)) if sampled else max(rq, rk)
    qpos, qtile = _positions(lq, rq, nq, per_axis)
    kpos, ktile = _positions(lk, rk, nk, per_axis)
    seen = torch.zeros((h, nq, nk), dtype=torch.float64)
    step = max(1, CHUNK // max(1, h * len(kpos)))
    for r0 in range(0, len(qpos), step):
        rows = qpos[r0:r0 + step]
        if mask is not None:
            m = mask[:, rows][:, :, kpos]
        elif not sampled:  # every key: the reference's own row evaluation
            m = visible(p.root, lq, lk, h, hk, rows).expand(1, h, len(rows), lk)[0]
        else:
            m = eval_mask(p.root, grid_env(h, hk, lk - lq + rows, kpos)).expand(1, h, len(rows), len(kpos))[0]
        by_col = torch.zeros((h, len(rows), nk), dtype=torch.int32).index_add_(2, ktile, m.to(torch.int32))
        seen.index_add_(1, qtile[r0:r0 + step], by_col.double())
    rows_in = torch.bincount(qtile, minlength=nq).double()
    cols_in = torch.bincount(ktile, minlength=nk).double()
    frac = seen / (rows_in.view(-1, 1) * cols_in.view(1, -1)).clamp(min=1)
    # Density: each tile's fraction weighted by the pairs the tile holds.
    weight = _tile_sizes(lq, rq, nq).view(-1, 1) * _tile_sizes(lk, rk, nk).view(1, -1)
    density = (frac * weight).flatten(1).sum(1) / max(1, lq * lk)
    return frac, density, sampled


def _tile_sizes(length: int, per: int, tiles: int) -> torch.Tensor:
    sizes = torch.full((tiles,), float(per), dtype=torch.float64)
    if tiles:
        sizes[-1] = length - per * (tiles - 1)
    return sizes


def row_density(p, lq: int, lk: int, h: int, hk: int, exact_pairs: int = EXACT_PAIRS):
    """(density per head [h] over evenly spaced query rows with every key, rows
    used), or None when one row of every head is already past `exact_pairs`."""
    n = min(lq, exact_pairs // max(1, h * lk))
    if n < 1:
        return None
    rows = torch.linspace(0, lq - 1, n, dtype=torch.float64).round().long().unique()
    total = torch.zeros(h, dtype=torch.float64)
    step = max(1, CHUNK // max(1, h * lk))
    for r0 in range(0, len(rows), step):
        chunk = rows[r0:r0 + step]
        m = visible(p.root, lq, lk, h, hk, chunk).expand(1, h, len(chunk), lk)[0]
        total += m.sum(dim=(1, 2)).double()
    return total / (len(rows) * lk), len(rows)
