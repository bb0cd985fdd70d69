"""How a sequence of L positions is split over the W ranks of a group.

A rank's shard is a tuple of ranges (start, length) of global positions; its
local tensors hold the rows of those ranges one after another, in order. Queries
and keys are split the same way (self-attention: rank r's keys sit at the
positions of its queries).

    contiguous  one chunk per rank: rank r holds chunk r
    zigzag      2W chunks: rank r holds chunks r and 2W - 1 - r (head and tail),
                so under a causal pattern every rank has about the same work

Chunks follow one rule for uneven lengths: n items split into m chunks give the
first n % m chunks n // m + 1 rows and the others n // m (so chunk sizes differ by
at most one, and the larger come first).
"""
from __future__ import annotations

import torch

from ..errors import InputError

LAYOUTS = ("contiguous", "zigzag")

Ranges = tuple[tuple[int, int], ...]  # (start, length) of global positions, ascending


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    return layout


def chunks(length: int, parts: int) -> Ranges:
    """`length` positions in `parts` consecutive chunks (start, size), the first
    length % parts chunks one row longer."""
    base, extra = divmod(length, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append((start, size))
        start += size
    return tuple(out)


def shard_ranges(length: int, world: int, layout: str) -> tuple[Ranges, ...]:
    """For each rank of `world`, the global position ranges it holds (empty ranges
    left out), for a sequence of `length` positions."""
    check_layout(layout)
    if world < 1:
        raise InputError(f"the world size must be at least 1, got {world}")
    if layout == "contiguous":
        per_rank = [(c,) for c in chunks(length, world)]
    else:
        parts = chunks(length, 2 * world)
        per_rank = [(parts[r], parts[2 * world - 1 - r]) for r in range(world)]
    return tuple(tuple(r for r in ranges if r[1] > 0) for ranges in per_rank)


def ranges_size(ranges: Ranges) -> int:
    return sum(n for _, n in ranges)


def positions(ranges: Ranges, device=None) -> torch.Tensor:
    """int64 [sum of lengths]: the global positions of the rows, in order."""
    if not ranges:
        return torch.zeros(0, dtype=torch.int64, device=device)
    return torch.cat([torch.arange(s, s + n, dtype=torch.int64, device=device) for s, n in ranges])


def shard(x: torch.Tensor, rank: int, world: int, layout: str = "zigzag", dim: int = 2) -> torch.Tensor:
    """Rank `rank`'s shard of the whole-sequence tensor `x` (sequence along `dim`,
    2 for [B, H, L, D]): the rows of its ranges, concatenated (a copy)."""
    if not 0 <= rank < world:
        raise InputError(f"rank must be in [0, {world}), got {rank}")
    ranges = shard_ranges(x.shape[dim], world, layout)[rank]
    return torch.cat([x.narrow(dim, s, n) for s, n in ranges], dim=dim) if ranges else x.narrow(dim, 0, 0).clone()


def unshard(shards, layout: str = "zigzag", dim: int = 2) -> torch.Tensor:
    """The whole-sequence tensor from every rank's shard (a list in rank order):
    the inverse of `shard`."""
    shards = list(shards)
    if not shards:
        raise InputError("unshard: pass one shard per rank (got none)")
    length = sum(s.shape[dim] for s in shards)
    per_rank = shard_ranges(length, len(shards), layout)
    for r, (s, ranges) in enumerate(zip(shards, per_rank)):
        if s.shape[dim] != ranges_size(ranges):
            raise InputError(f"unshard: rank {r}'s shard has {s.shape[dim]} rows along dim {dim}, but layout "
                             f"{layout!r} gives it {ranges_size(ranges)} of {length} over {len(shards)} ranks")
    pieces = sorted((start, s.narrow(dim, offset, n)) for s, ranges in zip(shards, per_rank)
                    for (start, n), offset in zip(ranges, _offsets(ranges)))
    return torch.cat([p for _, p in pieces] or [shards[0]], dim=dim)  # (no rows: every shard is empty)


def _offsets(ranges: Ranges) -> list[int]:
    """Each range's first row in the local tensor."""
    out, row = [], 0
    for _, n in ranges:
        out.append(row)
        row += n
    return out


def local_rows(ranges: Ranges, intervals: Ranges) -> torch.Tensor:
    """int64: the local rows (in a tensor holding `ranges`) of the global positions
    in `intervals`, which must lie inside `ranges`."""
    rows = []
    for s, n in intervals:
        for (rs, rn), row in zip(ranges, _offsets(ranges)):
            if rs <= s and s + n <= rs + rn:
                rows.append(torch.arange(row + s - rs, row + s - rs + n, dtype=torch.int64))
                break
        else:
            raise ValueError(f"positions [{s}, {s + n}) are not inside {ranges}")
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
