"""Which keys each rank needs from each other rank, from the kernel plan.

For a query tile whose positions lie in [q0, q1), the plan's segments (per head
branch, in closed form: ir/plan.py) bound the keys some query of the tile may
see. The exchange evaluates them for every query tile of a rank's shard (tiles of
`block` rows, cut at global multiples of `block`), for every head, and takes the
union: the rank's needed keys, as exact position intervals, intersected with each
owner's shard. The work is O(tiles x segments x heads); no L x L mask is built.

- The intervals are exact where the plan's segments are: a window(w) of a
  contiguous shard needs w - 1 keys from the rank before it, sink(n) the first n
  keys, causal every earlier key. Where the plan is conservative (a complement,
  a where(...) without closed-form bounds: the segment [0, Lk)), so is the exchange.
- A strided segment keeps only the keys of its blocks j with (j + offset) % stride == 0.
- Segments are evaluated per residue class of a dilated layout (plan.rate), as
  the kernels walk them, and their hull is kept (keys of other classes in it are sent too).
- Block probes (a where(...) read through q // b and k // b) are not applied:
  every key of such a segment is sent.
- Heads: the union over all heads, since one K/V piece serves every head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..ir.evaluate import eval_cond, eval_int
from ..kernels.generate import strided_walk
from ..runtime.cost import branch_of
from .layout import Ranges, check_layout, ranges_size, shard_ranges

DEFAULT_BLOCK = 64  # query rows per tile of the exchange's walk


@dataclass(frozen=True)
class Intervals:
    """Key intervals [lo, hi) of query tiles: tile[i] is the index of the tile
    (into the caller's list) interval i belongs to (int64 tensors)."""

    tile: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    @staticmethod
    def cat(parts: list["Intervals"]) -> "Intervals":
        if not parts:
            empty = torch.zeros(0, dtype=torch.int64)
            return Intervals(empty, empty, empty)
        return Intervals(*(torch.cat([getattr(p, f) for p in parts]) for f in ("tile", "lo", "hi")))

    def merged(self, length: int) -> "Intervals":
        """The union per tile, as disjoint intervals sorted by (tile, lo)."""
        keep = self.hi > self.lo
        span = length + 1  # (tiles apart by more than a sequence: never merged together)
        lo, hi = (self.lo + self.tile * span)[keep], (self.hi + self.tile * span)[keep]
        if len(lo) == 0:
            return Intervals(lo, lo, lo)
        lo, order = torch.sort(lo, stable=True)
        hi = hi[order]
        reach = torch.cummax(hi, 0).values
        first = torch.ones_like(lo, dtype=torch.bool)
        first[1:] = lo[1:] > reach[:-1]
        last = torch.ones_like(first)
        last[:-1] = first[1:]
        tile = torch.div(lo[first], span, rounding_mode="floor")
        return Intervals(tile, lo[first] - tile * span, reach[last] - tile * span)

    def ranges(self) -> Ranges:
        """Every tile's intervals as one union: (start, length) pairs."""
        u = Intervals(torch.zeros_like(self.tile), self.lo, self.hi).merged(int(self.hi.max()) if len(self.hi) else 0)
        return tuple((int(a), int(b - a)) for a, b in zip(u.lo.tolist(), u.hi.tolist()))


def query_tiles(ranges: Ranges, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) int64 tensors of the tiles of `block` rows that cover the
    ranges, cut at global multiples of `block`."""
    starts, ends = [], []
    for s, n in ranges:
        cuts = list(range((s // block + 1) * block, s + n, block))
        starts += [s] + cuts
        ends += cuts + [s + n]
    return torch.tensor(starts, dtype=torch.int64), torch.tensor(ends, dtype=torch.int64)


def _lattice(iv: Intervals, block: int, stride: int, offset: int) -> Intervals:
    """The keys of `iv` inside blocks j (keys [j * block, (j + 1) * block)) with
    (j + offset) % stride == 0."""
    keep = iv.hi > iv.lo
    tile, lo, hi = iv.tile[keep], iv.lo[keep], iv.hi[keep]
    jlo, jhi = torch.div(lo, block, rounding_mode="floor"), torch.div(hi - 1, block, rounding_mode="floor")
    first = jlo + torch.remainder(-(jlo + offset), stride)
    count = torch.clamp(torch.div(jhi - first, stride, rounding_mode="floor") + 1, min=0)
    idx = torch.repeat_interleave(torch.arange(len(lo)), count)
    step = torch.arange(len(idx)) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    j = first[idx] + stride * step
    return Intervals(tile[idx], torch.maximum(lo[idx], j * block), torch.minimum(hi[idx], (j + 1) * block))


def _first_of_class(x: torch.Tensor, c: int, rate: int) -> torch.Tensor:
    """The first position >= x that is c modulo rate."""
    return x + torch.remainder(c - x, rate)


def _bound(node, env: dict, tiles: int, length: int) -> torch.Tensor:
    """A segment bound for every tile, clamped to the sequence."""
    return torch.clamp(torch.as_tensor(eval_int(node, env), dtype=torch.int64).expand(tiles), 0, length)


def tile_keys(plan, length: int, starts: torch.Tensor, ends: torch.Tensor, head: int, num_heads: int,
              num_kv_heads: int) -> list[tuple[int, torch.Tensor, Intervals]]:
    """For one head, per residue class c of the plan's layout: (c, the number of
    class-c queries of each tile, the key intervals the plan's segments give those
    queries, tagged by tile). The sequence has `length` queries and keys."""
    heads = {"h": head, "hk": head // (num_heads // num_kv_heads), "H": num_heads, "Hk": num_kv_heads,
             "Lk": length, "Lq": length}
    br = branch_of(plan, heads)
    out = []
    rate = plan.rate
    for c in range(rate):
        q0 = _first_of_class(starts, c, rate)
        last = ends - 1 - torch.remainder(ends - 1 - c, rate)
        rows = torch.clamp(torch.div(last - q0, rate, rounding_mode="floor") + 1, min=0)
        tiles = torch.nonzero(rows > 0).flatten()
        if br is None or len(tiles) == 0:
            continue
        env = dict(heads, q0=q0[tiles], q1=last[tiles] + 1)
        parts = []
        for seg in br.segments:
            guard = torch.as_tensor(eval_cond(seg.guard, env), dtype=torch.bool).expand(len(tiles))
            lo, hi = (_bound(node, env, len(tiles), length) for node in (seg.lo, seg.hi))
            iv = Intervals(tiles[guard], lo[guard], hi[guard])
            if strided_walk(seg, plan, True):  # (else its hull, as the kernels walk it)
                iv = _lattice(iv, seg.block.value, int(eval_int(seg.stride, env)), int(eval_int(seg.offset, env)))
            parts.append(iv)
        out.append((c, rows, Intervals.cat(parts).merged(length)))
    return out


def needed_keys(plan, length: int, query_ranges: Ranges, num_heads: int, num_kv_heads: int,
                block: int = DEFAULT_BLOCK) -> Ranges:
    """The key positions some query in `query_ranges` may see under the plan, for
    some head: sorted disjoint (start, length) pairs."""
    starts, ends = query_tiles(query_ranges, block)
    parts = [iv for h in range(num_heads)
             for _, _, iv in tile_keys(plan, length, starts, ends, h, num_heads, num_kv_heads)]
    return Intervals.cat(parts).ranges()


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """The positions in both (each sorted and disjoint)."""
    out = []
    for s, n in a:
        for t, m in b:
            lo, hi = max(s, t), min(s + n, t + m)
            if hi > lo:
                out.append((lo, hi - lo))
    return tuple(sorted(out))


@dataclass(frozen=True)
class ExchangePlan:
    """Who sends which keys to whom. `shards[r]`: rank r's positions (queries and
    keys); `needs[r][o]`: the positions of rank o's keys that rank r's queries may
    see (for o == r, the local keys it uses), sorted disjoint (start, length)."""

    length: int
    world: int
    layout: str
    num_heads: int
    num_kv_heads: int
    block: int
    shards: tuple[Ranges, ...]
    needs: tuple[tuple[Ranges, ...], ...]

    def keys(self, receiver: int, owner: int) -> int:
        return ranges_size(self.needs[receiver][owner])


def exchange_plan(p, length: int, world: int, layout: str = "zigzag", num_heads: int = 1,
                  num_kv_heads: int | None = None, block: int = DEFAULT_BLOCK) -> ExchangePlan:
    """The exchange of a static pattern `p` (a CompiledPattern) for a sequence of
    `length` positions split over `world` ranks in `layout`."""
    check_layout(layout)
    if p.is_dynamic:
        kinds = ", ".join(sorted({a.kind for a in p.dynamic_atoms}))
        raise InputError(f"sparsedsl.distributed: pattern {p.name!r} depends on the data ({kinds}); context "
                         "parallelism takes static patterns only (the selection would need every rank's block "
                         "summaries)")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise InputError(f"block must be a positive int, got {block!r}")
    p.check(num_heads, num_kv_heads)
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    shards = shard_ranges(length, world, layout)
    needs = []
    for r in range(world):
        keys = needed_keys(p.plan, length, shards[r], num_heads, num_kv_heads, block)
        needs.append(tuple(intersect(keys, shards[o]) for o in range(world)))
    return ExchangePlan(length, world, layout, num_heads, num_kv_heads, block, shards, tuple(needs))
