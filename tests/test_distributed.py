"""Context parallelism (sparsedsl.distributed) on the CPU: the exchange plan against
the brute-force mask, in this process; and distributed attention in 2 and 3 gloo
processes (spawned once per world size) against single-process attention on the
whole sequence, float64, both layouts, uneven lengths: output, LSE and the gradients
of q, k and v."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import HealthCheck, Phase, given, settings

import sparsedsl as sd
from sparsedsl.distributed import exchange_plan, shard, shard_ranges, unshard
from sparsedsl.distributed.layout import positions
from sparsedsl.ir.printer import to_text
from sparsedsl.testing import patterns

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

SOURCES = {
    "causal": "pattern c() { causal }",
    "sink_window": "pattern sw() { causal & (sink(3) | window(7)) }",
    "s2": "pattern s2() { causal & (local_blocks(2, block=4) | strided(3, block=4)) }",
    "chunked_where": "pattern cw() { causal & (chunked(8) | where(k % 5 == 0)) }",
    "bidirectional": "pattern bi() { band(4, 6) | global(2) }",
    "per_head": "pattern ph() {\n    heads[0:1] => causal\n    heads[1:] => causal & (sink(2) | window(5))\n}",
    "dilated": "pattern di() { causal & dilated(12, 2) }",
}
# lengths with L % W != 0 and L % 2W != 0
LENGTHS = {2: 41, 3: 47}


def random_sources(n: int) -> list[str]:
    """n random static patterns from sparsedsl.testing, the same every run."""
    found = []

    @settings(derandomize=True, max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(patterns(max_depth=2, name="r"))
    def collect(root):
        if len(found) < n:
            found.append(to_text(root))

    collect()
    return found


def _covered(x, receiver: int) -> torch.Tensor:
    """bool [L]: the keys the exchange plan gives `receiver` (its own included)."""
    got = torch.zeros(x.length, dtype=torch.bool)
    for owner in range(x.world):
        got[positions(x.needs[receiver][owner])] = True
    return got


# ---- layouts and the exchange plan (in this process) -----------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("length,world", [(47, 3), (41, 2), (5, 3), (0, 2)])
def test_shards_split_the_sequence_and_unshard_inverts_them(layout, length, world):
    per_rank = shard_ranges(length, world, layout)
    pos = torch.cat([positions(r) for r in per_rank])
    assert sorted(pos.tolist()) == list(range(length))
    sizes = [len(positions(r)) for r in per_rank]
    assert max(sizes, default=0) - min(sizes, default=0) <= (1 if layout == "contiguous" else 2)
    x = torch.randn(2, 3, length, 4, dtype=torch.float64)
    assert torch.equal(unshard([shard(x, r, world, layout) for r in range(world)], layout), x)


def test_zigzag_gives_rank_r_chunks_r_and_2w_minus_1_minus_r():
    # 47 = 6 chunks: five of 8 rows, then one of 7
    assert shard_ranges(47, 3, "zigzag") == (((0, 8), (40, 7)), ((8, 8), (32, 8)), ((16, 8), (24, 8)))
    assert shard_ranges(47, 3, "contiguous") == (((0, 16),), ((16, 16),), ((32, 15),))


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_the_exchange_covers_every_visible_pair(name):
    _check_cover(sd.compile_pattern(SOURCES[name]))


def test_the_exchange_covers_random_patterns():
    for source in random_sources(25):
        _check_cover(sd.compile_pattern(source))


def _check_cover(p, heads=(4, 2)):
    for length, world in ((47, 3), (41, 2), (130, 2)):
        mask = p.mask(length, num_heads=heads[0], num_kv_heads=heads[1]).any(0)  # [L, L]: some head
        for layout in ("contiguous", "zigzag"):
            x = exchange_plan(p, length, world, layout, *heads, block=8)
            for r in range(world):
                seen = mask[positions(x.shards[r])].any(0)
                missing = (seen & ~_covered(x, r)).nonzero().flatten().tolist()
                assert not missing, f"{p.ir()} L={length} {layout}: rank {r} misses keys {missing}"
                for o in range(world):  # only the owner's keys, sorted, disjoint
                    got = positions(x.needs[r][o])
                    assert set(got.tolist()) <= set(positions(x.shards[o]).tolist())
                    assert torch.all(got[1:] > got[:-1])


def test_a_window_needs_only_its_halo_and_sinks_the_first_keys():
    p = sd.compile_pattern(SOURCES["sink_window"])  # sink 3, window 7
    x = exchange_plan(p, 47, 3, "contiguous", 2, 1, block=8)
    assert x.needs[1] == (((0, 3), (10, 6)), ((16, 16),), ())
    assert x.needs[2] == (((0, 3),), ((26, 6),), ((32, 15),))
    z = exchange_plan(p, 47, 3, "zigzag", 2, 1, block=8)  # rank 1: [8, 16) and [32, 40)
    assert z.needs[1] == (((0, 8),), ((8, 8), (32, 8)), ((26, 6),))  # (sinks and the halo [2, 8) meet)


def test_causal_needs_every_earlier_shard_and_nothing_later():
    p = sd.compile_pattern(SOURCES["causal"])
    x = exchange_plan(p, 47, 3, "contiguous", 1, block=8)
    for r in range(3):
        assert x.needs[r] == tuple(x.shards[o] if o <= r else () for o in range(3))


def test_strided_blocks_come_alone():
    p = sd.compile_pattern(SOURCES["s2"])  # local 2 blocks of 4, every third block of 4
    x = exchange_plan(p, 47, 3, "contiguous", 1, block=8)
    assert x.needs[2][0] == ((0, 4), (12, 4))  # blocks 0 and 3 of rank 0's [0, 16)
