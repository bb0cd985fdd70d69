"""Decoding: a few new queries per sequence against a KV cache, split over the key
axis (flash-decoding). The generated forward kernel runs in its decoding mode
(per-sequence key counts, optional paged cache, a share of each tile loop per
program) and writes float32 partial outputs and LSEs; merge_kernel combines the
parts with the LSE rule. Static patterns visit only the key tiles their
segments name, so sink + window decoding reads the same bytes at any length;
dynamic patterns read the block summaries (BlockSummaries, refreshed for the
new tokens on every call) and the selected blocks; compensation entries read the
cache's prefix sums (kept in the summaries, refreshed at the new tokens)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..ir.evaluate import eval_cond, eval_int
from ..ir.plan import KernelPlan
from .generate import keep_config
from .launch import LOG2E, _Launch, _sm_count, dynamic_tensors
from .prefix import cache_prefix_sums, refresh
from .selection import select
from .summaries import _pow2, stats


@dataclass
class BlockSummaries:
    """The block summaries of a KV cache that a dynamic pattern's decoding reads,
    float32 [B, Hk, capacity blocks, D]: `topk` (mean,) or (max, min) of key
    blocks, `landmarks` (K mean, V mean) of landmark blocks; and `compensation`,
    the prefix sums of K and V over the cache's rows, float32 [B, Hk, capacity + 1, D]
    (kernels/prefix.py: slots of a contiguous cache, positions of a paged one)."""

    topk: tuple[torch.Tensor, ...] | None
    landmarks: tuple[torch.Tensor, torch.Tensor] | None
    compensation: tuple[torch.Tensor, torch.Tensor] | None = None


def _cache_dims(k_cache, block_table):
    """(Hk, capacity, D) of a contiguous [B, Hk, Lmax, D] or paged [pages, PAGE, Hk, D] cache."""
    if block_table is None:
        return k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    return k_cache.shape[2], block_table.shape[1] * k_cache.shape[1], k_cache.shape[3]


def summarize(plan: KernelPlan, k_cache, v_cache, lens, block_table=None, into: BlockSummaries | None = None,
              new: int | None = None) -> BlockSummaries:
    """Compute (or, with `into` and `new`, refresh the blocks touched by each
    sequence's last `new` keys of) the summaries the pattern's decoding needs.
    `lens`: int32 [B] key counts, or [B, 2] (first slot, key count) of left-padded
    sequences, whose blocks count from their first slot."""
    hk, cap, d = _cache_dims(k_cache, block_table)
    b = lens.shape[0]

    def alloc(block, count):
        return tuple(torch.zeros((b, hk, -(-cap // block), d), device=k_cache.device, dtype=torch.float32)
                     for _ in range(count))

    if into is None:
        into = BlockSummaries(None, None)
        new = None
        if plan.topk is not None:
            into.topk = alloc(plan.topk.block, 2 if plan.topk.minmax else 1)
        if plan.landmarks is not None:
            into.landmarks = alloc(plan.landmarks, 2)
        if plan.compensation:
            into.compensation = tuple(cache_prefix_sums(x, lens, block_table) for x in (k_cache, v_cache))
    elif into.compensation is not None:
        for p, x in zip(into.compensation, (k_cache, v_cache)):
            refresh(p, x, lens, new, block_table)
    kw = dict(lens=lens, new=new, block_table=block_table)
    if into.topk is not None:
        block = plan.topk.block
        if plan.topk.minmax:  # stored (max, min): the scoring kernel's order
            mx, mn = into.topk
            stats(k_cache, block, (None, mn, mx), minmax=True, **kw)
        else:
            stats(k_cache, block, into.topk, minmax=False, **kw)
    if into.landmarks is not None:
        stats(k_cache, plan.landmarks, into.landmarks[:1], minmax=False, **kw)
        stats(v_cache, plan.landmarks, into.landmarks[1:], minmax=False, **kw)
    return into


def _holds(cond, env) -> bool:
    try:
        return bool(eval_cond(cond, env))
    except (KeyError, ZeroDivisionError):
        return True


@functools.lru_cache(maxsize=256)
def _tiles(plan, cap: int, lq: int, bn: int, num_heads: int, num_kv_heads: int) -> int:
    """An estimate of the key tiles a query tile visits at a full cache (for the split count)."""
    most = 1
    group = max(1, num_heads // max(1, num_kv_heads))
    for h in range(num_heads):  # each head's branch, with its head-dependent arguments (merged branches)
        env = {"q0": cap - lq, "q1": cap, "Lk": cap, "Lq": lq, "h": h, "hk": h // group, "H": num_heads,
               "Hk": num_kv_heads}
        br = next((b for b in plan.branches if _holds(b.cond, env)), None)
        if br is None:
            continue
        keys = 0
        for seg in br.segments:
            if not _holds(seg.guard, env):
                continue
            try:
                keys += max(0, min(eval_int(seg.hi, env), cap) - max(eval_int(seg.lo, env), 0))
            except (KeyError, ZeroDivisionError):
                keys += cap
        tiles = -(-keys // bn)
        if br.topk is not None:
            tiles += min(br.topk.n, -(-cap // br.topk.block)) * -(-br.topk.block // bn) * (2 if lq > 1 else 1)
        if br.landmarks is not None:
            tiles += -(-(cap // br.landmarks) // bn)
        most = max(most, tiles)
    return most


def decode_config(plan, head_dim: int, lq: int, interpret: bool):
    """(BLOCK_M, BLOCK_N, warps, stages): a tile of all new queries (up to 64), and key
    tiles no longer than the topk blocks (a selected block is walked whole)."""
    bm = max(16, min(64, _pow2(lq)))
    bn = 64 if head_dim <= 128 else 32
    if plan.topk is not None:
        bn = min(bn, max(16, 1 << (plan.topk.block.bit_length() - 1)))
    while bn > 16 and not keep_config(plan, bn, head_dim):
        bn //= 2
    return (16, 16) if interpret else (bm, bn, 4, 2)


def decode(plan: KernelPlan, q, k_cache, v_cache, lens, scale: float, interpret: bool, block_table=None,
           summaries: BlockSummaries | None = None, splits: int | None = None, config=None, leftpad=None,
           selection=None):
    """(out [B, H, Lq, Dv] in q's dtype, lse float32 [B, H, Lq], selection): the topk
    selection used (int32 [B, H, R, n], R = (Lq + block - 2) // block + 1; None without
    topk). `selection`: a given one (reused from another layer or step), ascending rows:
    then no block is scored, and without landmarks, compensation or kept `summaries` no summary is computed.
    `leftpad` (int32 [B], a contiguous cache): sequence b's keys are the slots
    [leftpad[b], lens[b]); a dynamic pattern's summaries and selection count its blocks
    from its first slot."""
    b, h, lq, d = q.shape
    hk, cap, _ = _cache_dims(k_cache, block_table)
    dv = v_cache.shape[-1]
    out = torch.empty((b, h, lq, dv), device=q.device, dtype=q.dtype)
    lse = torch.empty((b, h, lq), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse, selection
    landmarks = None
    if leftpad is not None:  # (first slot, key count) per sequence, interleaved
        lens = torch.stack((leftpad, lens - leftpad), 1).contiguous()
    # (a given selection needs no summaries; kept ones are still refreshed for the new keys)
    sums = None
    if plan.dynamic and (selection is None or plan.landmarks is not None or plan.compensation
                         or summaries is not None):
        summaries = summarize(plan, k_cache, v_cache, lens, block_table, summaries,
                              None if summaries is None else lq)
        landmarks, sums = summaries.landmarks, summaries.compensation
        if plan.topk is not None and selection is None:
            t = plan.topk
            rows = (lq + t.block - 2) // t.block + 1
            # left padding: the selection kernels read the rows (first, count) of keys and queries
            q_rows = None
            if leftpad is not None:
                q_rows = torch.full((b, 2), lq, dtype=torch.int32, device=q.device)
                q_rows[:, 0] = 0
            selection = select(q, summaries.topk, t.n, t.block, cap, rows, t.minmax, t.causal, lens=lens,
                               num_blocks=-(-cap // t.block), q_rows=q_rows)
    config = config or decode_config(plan, d, lq, interpret)
    if splits is None:
        tiles = _tiles(plan, cap, lq, config[1], h, hk)
        want = -(-4 * _sm_count(q.device) // max(1, b * h * -(-lq // config[0])))
        splits = max(1, min(want, -(-tiles // 4), 256))
    o_part = torch.empty((splits, b, h, lq, dv), device=q.device, dtype=torch.float32)
    l_part = torch.empty((splits, b, h, lq), device=q.device, dtype=torch.float32)
    kv = k_cache if block_table is None else k_cache.permute(0, 2, 1, 3)  # shapes only: [., Hk, ., D]
    run = _Launch(plan, q, kv, v_cache if block_table is None else v_cache.permute(0, 2, 1, 3), interpret,
                  config, None)
    run.lk = cap
    run.meta.update(VARLEN=2 if leftpad is None else 4, PAGE=k_cache.shape[1] if block_table is not None else 0)
    tensors, strides = dynamic_tensors(selection, landmarks, sums, forward=True)
    tensors.update(Q=q, K=k_cache, V=v_cache, O=o_part, LSE=l_part, FLAG=torch.zeros(1, dtype=torch.int32,
                                                                                   device=q.device),
                   CU_Q=None, CU_K=lens, BT=block_table)
    # the workspaces' part axis comes first, last in the kernel's stride group
    strides.update((name, (*t.stride()[1:], t.stride(0))) for name, t in (("O", o_part), ("LSE", l_part)))
    if block_table is not None:  # pages [P, PAGE, Hk, D], no batch stride: a position's page comes from the table
        strides.update((name, (0, t.stride(2), t.stride(1), t.stride(3), t.stride(0)))
                       for name, t in (("K", k_cache), ("V", v_cache)))
        strides["BT"] = (block_table.stride(0),)
    run.run("fwd", lq, h * splits, tensors, dict(H=h, Hk=hk, Lq=lq, Lk=cap, SPLIT=splits, qk_scale=scale * LOG2E),
            strides, guard=True)
    merge_kernel[(triton.cdiv(lq, 16), h, b)](o_part, l_part, out, lse, *o_part.stride(), *l_part.stride(),
                                             *out.stride(), *lse.stride(), lq, splits,
                                             HEAD_DIM_V=dv, BLOCK_DV=_pow2(max(dv, 16)), BLOCK=16)
    return out, lse, selection


@triton.jit(do_not_specialize=["rows", "PARTS"])
def merge_kernel(OP, LP, O, LSE, stride_pp, stride_pb, stride_ph, stride_pm, stride_pd,
                 stride_lp, stride_lb, stride_lh, stride_lm,
                 stride_ob, stride_oh, stride_om, stride_od, stride_sb, stride_sh, stride_sm,
                 rows, PARTS, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK: tl.constexpr):
    # out = sum_p exp(lse_p - lse) o_p with lse = log sum_p exp(lse_p); parts that saw no key
    # have lse_p = -inf and weigh 0; a row no part saw gets out 0, lse -inf (never NaN)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_DV)
    ok = offs < rows
    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    for p in range(0, PARTS):
        lp = tl.load(LP + p * stride_lp + b * stride_lb + h * stride_lh + offs * stride_lm, mask=ok,
                     other=float("-inf"))
        m = tl.maximum(m, lp)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK, BLOCK_DV], dtype=tl.float32)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for p in range(0, PARTS):
        lp = tl.load(LP + p * stride_lp + b * stride_lb + h * stride_lh + offs * stride_lm, mask=ok,
                     other=float("-inf"))
        w = tl.exp(lp - m_safe)
        used = ok[:, None] & (offs_d[None, :] < HEAD_DIM_V) & (w[:, None] > 0)
        op = tl.load(OP + p * stride_pp + b * stride_pb + h * stride_ph + offs[:, None] * stride_pm
                     + offs_d[None, :] * stride_pd, mask=used, other=0.0)
        acc += w[:, None] * op
        total += w
    seen = total > 0
    out = acc / tl.where(seen, total, 1.0)[:, None]
    lse = tl.where(seen, m_safe + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
    tl.store(O + b * stride_ob + h * stride_oh + offs[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=ok[:, None] & (offs_d[None, :] < HEAD_DIM_V))
    tl.store(LSE + b * stride_sb + h * stride_sh + offs * stride_sm, lse, mask=ok)

