"""Block summaries of keys (and values), for data-dependent patterns: per block of
`block` positions, the mean (landmarks, topk(score=mean)) and the per-dimension
min and max (topk(score=minmax)), in float32. Hand-written: they do not depend
on the pattern, only on its block size.

Incremental: appending keys to a cache changes only its last (partial) block and
adds new ones, so after an append only the blocks from the old length on are
recomputed (`first_block`, or `new` keys per sequence when decoding)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["L", "NEW"])
def block_stats_kernel(X, MEAN, XMIN, XMAX, LENS, BT,
                       stride_xb, stride_xh, stride_xn, stride_xd, stride_xp, stride_btb,
                       stride_sb, stride_sh, stride_sn, L, NEW,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                       PER_SEQ: tl.constexpr, PAGE: tl.constexpr, MINMAX: tl.constexpr, MEAN_OUT: tl.constexpr):
    # One program per (block, head, batch entry). A sequence holds L positions (PER_SEQ 1: LENS[b];
    # PER_SEQ 2, a padded batch: LENS [B, 2] holds its first row and length);
    # program i recomputes block (max(len - NEW, 0) // BLOCK) + i, the blocks that its last NEW
    # positions touched. PAGE > 0: X is [pages, PAGE, H, D], found through BT [B, pages].
    hx = tl.program_id(1)
    b = tl.program_id(2)
    n = L
    start = 0
    if PER_SEQ == 1:
        n = tl.load(LENS + b)
    elif PER_SEQ == 2:
        start = tl.load(LENS + 2 * b).to(tl.int64)
        n = tl.load(LENS + 2 * b + 1)
    j = tl.maximum(n - NEW, 0) // BLOCK + tl.program_id(0)
    if j * BLOCK < n:
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        base = X + b.to(tl.int64) * stride_xb + hx.to(tl.int64) * stride_xh + start * stride_xn
        total = tl.zeros([BLOCK_D], dtype=tl.float32)
        lo = tl.full([BLOCK_D], float("inf"), dtype=tl.float32)
        hi = tl.full([BLOCK_D], float("-inf"), dtype=tl.float32)
        for c in range(0, BLOCK, CHUNK):
            inner = c + tl.arange(0, CHUNK)
            pos = j.to(tl.int64) * BLOCK + inner
            ok = (inner < BLOCK) & (pos < n)
            if PAGE == 0:
                rows = pos * stride_xn
            else:
                page = tl.load(BT + b.to(tl.int64) * stride_btb + pos // PAGE, mask=ok, other=0).to(tl.int64)
                rows = page * stride_xp + (pos % PAGE) * stride_xn
            x = tl.load(base + rows[:, None] + offs_d[None, :] * stride_xd,
                        mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            total += tl.sum(x, 0)
            if MINMAX:
                lo = tl.minimum(lo, tl.min(tl.where(ok[:, None], x, float("inf")), 0))
                hi = tl.maximum(hi, tl.max(tl.where(ok[:, None], x, float("-inf")), 0))
        count = tl.maximum(tl.minimum(n - j * BLOCK, BLOCK), 1).to(tl.float32)
        out = b.to(tl.int64) * stride_sb + hx.to(tl.int64) * stride_sh + j.to(tl.int64) * stride_sn + offs_d
        if MEAN_OUT:
            tl.store(MEAN + out, total / count, mask=d_ok)
        if MINMAX:
            tl.store(XMIN + out, lo, mask=d_ok)
            tl.store(XMAX + out, hi, mask=d_ok)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def stats(x: torch.Tensor, block: int, out, *, lens=None, new=None, block_table=None, minmax=True) -> None:
    """Fill `out` (float32 [B, H, nb, D] mean[, min, max], contiguous rows; a None mean
    is not computed) with the
    summaries of x [B, H, L, D] (any strides), or of a paged x [pages, PAGE, H, D]
    through block_table [B, pages]. `lens` (int32 [B]): per-sequence lengths (else
    all L), or int32 [B, 2]: a padded batch's (first row, length) per entry; `new`: recompute only the blocks touched by each sequence's last `new`
    positions (None: all)."""
    paged = block_table is not None
    if paged:
        b, hx, d = block_table.shape[0], x.shape[2], x.shape[3]
        length = block_table.shape[1] * x.shape[1]
        xst = (0, x.stride(2), x.stride(1), x.stride(3), x.stride(0))
    else:
        b, hx, length, d = x.shape
        xst = (*x.stride(), 0)
    nb = out[-1].shape[2]
    new = length if new is None else int(new)
    programs = nb if new >= length else min(nb, -(-new // block) + 1)
    if programs <= 0 or b * hx == 0:
        return
    mean, xmin, xmax = (out[0], out[0], out[0]) if not minmax else out
    mean_out = mean is not None
    mean = xmin if mean is None else mean
    block_stats_kernel[(programs, hx, b)](
        x, mean, xmin, xmax, lens if lens is not None else x, block_table if paged else x, *xst,
        block_table.stride(0) if paged else 0, *xmin.stride()[:3], length, new,
        HEAD_DIM=d, BLOCK_D=_pow2(d), BLOCK=block, CHUNK=min(64, _pow2(block)),
        PER_SEQ=0 if lens is None else lens.dim(), PAGE=x.shape[1] if paged else 0, MINMAX=minmax, MEAN_OUT=mean_out)


def block_stats(k: torch.Tensor, block: int, out=None, first_block: int = 0):
    """(mean, min, max) of every key block: float32 [B, Hk, ceil(Lk / block), D],
    the last block over the keys present. k [B, Hk, Lk, D], any strides. With
    `out` (the three tensors of a cache, sized for the new Lk), blocks before
    `first_block` are kept and the rest recomputed."""
    b, hk, lk, d = k.shape
    nb = -(-lk // block)
    if out is None:
        out = tuple(torch.empty((b, hk, nb, d), device=k.device, dtype=torch.float32) for _ in range(3))
    if any(t.shape != (b, hk, nb, d) or not t.is_contiguous() or t.dtype != torch.float32 for t in out):
        raise ValueError(f"block_stats: out must be three contiguous float32 [{b}, {hk}, {nb}, {d}] tensors")
    if nb > first_block:
        stats(k, block, out, new=lk - first_block * block)
    return out
