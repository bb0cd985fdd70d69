"""Sharded decoding: each sequence's KV cache split over the ranks of a group;
every rank attends the same new queries over its part, at the part's global
positions, and one all-gather of the partial (out, lse) merges them."""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import InputError
from ..runtime import inputs
from .comm import Group
from .partial import check_backend, check_kernel_inputs, compute_dtype, merge, partial_attention


def _ints(name: str, x, batch: int) -> list[int]:
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool or x.shape != (batch,):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"sparsedsl.distributed.decode: {name} must be an integer tensor [{batch}], got {shape}")
    return x.tolist()


def decode(p, q, k_cache, v_cache, cache_seqlens, cache_offsets, seqlens, *, group=None, scale=None,
           return_lse: bool = False, backend: str = "auto"):
    """Decoding over a KV cache split across the ranks of `group` (None: the default group).

    Every rank passes the same new queries q [B, H, Lq, D] (sequence b's at positions
    seqlens[b] - Lq .. seqlens[b] - 1) and its part of the cache, k_cache [B, Hk, S, D]
    and v_cache [B, Hk, S, Dv]: rows [0, cache_seqlens[b]) of entry b hold the keys at
    positions cache_offsets[b] + j. seqlens [B] counts each sequence's keys (the new
    ones included); the ranks' parts must split [0, seqlens[b]) (not checked). Integer
    tensors [B], read on the host. Returns out [B, H, Lq, Dv] (and lse [B, H, Lq]), the
    same on every rank, equal to single-process decoding over the whole cache. A
    static pattern; no gradient (a step of generation)."""
    what = "sparsedsl.distributed.decode"
    backend = check_backend(backend)
    g = Group.of(group, what)
    if p.is_dynamic:
        raise InputError(f"{what}: pattern {p.name!r} depends on the data; sharded decoding takes static patterns")
    scale = inputs.check_qkv(q, k_cache, v_cache, scale)
    p.check(q.shape[1], k_cache.shape[1])
    if backend == "triton":
        check_kernel_inputs(q)
    b, lq = q.shape[0], q.shape[2]
    lens, offsets, totals = (_ints(n, x, b) for n, x in (("cache_seqlens", cache_seqlens),
                                                           ("cache_offsets", cache_offsets), ("seqlens", seqlens)))
    for i in range(b):
        if not (0 <= lens[i] <= k_cache.shape[2] and offsets[i] >= 0 and offsets[i] + lens[i] <= totals[i]
                and lq <= totals[i]):
            raise InputError(f"{what}: entry {i} holds {lens[i]} keys (at most {k_cache.shape[2]}) from position "
                             f"{offsets[i]} of a sequence of {totals[i]} with {lq} new queries: the keys must lie "
                             "in the sequence and the queries be its last positions")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    cd, dv = compute_dtype(q.dtype), v_cache.shape[-1]
    with torch.no_grad():
        parts = [partial_attention(p, q[i:i + 1], k_cache[i:i + 1, :, :lens[i]], v_cache[i:i + 1, :, :lens[i]],
                                   ((totals[i] - lq, lq),), ((offsets[i], lens[i]),), scale, backend, totals[i])
                 for i in range(b)]
        mine = torch.cat([torch.cat([o, lse.unsqueeze(-1)], dim=-1) for o, lse in parts]) if b else \
            q.new_zeros((0, q.shape[1], lq, dv + 1), dtype=cd)
        every = [torch.empty_like(mine) for _ in range(g.world)]
        dist.all_gather(every, mine.contiguous(), group=g.group)
        out = q.new_zeros((b, q.shape[1], lq, dv), dtype=cd)
        lse = q.new_full((b, q.shape[1], lq), float("-inf"), dtype=cd)
        for part in every:  # in rank order
            out, lse = merge(out, lse, part[..., :dv], part[..., dv])
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
