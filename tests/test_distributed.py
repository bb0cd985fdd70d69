"""Context parallelism (sparsedsl.distributed) on the CPU: the exchange plan against
the brute-force mask, in this process; and distributed attention in 2 and 3 gloo
processes (spawned once, by one test) against single-process attention on the
whole sequence, float64, both layouts, uneven lengths: output, LSE and the gradients
of q, k and v; and once on the kernels (backend="triton", Triton's interpreter, float32)."""
from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import HealthCheck, Phase, given, settings

import sparsedsl as sd
from sparsedsl.distributed import exchange_plan, report, shard, shard_ranges, unshard
from sparsedsl.distributed.layout import positions
from sparsedsl.ir.printer import to_text
from sparsedsl.testing import patterns

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.mark.parametrize("name", ["causal", "sink_window", "per_head", "dilated"])
def test_report_counts_the_visible_pairs_at_one_row_tiles(name):
    # with tiles of one query the segments of these patterns hold exactly the visible keys
    p = sd.compile_pattern(SOURCES[name])
    rep = report(p, 47, 3, "zigzag", num_heads=4, num_kv_heads=2, head_dim=8, head_dim_v=6, dtype=torch.float64,
                 batch=2, block=1)
    mask = p.mask(47, num_heads=4, num_kv_heads=2)
    for r, cost in enumerate(rep.ranks):
        rows = positions(shard_ranges(47, 3, "zigzag")[r])
        assert cost.pairs == int(mask[:, rows].sum()), (name, r)
        assert cost.flops == 2 * (8 + 6) * 2 * cost.pairs


def test_report_bytes_and_balance():
    p = sd.compile_pattern(SOURCES["causal"])
    flat, zigzag = (report(p, 4096, 4, layout, num_heads=8, num_kv_heads=2) for layout in ("contiguous", "zigzag"))
    assert flat.imbalance > 1.7 and zigzag.imbalance < 1.01
    row = 2 * (128 + 128) * 2  # Hk * (D + Dv) * bfloat16
    assert [r.keys_received for r in flat.ranks] == [0, 1024, 2048, 3072]
    assert [r.bytes_received for r in flat.ranks] == [k * row for k in (0, 1024, 2048, 3072)]
    assert all(r.bytes_all_gather == 3072 * row for r in flat.ranks)
    text = str(zigzag).splitlines()
    assert text[0].startswith("context parallelism: L=4096 over 4 ranks (zigzag), H=8 Hk=2 D=128 Dv=128 bfloat16")
    assert text[2].split()[:2] == ["0", "1024"] and len(text) == 2 + 4


def test_import_sparsedsl_leaves_distributed_until_it_is_used():
    code = ("import sys, sparsedsl; assert 'sparsedsl.distributed' not in sys.modules; "
            "assert sparsedsl.distributed.attention is sys.modules['sparsedsl.distributed'].attention")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


# ---- distributed attention (gloo processes) --------------------------------------------------
#
# One test spawns 3 gloo processes (once: pytest-xdist would run a module fixture once per
# worker). They run every case in the default group (world 3) and in the group of ranks 0
# and 1 (world 2), sharded decoding, one case and decoding on the kernels, then the checks of
# bad input; each process writes its results, and the test fails with every failure found.

WORLD = 3
FIXED = sorted(SOURCES)
RANDOM = [f"random {i}" for i in range(4)]
HEADS = [(4, 2), (2, 2), (4, 1)]  # (H, Hk), taken in turn by the cases


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_runs_equal_one_process(tmp_path):
    """Attention (out, LSE and gradients), decoding and bad input, in 2 and 3 processes."""
    cases = [(name, SOURCES[name]) for name in FIXED] + list(zip(RANDOM, random_sources(len(RANDOM))))
    mp.start_processes(_run_rank, args=(WORLD, _free_port(), str(tmp_path), cases), nprocs=WORLD, join=True,
                       start_method="spawn")
    ran = {}  # check -> {rank: None, or the traceback of its failure}
    for rank in range(WORLD):
        for check, failure in json.loads((tmp_path / f"{rank}.json").read_text()).items():
            ran.setdefault(check, {})[rank] = failure
    expected = {f"world {w}: {c}": range(w) for w in (2, 3) for c in FIXED + RANDOM}
    expected.update({"decode": range(WORLD), "triton": range(2), "bad input": range(WORLD)})
    assert {c: sorted(r) for c, r in ran.items()} == {c: list(r) for c, r in expected.items()}
    failures = [f"{check}, rank {r}:\n{f}" for check, per_rank in ran.items() for r, f in per_rank.items() if f]
    assert not failures, f"{len(failures)} failed:\n" + "\n".join(failures)


