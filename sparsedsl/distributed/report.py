"""What context parallelism costs each rank, before running: its work (the
query-key pairs its query tiles meet in the plan's segments) and the bytes it
receives, against an all-gather of every other rank's keys and values."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .exchange import DEFAULT_BLOCK, Intervals, exchange_plan, query_tiles, tile_keys
from .layout import ranges_size


@dataclass(frozen=True)
class RankCost:
    rows: int  # the rank's queries (and keys)
    pairs: int  # per batch entry, summed over heads: per query tile, its rows times the keys its segments cover
    flops: int  # 2 * (head_dim + head_dim_v) per pair and batch entry: QK^T and PV
    keys_received: int  # other ranks' keys it receives
    bytes_received: int  # their K and V rows, batch * Hk * (D + Dv) * itemsize each
    bytes_all_gather: int  # what an all-gather of every other rank's K and V would bring


@dataclass(frozen=True)
class Report:
    length: int
    world: int
    layout: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    head_dim_v: int
    dtype: torch.dtype
    batch: int
    ranks: tuple[RankCost, ...]

    @property
    def imbalance(self) -> float:
        """The busiest rank's pairs over the mean (1.0: even; 1.0 when there is no work)."""
        pairs = [r.pairs for r in self.ranks]
        return max(pairs) * len(pairs) / sum(pairs) if sum(pairs) else 1.0

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        lines = [f"context parallelism: L={self.length} over {self.world} ranks ({self.layout}), H={self.num_heads} "
                 f"Hk={self.num_kv_heads} D={self.head_dim} Dv={self.head_dim_v} {dtype} batch={self.batch}; "
                 f"work imbalance {self.imbalance:.2f} (busiest / mean)",
                 "  rank     rows        pairs    GFLOP  keys recv   MB recv  MB all-gather"]
        for i, r in enumerate(self.ranks):
            lines.append(f"  {i:4d} {r.rows:8d} {r.pairs:12d} {r.flops / 1e9:8.3f} {r.keys_received:10d} "
                         f"{r.bytes_received / 1e6:9.3f} {r.bytes_all_gather / 1e6:14.3f}")
        return "\n".join(lines)


def _class_keys(iv: Intervals, c: int, rate: int) -> torch.Tensor:
    """How many positions of residue class c each interval holds."""
    def first_u(x):
        return -torch.div(c - x, rate, rounding_mode="floor")

    return first_u(iv.hi) - first_u(iv.lo)


def pairs_of(plan, length: int, ranges, num_heads: int, num_kv_heads: int, block: int) -> int:
    """Summed over heads and the query tiles of `ranges`: the tile's queries times the
    keys the plan's segments give it, per residue class (as the kernels walk them)."""
    starts, ends = query_tiles(ranges, block)
    total = 0
    for h in range(num_heads):
        for c, rows, iv in tile_keys(plan, length, starts, ends, h, num_heads, num_kv_heads):
            keys = torch.zeros(len(starts), dtype=torch.int64).index_add_(0, iv.tile, _class_keys(iv, c, plan.rate))
            total += int((rows * keys).sum())
    return total


def report(p, length: int, world: int, layout: str = "zigzag", *, num_heads: int = 1, num_kv_heads: int | None = None,
           head_dim: int = 128, head_dim_v: int | None = None, dtype: torch.dtype = torch.bfloat16, batch: int = 1,
           block: int = DEFAULT_BLOCK) -> Report:
    """Each rank's work and received bytes for context-parallel attention of the
    static pattern `p` over `length` positions on `world` ranks (nothing runs)."""
    x = exchange_plan(p, length, world, layout, num_heads, num_kv_heads, block)
    dv = head_dim if head_dim_v is None else head_dim_v
    row_bytes = batch * x.num_kv_heads * (head_dim + dv) * torch.empty(0, dtype=dtype).element_size()
    ranks = []
    for r in range(world):
        pairs = pairs_of(p.plan, length, x.shards[r], num_heads, x.num_kv_heads, block)
        keys = sum(x.keys(r, o) for o in range(world) if o != r)
        rows = ranges_size(x.shards[r])
        ranks.append(RankCost(rows, pairs, 2 * (head_dim + dv) * pairs * batch, keys, keys * row_bytes,
                              (length - rows) * row_bytes))
    return Report(length, world, layout, num_heads, x.num_kv_heads, head_dim, dv, dtype, batch, tuple(ranks))
