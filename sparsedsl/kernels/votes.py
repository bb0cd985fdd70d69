"""topk(score=attention(window, pool)) on the GPU (SnapKV), with the meaning of
reference/select.py attention_block_scores: the block scores [B, H, nb] float32 from
the softmax probabilities the call's last m = min(window, Lq) queries give the prefix
keys 0 .. P - 1 (P = Lk - m), summed over those queries, max-pooled and maximised per block.

Three kernels touch only the window's queries (m x Lk logits per head, float32, ieee
products): the window rows' log-sum-exp over their causal keys; the votes, one program
per key tile; the block scores, one program per tile of blocks. Max-pooling then the
block maximum is one maximum over the votes of [j*block - pool//2, end_j + pool - 1 -
pool//2] clipped to the prefix, end_j the block's last prefix key. Fixed-size outputs, no
host synchronisation; the selection from the scores is reference/select.py select_given
(torch operations on the device), as for given scores."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .summaries import _pow2


@triton.jit
def _entry(QROWS, KROWS, b, Lq, Lk, PER_ENTRY: tl.constexpr):
    # (first query row, Lq, first key row, Lk) of batch entry b; PER_ENTRY: QROWS and KROWS hold
    # each entry's (first row, length), a padded or packed batch's
    if PER_ENTRY:
        return (tl.load(QROWS + 2 * b).to(tl.int64), tl.load(QROWS + 2 * b + 1).to(tl.int64),
                tl.load(KROWS + 2 * b).to(tl.int64), tl.load(KROWS + 2 * b + 1).to(tl.int64))
    return 0, Lq.to(tl.int64), 0, Lk.to(tl.int64)


@triton.jit
def _window(Q, LSE, QROWS, KROWS, b, h, t, stride_qb, stride_qh, stride_qm, stride_qd, stride_lb, stride_lh,
            Lq, Lk, W, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
            PER_ENTRY: tl.constexpr):
    # window rows i = t*BLOCK_M + [0, BLOCK_M) of entry b (m = min(W, Lq) rows, its last queries):
    # (q [BM, BD] float32, positions Lk - m + i, row ok, LSE pointers, first key row, Lk, P = Lk - m)
    qs, lq, ks, lk = _entry(QROWS, KROWS, b, Lq, Lk, PER_ENTRY)
    m = tl.minimum(W, lq)
    i = t * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = i < m
    offs_d = tl.arange(0, BLOCK_D)
    x = tl.load(Q + b * stride_qb + h * stride_qh + (qs + lq - m + i)[:, None] * stride_qm
                + offs_d[None, :] * stride_qd, mask=ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    return x.to(tl.float32), lk - m + i, ok, LSE + b * stride_lb + h * stride_lh + i, ks, lk, lk - m


@triton.jit
def _logits(K, x, keys, b, hk, ks, lk, stride_kb, stride_kh, stride_kn, stride_kd, scale,
            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    # x [BM, BD] . k[keys]^T * scale: [BM, BN] float32 (keys past lk read as 0)
    offs_d = tl.arange(0, BLOCK_D)
    kt = tl.load(K + b * stride_kb + hk * stride_kh + (ks + keys)[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                 mask=(keys[None, :] < lk) & (offs_d[:, None] < HEAD_DIM), other=0.0).to(tl.float32)
    return tl.dot(x, kt, input_precision="ieee") * scale


@triton.jit(do_not_specialize=["Lq", "Lk", "W", "G"])
def window_lse_kernel(Q, K, LSE, QROWS, KROWS, stride_qb, stride_qh, stride_qm, stride_qd,
                      stride_kb, stride_kh, stride_kn, stride_kd, stride_lb, stride_lh, Lq, Lk, W, G, scale,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      PER_ENTRY: tl.constexpr):
    # program (window row tile t, h, b): the natural log-sum-exp of each window row's logits over
    # its causal keys 0 .. position (online softmax, float32); nothing when the prefix is empty
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    x, pos, ok, dst, ks, lk, prefix = _window(Q, LSE, QROWS, KROWS, b, h, tl.program_id(0), stride_qb, stride_qh,
                                              stride_qm, stride_qd, stride_lb, stride_lh, Lq, Lk, W,
                                              HEAD_DIM, BLOCK_D, BLOCK_M, PER_ENTRY)
    if prefix > 0:
        mx = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        # (every valid row sees key 0 in the first tile, so its max is finite from then on)
        for start in range(0, tl.minimum(tl.max(tl.where(ok, pos, 0)) + 1, lk), BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            s = _logits(K, x, keys, b, h // G, ks, lk, stride_kb, stride_kh, stride_kn, stride_kd, scale,
                        HEAD_DIM, BLOCK_D)
            s = tl.where(keys[None, :] <= pos[:, None], s, float("-inf"))
            new = tl.maximum(mx, tl.max(s, 1))
            total = total * tl.exp(mx - new) + tl.sum(tl.exp(s - new[:, None]), 1)
            mx = new
        tl.store(dst, mx + tl.log(total), mask=ok)


@triton.jit(do_not_specialize=["Lq", "Lk", "W", "G"])
def votes_kernel(Q, K, LSE, VOTES, QROWS, KROWS, stride_qb, stride_qh, stride_qm, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd, stride_lb, stride_lh, stride_vb, stride_vh,
                 Lq, Lk, W, G, scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, PER_ENTRY: tl.constexpr):
    # program (key tile, h, b): each prefix key's vote, the sum over the window rows of
    # exp(logit - row lse) (its softmax probability); keys past the prefix are not written
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    _, lq, _, lk = _entry(QROWS, KROWS, b, Lq, Lk, PER_ENTRY)
    prefix = lk - tl.minimum(W, lq)
    if tl.program_id(0) * BLOCK_N < prefix:
        total = tl.zeros([BLOCK_N], dtype=tl.float32)
        for t in range(0, tl.cdiv(tl.minimum(W, lq), BLOCK_M)):
            x, pos, ok, src, ks, lk, prefix = _window(Q, LSE, QROWS, KROWS, b, h, t, stride_qb, stride_qh,
                                                      stride_qm, stride_qd, stride_lb, stride_lh, Lq, Lk, W,
                                                      HEAD_DIM, BLOCK_D, BLOCK_M, PER_ENTRY)
            lse = tl.load(src, mask=ok, other=0.0)
            s = _logits(K, x, keys, b, h // G, ks, lk, stride_kb, stride_kh, stride_kn, stride_kd, scale,
                        HEAD_DIM, BLOCK_D)
            seen = ok[:, None] & (keys[None, :] <= pos[:, None])
            total += tl.sum(tl.where(seen, tl.exp(s - lse[:, None]), 0.0), 0)
        tl.store(VOTES + b * stride_vb + h * stride_vh + keys, total, mask=keys < prefix)


@triton.jit(do_not_specialize=["Lq", "Lk", "W", "NB", "LEFT", "RIGHT"])
def block_scores_kernel(VOTES, SCORES, QROWS, KROWS, stride_vb, stride_vh, stride_sb, stride_sh,
                        Lq, Lk, W, NB, LEFT, RIGHT, BLOCK: tl.constexpr, BLOCK_J: tl.constexpr,
                        PER_ENTRY: tl.constexpr):
    # program (tile of key blocks, h, b): block j's score, the largest vote of the prefix keys
    # [j*BLOCK - LEFT, end_j + RIGHT] (end_j its last prefix key; LEFT = pool // 2, RIGHT =
    # pool - 1 - LEFT): max-pooling then the block maximum; -inf for a block without a prefix key
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    js = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    _, lq, _, lk = _entry(QROWS, KROWS, b, Lq, Lk, PER_ENTRY)
    prefix = lk - tl.minimum(W, lq)
    start = js.to(tl.int64) * BLOCK
    has = start < prefix
    lo = tl.maximum(start - LEFT, 0)
    hi = tl.minimum(tl.minimum(start + BLOCK, prefix) + RIGHT, prefix)  # exclusive
    best = tl.full([BLOCK_J], float("-inf"), dtype=tl.float32)
    for o in range(0, tl.max(tl.where(has, hi - lo, 0))):
        idx = lo + o
        v = tl.load(VOTES + b * stride_vb + h * stride_vh + idx, mask=has & (idx < hi), other=float("-inf"))
        best = tl.maximum(best, v)
    tl.store(SCORES + b * stride_sb + h * stride_sh + js, best, mask=js < NB)


def block_scores(q: torch.Tensor, k: torch.Tensor, window: int, pool: int, block: int, scale: float,
                 kv_len: int | None = None, rows=None) -> torch.Tensor:
    """float32 [B, H, ceil(kv_len / block)]: attention_block_scores of q [B, H, Lq, D] over
    k [B, Hk, Lk, D] (kv_len: Lk, or a packed batch's longest entry). `rows`: a padded or
    packed batch's (q_rows, kv_rows), int32 [B, 2] (first row, length) per entry, each entry
    scored on its own (its blocks from its first key)."""
    b, h, lq, d = q.shape
    hk = k.shape[1]
    kv_len = k.shape[2] if kv_len is None else kv_len
    nb = -(-kv_len // block)
    scores = torch.full((b, h, nb), float("-inf"), device=q.device, dtype=torch.float32)
    w = min(window, lq)
    if scores.numel() == 0 or w == 0:
        return scores
    lse = torch.empty((b, h, w), device=q.device, dtype=torch.float32)
    votes = torch.empty((b, h, kv_len), device=q.device, dtype=torch.float32)
    q_rows, kv_rows = rows if rows is not None else (q, q)  # (unused pointers without rows)
    bm, bn = 16, 64 if d <= 128 else 32
    common = dict(HEAD_DIM=d, BLOCK_D=_pow2(max(d, 16)), BLOCK_M=bm, BLOCK_N=bn, PER_ENTRY=rows is not None)
    qk = (*q.stride(), *k.stride())
    window_lse_kernel[(triton.cdiv(w, bm), h, b)](q, k, lse, q_rows, kv_rows, *qk, *lse.stride()[:2], lq, kv_len,
                                                  window, h // hk, scale, **common)
    votes_kernel[(triton.cdiv(kv_len, bn), h, b)](q, k, lse, votes, q_rows, kv_rows, *qk, *lse.stride()[:2],
                                                  *votes.stride()[:2], lq, kv_len, window, h // hk, scale, **common)
    left = pool // 2
    bj = 64
    block_scores_kernel[(triton.cdiv(nb, bj), h, b)](votes, scores, q_rows, kv_rows, *votes.stride()[:2],
                                                     *scores.stride()[:2], lq, kv_len, window, nb,
                                                     min(left, kv_len), min(pool - 1 - left, kv_len), BLOCK=block,
                                                     BLOCK_J=bj, PER_ENTRY=rows is not None)
    return scores