def _run_rank(rank: int, world: int, port: int, folder: str, cases: list) -> None:
    os.environ.update(MULTICAST_OFF, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # (a message that never comes fails the checks in a minute instead of hanging them)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    pair = dist.new_group([0, 1])
    results = {}

    def run(check: str, fn, *args) -> None:
        try:
            fn(*args)
            results[check] = None
        except Exception:  # noqa: BLE001 (reported to the test, which fails with it)
            results[check] = traceback.format_exc()

    try:
        for i, (name, source) in enumerate(cases):
            run(f"world 3: {name}", _check_case, rank, 3, None, source, HEADS[i % len(HEADS)], i == 0)
        if rank < 2:
            for i, (name, source) in enumerate(cases):
                run(f"world 2: {name}", _check_case, rank, 2, pair, source, HEADS[i % len(HEADS)])
        dist.barrier()
        run("decode", _check_decode, rank, world)
        if rank < 2:  # (on the two ranks of the pair: a process per core)
            run("triton", _check_triton, rank, 2, pair)
        run("bad input", _check_bad_input, rank)
    finally:
        Path(folder, f"{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


def _inputs(length: int, heads: tuple[int, int], seed: int):
    g = torch.Generator().manual_seed(seed)
    h, hk = heads
    q = torch.randn(2, h, length, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, hk, length, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, hk, length, 6, generator=g, dtype=torch.float64)
    dout = torch.randn(2, h, length, 6, generator=g, dtype=torch.float64)
    dlse = torch.randn(2, h, length, generator=g, dtype=torch.float64)
    return q, k, v, dout, dlse


def _loss(out, lse, dout, dlse):
    """A random linear function of out and of the finite entries of lse."""
    return (out * dout).sum() + (torch.where(torch.isfinite(lse), lse, 0) * dlse).sum()


def _whole(p, q, k, v, dout, dlse):
    """Single-process attention on the whole sequence: out, lse, dq, dk, dv."""
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out, lse = p(q, k, v, return_lse=True, backend="reference")
    _loss(out, lse, dout, dlse).backward()
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


def _sharded(p, rank, world, group, layout, q, k, v, dout, dlse, backend="auto"):
    """This rank's distributed out, lse, dq, dk, dv."""
    q, k, v = (shard(x, rank, world, layout).requires_grad_() for x in (q, k, v))
    out, lse = sd.distributed.attention(p, q, k, v, group=group, layout=layout, return_lse=True, backend=backend)
    _loss(out, lse, shard(dout, rank, world, layout), shard(dlse, rank, world, layout)).backward()
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


def _check_case(rank, world, group, source, heads, again: bool = False):
    p = sd.compile_pattern(source)
    data = _inputs(LENGTHS[world], heads, seed=len(source))
    whole = _whole(p, *data)
    got = {layout: _sharded(p, rank, world, group, layout, *data) for layout in ("contiguous", "zigzag")}
    if again:  # deterministic: a second run gives the same bits
        rerun = _sharded(p, rank, world, group, "zigzag", *data)
        assert all(torch.equal(a, b) for a, b in zip(rerun, got["zigzag"])), "a second run differs"
    for layout, mine in got.items():  # (compared once every collective call is done)
        for what, a, b in zip(("out", "lse", "dq", "dk", "dv"), mine, whole):
            b = shard(b, rank, world, layout)
            assert torch.equal(torch.isinf(a), torch.isinf(b)), f"{layout}: {what} is infinite elsewhere"
            err = (a - b).nan_to_num(0, 0, 0).abs().max().item() if a.numel() else 0.0
            assert err <= 1e-10, f"{layout} rank {rank}/{world}: {what} off by {err}"


def _check_decode(rank, world, dtype=torch.float64, backend="auto", tolerance=1e-10, group=None):
    """Each sequence's cache cut in `world` consecutive parts (uneven; one part empty)."""
    p = sd.compile_pattern(SOURCES["sink_window"])
    q, k, v, _, _ = _inputs(40, (4, 2), seed=3)
    q = q[:, :, -2:]  # 2 new queries
    totals = [40, 2]
    want = p.decode(q, k, v, torch.tensor(totals, dtype=torch.int32), return_lse=True, backend="reference")
    parts = [shard_ranges(n, world, "contiguous")[rank] or ((n, 0),) for n in totals]
    offsets = [r[0][0] for r in parts]
    lens = [r[0][1] for r in parts]
    kc, vc = torch.zeros_like(k[:, :, :max(lens)]), torch.zeros_like(v[:, :, :max(lens)])
    for i, (s, n) in enumerate(zip(offsets, lens)):
        kc[i, :, :n], vc[i, :, :n] = k[i, :, s:s + n], v[i, :, s:s + n]
    lens, offsets, totals = (torch.tensor(x, dtype=torch.int32) for x in (lens, offsets, totals))
    q, kc, vc = (x.to(dtype) for x in (q, kc, vc))
    got = sd.distributed.decode(p, q, kc, vc, lens, offsets, totals, group=group, return_lse=True, backend=backend)
    for what, a, b in zip(("out", "lse"), got, want):
        assert torch.equal(torch.isinf(a), torch.isinf(b)), what
        err = (a.double() - b).nan_to_num(0, 0, 0).abs().max().item()
        assert err <= tolerance, f"decode rank {rank}: {what} off by {err}"


def _check_triton(rank, world, group):
    """backend="triton": the kernels in Triton's interpreter, float32 inputs, both layouts and
    decoding, against single-process float64 attention."""
    p = sd.compile_pattern(SOURCES["sink_window"])
    data = [x[:1] for x in _inputs(LENGTHS[world], (2, 1), seed=7)]  # (few programs: the interpreter is slow)
    whole = _whole(p, *data)
    for layout in ("contiguous", "zigzag"):
        mine = _sharded(p, rank, world, group, layout, *(x.float() for x in data), backend="triton")
        for what, a, b in zip(("out", "lse", "dq", "dk", "dv"), mine, whole):
            b = shard(b, rank, world, layout)
            assert a.dtype == torch.float32 and torch.equal(torch.isinf(a), torch.isinf(b)), what
            err = (a.double() - b).nan_to_num(0, 0, 0).abs().max().item()
            assert err <= 2e-5, f"triton, {layout} rank {rank}/{world}: {what} off by {err}"
    _check_decode(rank, world, torch.float32, "triton", 2e-5, group)


def _raises(match: str, fn, *args, **kwargs) -> None:
    with pytest.raises(sd.InputError, match=match):
        fn(*args, **kwargs)


def _check_bad_input(rank):
    p = sd.compile_pattern(SOURCES["sink_window"])
    attend = sd.distributed.attention
    q, k, v, _, _ = _inputs(LENGTHS[3], (2, 1), seed=0)
    q, k, v = (shard(x, rank, 3, "contiguous") for x in (q, k, v))
    # every rank raises, each about the rank that got it wrong
    n = q.shape[2] - (rank == 0)  # rank 0 one row short
    _raises(r"the shards \[15, 16, 15\] do not split one sequence in layout 'contiguous': a sequence of 46 over "
            r"3 ranks gives rank 0 16 rows, not 15", attend, p, q[:, :, :n], k[:, :, :n], v[:, :, :n],
            layout="contiguous")
    _raises(r"the shards \[16, 16, 15\] do not split one sequence in layout 'zigzag': a sequence of 47 over 3 "
            r"ranks gives rank 0 15 rows, not 16", attend, p, q, k, v, layout="zigzag")
    _raises("rank 0 holds 16 query rows but 15 key rows", attend, p, q, k[:, :, :n], v[:, :, :n],
            layout="contiguous")
    _raises("every rank must pass the same dtype: rank 0 has torch.float64, rank 2 has torch.float32",
            attend, p, *((x.float() if rank == 2 else x) for x in (q, k, v)), layout="contiguous")
    flat = q[0] if rank == 1 else q
    _raises(r"on rank 1: attention: q must have 4 dimensions" if rank == 1 else
            "the inputs of rank 1 are not valid", attend, p, flat, k, v, layout="contiguous")
    dynamic = sd.compile_pattern("pattern d() { causal & (window(4) | topk(1, block=4)) }")
    _raises("pattern 'd' depends on the data .topk.; context parallelism takes static patterns only",
            attend, dynamic, q, k, v, layout="contiguous")


def test_bad_arguments_raise_before_any_message():
    p = sd.compile_pattern(SOURCES["causal"])
    q = torch.zeros(1, 1, 4, 8)
    _raises("layout must be one of 'contiguous', 'zigzag', got 'ring'", sd.distributed.attention, p, q, q, q,
            layout="ring")
    _raises("backend='triton' takes float32, float16 and bfloat16 inputs; float64 runs on backend='reference'",
            sd.distributed.partial_attention, p, q.double(), q, q, ((0, 4),), ((0, 4),), 1.0, "triton")
    assert not dist.is_initialized()
    _raises(r"torch.distributed is not initialised: call torch.distributed.init_process_group\(...\) on every rank",
            sd.distributed.attention, p, q, q, q)
    _raises("unshard: rank 0's shard has 4 rows along dim 2, but layout 'zigzag' gives it 3 of 6 over 2 ranks",
            unshard, [q, q[:, :, :2]])
