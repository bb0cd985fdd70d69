"""Scoring kernel variants at the decoding shape (B=8, H=32, Hk=8, D=128, block 64,
one group per sequence): time and agreement with score_kernel's keys."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sparsedsl.kernels import selection as S  # noqa: E402


def main():
    b, h, hk, d, blk = 8, 32, 8, 128, 64
    for L in (131072, 1 << 20):
        nb = L // blk
        g = torch.Generator(device="cuda").manual_seed(0)
        qbar = torch.randn(b, h, 1, d, device="cuda", generator=g)
        s1 = torch.randn(b, hk, nb, d, device="cuda", generator=g)
        lens = torch.full((b,), L, dtype=torch.int32, device="cuda")
        ref = torch.empty((b, h, 1, nb), device="cuda", dtype=torch.int64)
        common = lambda keys: (qbar, s1, s1, keys, lens, *qbar.stride()[:3], *s1.stride()[:3],  # noqa: E731
                               *keys.stride()[:3], 1, L, 1, 0, nb, h // hk)
        meta = dict(HEAD_DIM=d, BLOCK_D=d, BLOCK=blk, CAUSAL=True, MINMAX=False, PER_SEQ=True)

        def old(bj=64, w=4):
            S.score_kernel[(triton.cdiv(nb, bj), hk, b)](*common(ref), **meta, BLOCK_R=16, BLOCK_J=bj, num_warps=w)
        old()
        gbytes = s1.numel() * 4 / 1e9
        for bj, w in ((64, 4), (128, 8)):
            ms = triton.testing.do_bench(lambda: old(bj, w), return_mode="median")
            print(f"L={L} score_kernel BJ={bj} w={w}: {ms * 1e3:.0f} us, {gbytes / ms * 1e3:.0f} GB/s", flush=True)
        out = torch.empty_like(ref)
        few = (qbar, s1, s1, out, lens, *qbar.stride()[:3], *s1.stride()[:3], *out.stride()[:3], 1, L, 0, nb, h // hk)
        ids = lambda t: torch.topk(t, 16).values & 0xFFFFFFFF  # noqa: E731
        for bj, tiles, w, st in ((32, 4, 4, 3), (64, 4, 4, 3), (64, 8, 8, 3), (32, 8, 4, 4), (16, 8, 4, 4),
                                 (64, 2, 4, 2), (128, 2, 8, 2)):
            def new():
                S.score_few_kernel[(triton.cdiv(nb, bj * tiles), hk, b)](*few, **meta, BLOCK_J=bj, TILES=tiles,
                                                                         num_warps=w, num_stages=st)
            try:
                out.fill_(0)
                new()
                same = (ids(out) == ids(ref)).float().mean().item()
                ms = triton.testing.do_bench(new, return_mode="median")
                print(f"L={L} few BJ={bj} T={tiles} w={w} s={st}: {ms * 1e3:.0f} us, "
                      f"{gbytes / ms * 1e3:.0f} GB/s, same top-16 blocks {same:.4f}", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"few BJ={bj} failed: {type(e).__name__} {str(e)[:300]}", flush=True)
        copy = torch.empty_like(s1)
        ms = triton.testing.do_bench(lambda: copy.copy_(s1), return_mode="median")
        print(f"L={L} copy of the summaries: {ms * 1e3:.0f} us, {2 * gbytes / ms * 1e3:.0f} GB/s (read + write)")


if __name__ == "__main__":
    main()
