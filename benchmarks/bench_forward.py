"""Forward-pass benchmark: sparsedsl vs FlexAttention vs dense SDPA, in one process.

    python benchmarks/bench_forward.py [--lengths 16384 65536] [--patterns causal s2 ...] [--out docs/benchmarks.md]

Times are medians of triton.testing.do_bench. FlexAttention is torch.compile'd and
its BlockMask is built once, outside the timed region (build time reported).
"Useful TFLOP/s" counts only the visible (query, key) pairs: 4 * D FLOPs each.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsedsl  # noqa: E402

PATTERNS = {
    "causal": ("pattern causal_() { causal }", {}, 16),
    "sink128+window1024": ("patterns/streaming_llm.attn", dict(sink=128, window=1024), 16),
    "S2 local16+stride8 b64": ("patterns/s2_attention.attn", dict(pattern="s2_attention"), 16),
    "dilated(1024,4)": ("pattern dilated_() { dilated(1024, 4) }", {}, 16),
    "longformer w512+g64": ("patterns/longformer.attn", dict(pattern="longformer", window=512, num_global=64), 16),
    "duo 8 retrieval/16": ("patterns/duo_attention.attn", dict(pattern="duo_attention", retrieval=8, sink=64,
                                                              recent=1024), 16),
    "GQA sink128+window1024 Hk=4": ("patterns/streaming_llm.attn", dict(sink=128, window=1024), 4),
    # block-diagonal chunks (issue 13): Llama 4's chunked attention, as an atom and as where(...), and
    # LongLoRA's shifted groups on half the heads
    "chunked 2048 (Llama 4)": ("pattern chunked_() { causal & chunked(2048) }", {}, 16),
    "where q//2048 == k//2048": ("pattern where_chunks() { causal & where(q // 2048 == k // 2048) }", {}, 16),
    "LongLoRA shifted 2048": ("pattern longlora() {\n heads[0:H // 2] => causal & where(q // 2048 == k // 2048)\n"
                              " heads[*] => causal & where((q + 1024) // 2048 == (k + 1024) // 2048)\n}", {}, 16),
    # the same mask as one branch: the shift is a head-dependent chunk offset (0 or 1024)
    "LongLoRA head offset 2048": ("pattern longlora_h() { causal & chunked(2048, h // (H // 2) * 1024) }", {}, 16),
    # BigBird (blocks of 64: window 3, global 2, hashed random 3/64): the random blocks have no
    # closed form; the kernels test them block by block (a probe) and skip the tiles without any
    "BigBird b64 bidirectional": ("patterns/bigbird.attn", {}, 16),
    "BigBird b64 causal": ("patterns/bigbird.attn", dict(autoregressive=True), 16),
}


def pick_patterns(names: list[str]) -> list[str]:
    """PATTERNS' names for the command line's: each an exact name or the start of exactly one
    (case and spaces ignored), so that `--patterns chunked where longloras` needs no quoting."""
    def bare(s):
        return s.lower().replace(" ", "")

    picked = []
    for want in names:
        hits = [n for n in PATTERNS if n == want] or [n for n in PATTERNS if bare(n).startswith(bare(want))]
        if len(hits) != 1:
            raise SystemExit(f"--patterns {want!r}: {'no' if not hits else 'more than one'} pattern matches "
                             f"(choose from: {', '.join(PATTERNS)})")
        picked.append(hits[0])
    return picked


def timed_block_mask(p, L, h, hk):
    """FlexAttention's BlockMask for the pattern, and its build time in ms (after a warm-up build).
    Built by torch.compile, or eagerly where inductor fails on the mask (torch 2.11 types the
    index arithmetic of BigBird's hash as int32 at 16K and rejects its constant 2654435761)."""
    compile = True
    try:
        p.to_flex_block_mask(L, L, h, hk, device="cuda", compile=True)  # warm the compile
    except Exception as e:  # (inductor's own error types)
        print(f"  flex: the BlockMask does not compile ({type(e).__name__}); built eagerly", flush=True)
        compile = False
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    bm = p.to_flex_block_mask(L, L, h, hk, device="cuda", compile=compile)
    torch.cuda.synchronize()
    return bm, (time.perf_counter() - t0) * 1e3


def raise_recompile_limit(n=64):
    """Every pattern (mask_mod) and shape is one more FlexAttention compile; past dynamo's limit
    (8) flex_attention falls back to eager, which materialises the scores: 100x slower, and OOM at 64K."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(n, getattr(torch._dynamo.config, name)))


def bench(fn, warmup=25, rep=100):
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS))
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args(argv)
    args.patterns = pick_patterns(args.patterns)
    assert torch.cuda.is_available(), "the benchmark needs a CUDA GPU"
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    raise_recompile_limit()
    flex = torch.compile(flex_attention, dynamic=False)
    dev = torch.device("cuda")
    dtype = torch.bfloat16
    rows = []
    gpu = torch.cuda.get_device_name()
    import triton

    versions = f"{gpu}, torch {torch.__version__}, triton {triton.__version__}"
    print(f"# {versions}", flush=True)
    for L in args.lengths:
        for name in args.patterns:
            src, params, hk = PATTERNS[name]
            h, d = args.heads, args.dim
            p = sparsedsl.compile_pattern(src, **params)
            gen = torch.Generator(device=dev).manual_seed(0)
            q = torch.randn(1, h, L, d, device=dev, dtype=dtype, generator=gen)
            k = torch.randn(1, hk, L, d, device=dev, dtype=dtype, generator=gen)
            v = torch.randn(1, hk, L, d, device=dev, dtype=dtype, generator=gen)
            density = p.density(L, L, h, hk, device="cuda")
            useful = 4 * d * density * h * L * L
            p(q, k, v)  # compile + autotune
            torch.cuda.synchronize()
            t_ours = bench(lambda: p(q, k, v))
            row = dict(L=L, pattern=name, density=density, ours=t_ours, flex=math.nan, build=math.nan,
                       cudnn=math.nan, flash=math.nan, err=math.nan)
            if not args.no_flex:
                # a fresh dynamo state per pattern: torch 2.11's guard builder fails (IndexError in
                # TYPE_MATCH) on the third mask_mod compiled in one process
                torch._dynamo.reset()
                try:
                    bm, row["build"] = timed_block_mask(p, L, h, hk)
                    gqa = hk != h
                    ref = flex(q, k, v, block_mask=bm, enable_gqa=gqa)
                    row["flex"] = bench(lambda: flex(q, k, v, block_mask=bm, enable_gqa=gqa))
                    out = p(q, k, v)
                    row["err"] = float((out.float() - ref.float()).abs().max())
                except Exception as e:  # FlexAttention failing leaves the row's Flex cells empty
                    print(f"  flex: {type(e).__name__}: {str(e)[:200]}", flush=True)
            if True:  # dense causal SDPA: the hardware reference line
                kk = k.repeat_interleave(h // hk, 1) if hk != h else k
                vv = v.repeat_interleave(h // hk, 1) if hk != h else v
                for key, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
                    try:
                        with sdpa_kernel(backend):
                            fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=True)  # noqa: E731
                            fn()
                            row[key] = bench(fn)
                    except Exception as e:  # a backend missing on this build
                        print(f"  sdpa {key}: {type(e).__name__}: {e}", flush=True)
            row["tflops"] = useful / (row["ours"] * 1e-3) / 1e12
            row["flex_tflops"] = useful / (row["flex"] * 1e-3) / 1e12
            row["ratio"] = row["flex"] / row["ours"]
            rows.append(row)
            print(f"L={L:6d} {name:28s} dens={density:.4f} ours={row['ours']:8.3f}ms ({row['tflops']:5.0f} TF/s) "
                  f"flex={row['flex']:8.3f}ms ({row['flex_tflops']:5.0f}) x{row['ratio']:.2f} build={row['build']:.1f}ms "
                  f"sdpa-causal cudnn={row['cudnn']:.3f} flash={row['flash']:.3f} maxdiff={row['err']:.3g}", flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    table = ["| L | pattern | density | sparsedsl ms | useful TFLOP/s | FlexAttention ms | Flex useful TFLOP/s | "
             "speed-up vs Flex | Flex BlockMask build ms | SDPA causal cuDNN ms | SDPA causal flash ms | max abs diff vs Flex |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['L'] // 1024}K | {r['pattern']} | {r['density']:.3f} | {r['ours']:.3f} | {r['tflops']:.0f} | "
                     f"{r['flex']:.3f} | {r['flex_tflops']:.0f} | {r['ratio']:.2f}x | {r['build']:.1f} | "
                     f"{r['cudnn']:.3f} | {r['flash']:.3f} | {r['err']:.2g} |")
    geo = math.exp(sum(math.log(r["ratio"]) for r in rows if r["ratio"] == r["ratio"]) / max(1, len(rows)))
    text = f"Forward, B=1, H={args.heads}, D={args.dim}, bf16 — {versions}\n\n" + "\n".join(table) + \
        f"\n\nGeometric mean speed-up over FlexAttention: {geo:.2f}x\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
