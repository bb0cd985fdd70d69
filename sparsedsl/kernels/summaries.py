"""Block summaries of a key cache, for data-dependent patterns (issue 5): per key
block, the mean key (landmarks, topk(score=mean)) and the per-dimension min and
max (topk(score=minmax)), in float32. Hand-written: they do not depend on the
pattern, only on its block size.

Incremental: appending keys to a cache changes only its last (partial) block and
adds new ones, so `block_stats(..., out=stats, first_block=p // block)` after an
append at position p recomputes those blocks only."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["Lk", "FIRST"])
def block_stats_kernel(K, MEAN, KMIN, KMAX, stride_kb, stride_kh, stride_kn, stride_kd, Lk, FIRST,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    # one program per (key block FIRST + pid, KV head, batch entry); outputs [B, Hk, nb, BLOCK_D]
    j = FIRST + tl.program_id(0)
    hk = tl.program_id(1)
    b = tl.program_id(2)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    base = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    total = tl.zeros([BLOCK_D], dtype=tl.float32)
    lo = tl.full([BLOCK_D], float("inf"), dtype=tl.float32)
    hi = tl.full([BLOCK_D], float("-inf"), dtype=tl.float32)
    for c in range(0, BLOCK, CHUNK):
        inner = c + tl.arange(0, CHUNK)
        keys = j.to(tl.int64) * BLOCK + inner
        ok = (inner < BLOCK) & (keys < Lk)
        x = tl.load(base + keys[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                    mask=ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        total += tl.sum(x, 0)
        lo = tl.minimum(lo, tl.min(tl.where(ok[:, None], x, float("inf")), 0))
        hi = tl.maximum(hi, tl.max(tl.where(ok[:, None], x, float("-inf")), 0))
    count = tl.maximum(tl.minimum(Lk - j * BLOCK, BLOCK), 1).to(tl.float32)
    row = ((b * tl.num_programs(1) + hk).to(tl.int64) * ((Lk + BLOCK - 1) // BLOCK) + j) * BLOCK_D + offs_d
    tl.store(MEAN + row, total / count)
    tl.store(KMIN + row, lo)
    tl.store(KMAX + row, hi)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


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
    todo = nb - first_block
    if todo > 0 and b * hk > 0:
        bd = _pow2(d)
        # the kernel writes BLOCK_D columns per row: pad d up to a power of two in a scratch
        # tensor unless it already is one
        dst = out if bd == d else tuple(torch.empty((b, hk, nb, bd), device=k.device, dtype=torch.float32)
                                        for _ in range(3))
        block_stats_kernel[(todo, hk, b)](k, *dst, *k.stride(), lk, first_block, HEAD_DIM=d, BLOCK_D=bd,
                                          BLOCK=block, CHUNK=min(64, _pow2(block)))
        if dst is not out:
            for o, t in zip(out, dst):
                o[:, :, first_block:] = t[:, :, first_block:, :d]
    return out
