"""Top-k block selection on the GPU, with the semantics of reference/select.py:
each query group (the rows of one absolute query block) is scored by its mean
query against every candidate key block (the block mean, or the min/max bound
of score=minmax), and the n best blocks win, ties to the lower block.

Three steps, all with fixed-size outputs and no host synchronisation (a call is
CUDA-graph capturable): a kernel for the group means; a scoring kernel (tiles
of 16+ rows on tensor cores; or, for one or two rows when decoding, a kernel
that streams the summaries once per KV head) that writes one int64 sort key per
(group, block), score in the high half (its
float32 bits made order-preserving) and the complement of the block id in the
low half, so that torch.topk picks the best scores and, among equal scores, the
lower block; then the chosen ids, ascending, -1 for empty slots."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .summaries import _pow2

NO_CANDIDATE = -(1 << 63)
LOW = (1 << 31) - 1
KEY_BUDGET = 1 << 25  # int64 sort keys per scoring pass (256 MiB); longer calls go in row chunks
FEW_ROWS = 2  # up to this many selection rows (decoding), score_few_kernel scores them one by one


@triton.jit
def _floor_div(a, b):
    q = a // b
    return q - ((a % b != 0) & ((a < 0) != (b < 0))).to(q.dtype)


@triton.jit
def _sort_key(score, js, cand):
    # int64 sort keys: the float32 score's bits made order-preserving in the high half, the
    # complement of the block id in the low half (equal scores: the lower block is larger);
    # NO_CANDIDATE where cand is false
    bits = score.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)  # float order as signed integers
    key = ordered * 4294967296 + (0x7FFFFFFF - js).to(tl.int64)
    return tl.where(cand, key, -9223372036854775808)


@triton.jit
def _lengths(LENS, QROWS, b, Lq, Lk, PER_SEQ: tl.constexpr):
    # (first query row, Lq, Lk) of batch entry b. PER_SEQ 0: all alike; 1 (decoding): Lk =
    # LENS[b]; 2 (a padded batch): LENS and QROWS hold each entry's (first row, length) of keys
    # and queries, interleaved (the summaries were taken from the entry's own first key)
    if PER_SEQ == 1:
        return 0, Lq, tl.load(LENS + b)
    elif PER_SEQ == 2:
        return tl.load(QROWS + 2 * b).to(tl.int64), tl.load(QROWS + 2 * b + 1), tl.load(LENS + 2 * b + 1)
    else:
        return 0, Lq, Lk


@triton.jit(do_not_specialize=["Lq", "Lk"])
def group_means_kernel(Q, QBAR, LENS, QROWS, stride_qb, stride_qh, stride_qm, stride_qd,
                       stride_gb, stride_gh, stride_gr, Lq, Lk,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                       PER_SEQ: tl.constexpr):
    # program (r, h, b): the mean of the query rows of group first + r, first = (Lk - Lq) // BLOCK
    # (row i sits at position Lk - Lq + i; lengths per entry: _lengths); float32, 0 for an empty group
    r = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    qs, Lq, Lk = _lengths(LENS, QROWS, b, Lq, Lk, PER_SEQ)
    Q += qs * stride_qm
    off = Lk - Lq
    start = (_floor_div(off, BLOCK) + r) * BLOCK
    offs_d = tl.arange(0, BLOCK_D)
    total = tl.zeros([BLOCK_D], dtype=tl.float32)
    for c in range(0, BLOCK, CHUNK):
        inner = c + tl.arange(0, CHUNK)
        row = start + inner - off
        ok = (inner < BLOCK) & (row >= 0) & (row < Lq)
        x = tl.load(Q + b * stride_qb + h * stride_qh + row.to(tl.int64)[:, None] * stride_qm
                    + offs_d[None, :] * stride_qd, mask=ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        total += tl.sum(x.to(tl.float32), 0)
    count = tl.minimum(start + BLOCK, Lk) - tl.maximum(start, off)
    mean = total / tl.maximum(count, 1).to(tl.float32)
    tl.store(QBAR + b * stride_gb + h * stride_gh + r * stride_gr + offs_d, mean, mask=offs_d < HEAD_DIM)


@triton.jit(do_not_specialize=["Lq", "Lk", "R", "R0", "NB", "G"])
def score_kernel(QBAR, S1, S2, KEYS, LENS, QROWS,
                 stride_gb, stride_gh, stride_gr, stride_sb, stride_sh, stride_sn,
                 stride_kb, stride_kh, stride_kr, Lq, Lk, R, R0, NB, G,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, CAUSAL: tl.constexpr,
                 MINMAX: tl.constexpr, PER_SEQ: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    # program (key-block tile, row tile x KV head, b): rows x = (g, r) over the G query heads of
    # KV head hk and selection rows r in [R0, R0 + R) (the summaries are read once per KV head).
    # S1 = block means (MINMAX: block maxima) and S2 = block minima, [B, Hk, nb, D] float32.
    # KEYS [B, H, R, NB] int64: the sort key of (row, block), NO_CANDIDATE where j is no candidate.
    n_rt = tl.cdiv(G * R, BLOCK_R)
    hk = tl.program_id(1) // n_rt
    xs = (tl.program_id(1) % n_rt) * BLOCK_R + tl.arange(0, BLOCK_R)
    b = tl.program_id(2).to(tl.int64)
    js = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    g = xs // R
    r = R0 + xs % R
    x_ok = xs < G * R
    _, Lq, Lk = _lengths(LENS, QROWS, b, Lq, Lk, PER_SEQ)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    h = (hk * G + g).to(tl.int64)
    qbar = tl.load(QBAR + b * stride_gb + h[:, None] * stride_gh + r.to(tl.int64)[:, None] * stride_gr
                   + offs_d[None, :], mask=x_ok[:, None] & d_ok[None, :], other=0.0)
    s_off = b * stride_sb + hk.to(tl.int64) * stride_sh + js.to(tl.int64)[None, :] * stride_sn + offs_d[:, None]
    s_ok = (js[None, :] < NB) & d_ok[:, None]
    s1 = tl.load(S1 + s_off, mask=s_ok, other=0.0)  # [BD, BJ]
    if MINMAX:  # sum_d max(q_d kmin_d, q_d kmax_d) = max(q, 0) . kmax + min(q, 0) . kmin
        s2 = tl.load(S2 + s_off, mask=s_ok, other=0.0)
        score = tl.dot(tl.maximum(qbar, 0.0), s1, input_precision="ieee") \
            + tl.dot(tl.minimum(qbar, 0.0), s2, input_precision="ieee")
    else:
        score = tl.dot(qbar, s1, input_precision="ieee")
    first = _floor_div(Lk - Lq, BLOCK)
    group = first + r
    nb = (Lk + BLOCK - 1) // BLOCK  # this sequence's key blocks
    cand = (js[None, :] < nb) & (group[:, None] <= (Lk - 1) // BLOCK) & x_ok[:, None]
    if CAUSAL:
        cand = cand & (js[None, :] <= group[:, None])
    key = _sort_key(score, js[None, :], cand)
    dst = KEYS + b * stride_kb + h[:, None] * stride_kh + (r - R0).to(tl.int64)[:, None] * stride_kr + js[None, :]
    tl.store(dst, key, mask=x_ok[:, None] & (js[None, :] < NB))


@triton.jit(do_not_specialize=["Lq", "Lk", "R0", "NB", "G"])
def score_few_kernel(QBAR, S1, S2, KEYS, LENS, QROWS,
                     stride_gb, stride_gh, stride_gr, stride_sb, stride_sh, stride_sn,
                     stride_kb, stride_kh, stride_kr, Lq, Lk, R0, NB, G,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, CAUSAL: tl.constexpr,
                     MINMAX: tl.constexpr, PER_SEQ: tl.constexpr, BLOCK_J: tl.constexpr, TILES: tl.constexpr):
    # score_kernel for one selection row (decoding one token): a program loads a tile of
    # summaries [BLOCK_J, D] once and scores it against each of the G query heads of its KV
    # head (row sums of products in float32), for TILES tiles in a row (the loads pipeline).
    hk = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    _, Lq, Lk = _lengths(LENS, QROWS, b, Lq, Lk, PER_SEQ)
    group = _floor_div(Lk - Lq, BLOCK) + R0
    nb = (Lk + BLOCK - 1) // BLOCK
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for t in range(0, TILES):
        js = (tl.program_id(0) * TILES + t) * BLOCK_J + tl.arange(0, BLOCK_J)
        s_off = b * stride_sb + hk.to(tl.int64) * stride_sh + js.to(tl.int64)[:, None] * stride_sn + offs_d[None, :]
        s_ok = (js[:, None] < NB) & d_ok[None, :]
        s1 = tl.load(S1 + s_off, mask=s_ok, other=0.0)  # [BJ, BD]
        if MINMAX:
            s2 = tl.load(S2 + s_off, mask=s_ok, other=0.0)
        cand = (js < nb) & (group <= (Lk - 1) // BLOCK)
        if CAUSAL:
            cand = cand & (js <= group)
        for g in range(0, G):
            h = (hk * G + g).to(tl.int64)
            qbar = tl.load(QBAR + b * stride_gb + h * stride_gh + R0 * stride_gr + offs_d, mask=d_ok, other=0.0)
            if MINMAX:
                score = tl.sum(tl.maximum(qbar, 0.0)[None, :] * s1 + tl.minimum(qbar, 0.0)[None, :] * s2, 1)
            else:
                score = tl.sum(qbar[None, :] * s1, 1)
            tl.store(KEYS + b * stride_kb + h * stride_kh + js, _sort_key(score, js, cand), mask=js < NB)


def _per_seq(lens, q_rows) -> int:
    """The kernels' PER_SEQ mode: 0 (no lengths), 1 (key counts, decoding), 2 (a padded batch)."""
    return 0 if lens is None else 2 if q_rows is not None else 1


