"""Prefix sums of keys and values, for compensation entries: P[i] is the sum of the rows
before row i (float32 [B, H, L + 1, D], P[0] = 0), so the mean of the rows [lo, hi) is
(P[hi] - P[lo]) / (hi - lo): each query's entry costs O(D), whatever its span. Torch
operations on the device (a cumulative sum, O(L * D)) with fixed-size outputs: no host
synchronisation.

Rows are those of the tensor as the kernels address it without pages: a padded batch's
padded axis, a packed batch's packed axis (each sequence's rows from its first, the
kernel adding its first row to lo and hi), a cache's slots, a paged cache's positions.
Rows outside a padded entry or before a left-padded sequence's first slot count as zeros,
so that their contents (NaN, say) reach no entry."""
from __future__ import annotations

import torch


def prefix_sums(x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [B, H, L + 1, D] of x [B, H, L, D] (any strides). `rows`: int32 [B, 2], each
    entry's (first row, length); the rows outside count as zeros."""
    b, h, length, d = x.shape
    xf = x.float()
    if rows is not None:
        pos = torch.arange(length, device=x.device)
        first, count = rows[:, :1].long(), rows[:, 1:].long()
        inside = (pos >= first) & (pos < first + count)  # [B, L]
        xf = xf.masked_fill(~inside[:, None, :, None], 0.0)
    out = torch.zeros((b, h, length + 1, d), device=x.device, dtype=torch.float32)
    out[:, :, 1:] = xf.cumsum(2)
    return out


def paged_positions(x: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """A paged cache [pages, PAGE, H, D] as [B, H, capacity, D], row p being sequence b's position p
    (table entries past a sequence's pages may hold anything: they are read as some page, and the
    positions past its keys are never used)."""
    pages = x[_pages(block_table, x)]  # [B, pages per sequence, PAGE, H, D]
    b, n, page, h, d = pages.shape
    return pages.reshape(b, n * page, h, d).transpose(1, 2)


def _pages(block_table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The table's page ids as indices of the pages of x (an unused entry: some page)."""
    return block_table.long().clamp(0, x.shape[0] - 1)


def cache_prefix_sums(x: torch.Tensor, lens: torch.Tensor, block_table: torch.Tensor | None = None) -> torch.Tensor:
    """The prefix sums of a cache (x [B, H, Lmax, D], or paged [pages, PAGE, H, D] with block_table):
    float32 [B, H, capacity + 1, D]. `lens`: int32 [B] key counts, or [B, 2] (first slot, key
    count) of left-padded sequences, whose earlier slots count as zeros."""
    if block_table is not None:
        x = paged_positions(x, block_table)
    return prefix_sums(x, lens if lens.dim() == 2 else None)


def refresh(p: torch.Tensor, x: torch.Tensor, lens: torch.Tensor, new: int,
            block_table: torch.Tensor | None = None) -> None:
    """Recompute, in place, the prefix sums `p` of a cache at each sequence's last `new` keys
    (after appending them), from p at the key before them: O(new * D) per sequence."""
    b = p.shape[0]
    first = lens[:, 0].long() if lens.dim() == 2 else torch.zeros(b, dtype=torch.long, device=p.device)
    end = (lens[:, 0] + lens[:, 1]).long() if lens.dim() == 2 else lens.long()
    slot = end[:, None] - new + torch.arange(new, device=p.device)  # [B, new]
    inside = slot >= first[:, None]
    at = slot.clamp(min=0)
    seq = torch.arange(b, device=p.device)[:, None]
    if block_table is None:
        rows = x[seq, :, at]  # [B, new, H, D]
    else:
        page = x.shape[1]
        rows = x[_pages(block_table, x).gather(1, at // page), at % page]
    rows = rows.float().masked_fill(~inside[:, :, None, None], 0.0)
    base = p[seq[:, 0], :, (end - new).clamp(min=0)]  # [B, H, D]: the sum before the new keys
    # (a slot before the sequence writes 0 to row 0, which is 0 already)
    p[seq, :, torch.where(slot >= 0, slot + 1, 0)] = base[:, None] + rows.cumsum(1)


def prefill(k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None = None, sequences: int | None = None):
    """(PK, PV) of a prefill call's k, v [B, Hk, L, D/Dv]; `rows`: a padded batch's (first row,
    length) per entry. A packed batch (k, v: [1, Hk, T, D] views) of `sequences` sequences: the
    sums of the packed rows as [S, Hk, T + 1, D] views with batch stride 0."""
    out = tuple(prefix_sums(x, rows) for x in (k, v))
    return out if sequences is None else tuple(p.expand(sequences, -1, -1, -1) for p in out)
