"""Needles in a long context, at the attention level.

A 128K-token sequence whose keys are noise except a few planted key blocks that
match the last queries' direction (the "needles"), each carrying a distinctive
value. Dense attention of the last queries lands on the needles. A streaming
pattern (sink + window) cannot see them; adding top-k block selection finds
them from the block summaries and recovers dense attention's output:

    python examples/long_context_needle.py                    # CUDA, L = 131072
    python examples/long_context_needle.py --device cpu --length 4096

Prints, for the last query block, each pattern's error against dense attention,
the mean value of its output there (the needles' values are 1.0), whether the selection
found every planted block, and the time of each call.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsedsl  # noqa: E402

STREAMING = "pattern streaming() { causal & (sink(64) | window(1024)) }"
RETRIEVAL = "pattern retrieval() { causal & (sink(64) | window(1024) | topk(16, block=64)) }"


def make_inputs(length, heads, dim, needles, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, length, dim, generator=g)
    k = torch.randn(1, heads, length, dim, generator=g)
    v = torch.randn(1, heads, length, dim, generator=g) * 0.1
    direction = torch.randn(1, heads, 1, dim, generator=g)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    q[:, :, -64:] += 9.0 * direction  # the last queries ask about one topic
    blocks = [int(length * f) // 64 for f in torch.linspace(0.1, 0.7, needles).tolist()]
    for j in blocks:  # keys on that topic (logits ~ +12 above the noise); value +1 in every dimension
        k[:, :, j * 64:(j + 1) * 64] = 15.0 * direction + 0.3 * torch.randn(1, heads, 64, dim, generator=g)
        v[:, :, j * 64:(j + 1) * 64] = 1.0
    return (t.to(device=device, dtype=dtype) for t in (q, k, v)), blocks


def timed(fn, device):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=131072)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--needles", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    (q, k, v), blocks = make_inputs(args.length, args.heads, args.dim, args.needles, args.device, dtype)
    last = slice(args.length - 64, args.length)
    # dense attention of the last query block only (the rows the needles are planted for)
    dense, t_dense = timed(lambda: torch.nn.functional.scaled_dot_product_attention(
        q[:, :, last], k, v, attn_mask=torch.ones(64, args.length, dtype=torch.bool, device=args.device)
        .tril(args.length - 64)), args.device)
    print(f"L={args.length}, H={args.heads}, D={args.dim}, {dtype}, {args.device}; needles in key blocks {blocks}")
    print(f"dense attention (last 64 queries only): {t_dense:.2f} ms; its output's mean value "
          f"{dense.float().mean():.3f} (needle values are 1.0, the rest ~0)")
    results = {}
    for name, src in (("sink+window", STREAMING), ("sink+window+topk", RETRIEVAL)):
        p = sparsedsl.compile_pattern(src)
        out, ms = timed(lambda: p(q, k, v), args.device)  # the whole sequence (every query)
        err = (out[:, :, last].float() - dense.float()).abs().mean().item()
        results[name] = err
        line = f"{name:>17}: whole sequence {ms:8.2f} ms; last block: mean |out - dense| = {err:.3f}, " \
               f"mean value {out[:, :, last].float().mean():.3f}"
        if p.is_dynamic:
            sel = p.select_blocks(q, k)[0, :, -1]  # the last query group's blocks, every head
            found = all(all(j in row for j in blocks) for row in sel.tolist())
            line += f"; selection found every needle in every head: {found}"
        print(line)
    print("top-k recovers the needles" if results["sink+window+topk"] < 0.1 < results["sink+window"]
          else "unexpected: see the errors above")
    return results


if __name__ == "__main__":
    main()