def group_means(q: torch.Tensor, kv_len, block: int, rows: int, lens=None, q_rows=None) -> torch.Tensor:
    """float32 [B, H, rows, D]: the mean query of groups first .. first + rows - 1."""
    b, h, lq, d = q.shape
    out = torch.empty((b, h, rows, d), device=q.device, dtype=torch.float32)
    if out.numel():
        group_means_kernel[(rows, h, b)](q, out, lens if lens is not None else q,
                                         q_rows if q_rows is not None else q, *q.stride(), *out.stride()[:3],
                                         lq, kv_len, HEAD_DIM=d, BLOCK_D=_pow2(d), BLOCK=block,
                                         CHUNK=min(64, _pow2(block)), PER_SEQ=_per_seq(lens, q_rows))
    return out


def select(q: torch.Tensor, stats, n: int, block: int, kv_len: int, rows: int, minmax: bool, causal: bool,
           lens=None, num_blocks: int | None = None, q_rows=None) -> torch.Tensor:
    """int32 [B, H, rows, min(n, blocks)]: the selected key blocks, ascending, -1 for empty slots.
    `stats`: (mean,) or (max, min) block summaries [B, Hk, nb, D] float32; `lens`:
    per-sequence key counts (decoding), else kv_len for all; a padded batch: `lens` and
    `q_rows` are int32 [B, 2], each entry's (first row, length) of keys and queries."""
    b, h, lq, d = q.shape
    hk = stats[0].shape[1]
    nb = stats[0].shape[2] if num_blocks is None else num_blocks
    # a row holds at most nb blocks: the width is min(n, nb) (n may be any size up to 2**62)
    out = torch.full((b, h, rows, min(n, nb)), -1, device=q.device, dtype=torch.int32)
    take = min(n, nb)
    if out.numel() == 0 or take == 0:
        return out
    qbar = group_means(q, kv_len, block, rows, lens, q_rows)
    lens_or_q, q_rows_or_q = (lens if lens is not None else q), (q_rows if q_rows is not None else q)
    s1, s2 = (stats[0], stats[1]) if minmax else (stats[0], stats[0])
    g = h // hk
    step = max(1, KEY_BUDGET // max(1, b * h * nb))
    for r0 in range(0, rows, step):
        rn = min(step, rows - r0)
        keys = torch.empty((b, h, rn, nb), device=q.device, dtype=torch.int64)
        meta = dict(HEAD_DIM=d, BLOCK_D=_pow2(max(d, 16)), BLOCK=block, CAUSAL=causal, MINMAX=minmax,
                    PER_SEQ=_per_seq(lens, q_rows))
        bj = 64 if d <= 128 else 32
        if rn <= FEW_ROWS:  # decoding: one launch per row, summaries streamed at near copy bandwidth
            tiles = 4
            for x in range(rn):
                row = keys[:, :, x:x + 1]
                score_few_kernel[(triton.cdiv(nb, bj * tiles), hk, b)](
                    qbar, s1, s2, row, lens_or_q, q_rows_or_q, *qbar.stride()[:3], *s1.stride()[:3],
                    *row.stride()[:3], lq, kv_len, r0 + x, nb, g, **meta, BLOCK_J=bj, TILES=tiles,
                    num_warps=4, num_stages=3)
        else:
            br = 16 if g * rn <= 16 else 32
            grid = (triton.cdiv(nb, bj), triton.cdiv(g * rn, br) * hk, b)
            score_kernel[grid](qbar, s1, s2, keys, lens_or_q, q_rows_or_q, *qbar.stride()[:3],
                               *s1.stride()[:3], *keys.stride()[:3], lq, kv_len, rn, r0, nb, g, **meta,
                               BLOCK_R=br, BLOCK_J=bj)
        best = torch.topk(keys, take, dim=-1, sorted=False).values
        ids = LOW - (best & 0xFFFFFFFF)
        ids = torch.where(best == NO_CANDIDATE, LOW, ids).sort(dim=-1).values
        out[:, :, r0:r0 + rn, :take] = torch.where(ids == LOW, -1, ids).to(torch.int32)
    return out


def summaries(x: torch.Tensor, block: int, minmax: bool, length: int | None = None,
              **kw) -> tuple[torch.Tensor, ...]:
    """(mean,) or (max, min) float32 [B, H, ceil(length / block), D] of x [B, H, L, D]
    (length: L, or the longest entry of a packed batch)."""
    from .summaries import stats

    b, hx, whole, d = x.shape
    length = whole if length is None else length
    # a padded batch's entries fill only their own blocks: the rest are zeros, never garbage
    alloc = torch.zeros if kw.get("lens") is not None else torch.empty
    parts = tuple(alloc((b, hx, -(-length // block), d), device=x.device, dtype=torch.float32)
                  for _ in range(2 if minmax else 1))
    stats(x, block, (None, *parts) if minmax else parts, minmax=minmax, **kw)  # minmax: no mean
    return (parts[1], parts[0]) if minmax else parts


def prefill_inputs(plan, q, k, v, selection=None, rows=None, lengths=None):
    """(selection, landmarks) of a prefill call of a dynamic plan: the topk
    selection (given, or computed here) and the landmark K/V means. `rows`: a padded
    batch's (q_rows, kv_rows), int32 [B, 2] (first row, length) per entry, each entry
    selected and summarised on its own (its selection rows from its own first group).
    `lengths`: (longest queries, longest keys) when they are not q's and k's (packed_views)."""
    from ..ir.topk import num_groups, padded_groups

    lq, lk = lengths if lengths is not None else (q.shape[2], k.shape[2])
    q_rows, kv_rows = rows if rows is not None else (None, None)
    if plan.topk is not None and selection is None:
        t = plan.topk
        r = num_groups(lq, lk, t.block) if rows is None else padded_groups(lq, t.block)
        selection = select(q, summaries(k, t.block, t.minmax, lk, lens=kv_rows), t.n, t.block, lk, r, t.minmax,
                           t.causal, lens=kv_rows, q_rows=q_rows)
    landmarks = None
    if plan.landmarks is not None:
        landmarks = (summaries(k, plan.landmarks, False, lk, lens=kv_rows)[0],
                     summaries(v, plan.landmarks, False, lk, lens=kv_rows)[0])
    return selection, landmarks


def entry_rows(cu: torch.Tensor) -> torch.Tensor:
    """int32 [S, 2]: each sequence's (first row, length) from cumulative starts [S + 1]."""
    return torch.stack((cu[:-1], cu[1:] - cu[:-1]), 1).contiguous()


def packed_views(q, k, v, cu_q, cu_k, max_q: int, max_k: int):
    """A packed batch as prefill_inputs' arguments: q/k/v ([1, H, T, D] views) as [S, H, T, D]
    with batch stride 0 (each sequence reads the packed tensors from its first row), the rows
    of each sequence, and the longest lengths. Returns (q, k, v, rows, lengths)."""
    s = cu_q.numel() - 1
    q, k, v = (t.expand(s, -1, -1, -1) for t in (q, k, v))
    return q, k, v, (entry_rows(cu_q), entry_rows(cu_k)), (max_q, max_k)
