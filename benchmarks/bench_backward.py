"""Forward+backward benchmark: sparsedsl vs FlexAttention vs dense SDPA, in one process.

    python benchmarks/bench_backward.py [--lengths 16384] [--patterns causal ...] [--out bwd.md]
    python benchmarks/bench_backward.py --varlen-only [--varlen-tokens 65536] [--out bwd_varlen.md]

For each pattern and length: the backward pass alone (torch.autograd.grad on one fixed
forward graph, retain_graph=True) and forward+backward, for sparsedsl's generated kernels,
FlexAttention (torch.compile'd; BlockMask built once outside the timed region, build time
reported) and dense causal SDPA (cuDNN and flash backends, the hardware reference line).
Times are medians of triton.testing.do_bench. "Useful TFLOP/s" counts only the visible
(query, key) pairs: 4 * D FLOPs each for the forward, 2.5x that (10 * D) for the backward,
3.5x (14 * D) for forward+backward. Gradients are compared with FlexAttention's.

--varlen (or --varlen-only) adds a packed variable-length row: a batch of documents of
mixed lengths (fixed seed) run through sparsedsl's varlen call (cu_seqlens) against
FlexAttention with a document mask (and, for causal, torch's flash varlen_attn).

Run one length per process (benchmarks/gpu.sh does): FlexAttention recompiles per shape.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import math
import random
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsedsl  # noqa: E402
from bench_forward import PATTERNS, bench, pick_patterns, raise_recompile_limit, timed_block_mask  # noqa: E402

NAN = math.nan
FWD_FLOPS, BWD_FLOPS, FB_FLOPS = 4, 10, 14          # per visible pair, times D
VARLEN_PATTERNS = ["causal", "sink128+window1024"]


# -- helpers that need no GPU (checked on CPU) -------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS), metavar="PATTERN",
                    help="names from bench_forward.PATTERNS, or the start of one (default: all)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-sdpa", action="store_true")
    ap.add_argument("--no-fused", action="store_true", help="skip the fused backward (deterministic=False) rows")
    ap.add_argument("--backend", default=None,
                    help="pass backend=... to sparsedsl's call (default: not passed, i.e. 'auto'); 'triton' makes a "
                    "missing backward kernel fail loudly instead of timing the reference")
    ap.add_argument("--varlen", action="store_true", help="also run the packed variable-length rows")
    ap.add_argument("--varlen-only", action="store_true", help="only the packed variable-length rows")
    ap.add_argument("--varlen-tokens", type=int, default=65536, help="total tokens of the packed batch")
    ap.add_argument("--varlen-min", type=int, default=512, help="shortest document")
    ap.add_argument("--varlen-max", type=int, default=16384, help="longest document")
    ap.add_argument("--varlen-seed", type=int, default=0)
    ap.add_argument("--varlen-patterns", nargs="+", default=VARLEN_PATTERNS, choices=list(PATTERNS),
                    metavar="PATTERN")
    ap.add_argument("--out", default=None, help="write the markdown table(s) here")
    args = ap.parse_args(argv)
    args.patterns = pick_patterns(args.patterns)
    if args.varlen_min < 1 or args.varlen_max < args.varlen_min or args.varlen_tokens < args.varlen_min:
        ap.error("need 1 <= --varlen-min <= --varlen-max and --varlen-tokens >= --varlen-min")
    return args


def doc_lengths(total: int, lo: int = 512, hi: int = 16384, seed: int = 0) -> list[int]:
    """Document lengths drawn uniformly from [lo, hi] (fixed seed), summing to `total`
    (the last draws are adjusted to land exactly; all stay in [lo, hi] when hi >= 2 * lo)."""
    rng = random.Random(seed)
    out, remaining = [], total
    while remaining:
        n = rng.randint(lo, hi)
        if remaining - n < lo:           # what would be left is too short for a document
            n = remaining if remaining <= hi else remaining - lo
        out.append(n)
        remaining -= n
    assert sum(out) == total and all(1 <= n <= hi for n in out)
    return out


def cu_seqlens(lengths, device="cpu") -> torch.Tensor:
    """int32 [n + 1] cumulative starts (FlashAttention varlen convention)."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=device)


def visible_pairs(p, name: str, lengths, h: int, hk: int, device=None) -> float:
    """Visible (query, key) pairs per head, summed over documents (positions restart at 0
    in each). Exact for causal; otherwise sum of density(n, n) * n * n (averaged over heads)."""
    if name == "causal":
        return float(sum(n * (n + 1) // 2 for n in lengths))
    total = 0
    for n in lengths:
        total += round(p.density(n, n, h, hk, device=device) * n * n * h)
    return total / h


def document_mask_mod(p, doc_id: torch.Tensor, starts: torch.Tensor, h: int, hk: int):
    """FlexAttention mask_mod over the packed [T, T] square: same document, and the
    pattern's mask at the positions inside that document (restarting at 0)."""
    t = doc_id.numel()
    inner = p.to_flex_mask_mod(t, t, h, hk)      # q_len == kv_len: no bottom-right offset

    def mod(b, hh, q_idx, kv_idx):
        dq, dk = doc_id[q_idx], doc_id[kv_idx]
        return (dq == dk) & inner(b, hh, q_idx - starts[dq], kv_idx - starts[dk])

    return mod


def geomean(values) -> float:
    vals = [v for v in values if v == v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else NAN


def _ms(v):
    return "n/a" if v != v else f"{v:.3f}"


def _tf(v):
    return "n/a" if v != v else f"{v:.0f}"


def _x(v):
    return "n/a" if v != v else f"{v:.2f}x"


def _g(v):
    return "n/a" if v != v else f"{v:.2g}"


def _b(v):
    return "n/a" if v != v else f"{v:.1f}"


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12 if ms == ms and ms > 0 else NAN


def derive(row: dict, d: int, h: int) -> dict:
    """Useful TFLOP/s and speed-ups of a pattern row (mutates and returns it)."""
    pairs = row["density"] * h * row["L"] * row["L"]
    for who in ("ours", "flex", "fused"):
        row[f"{who}_bwd_tf"] = tflops(BWD_FLOPS * d * pairs, row.get(f"{who}_bwd", NAN))
        row[f"{who}_fb_tf"] = tflops(FB_FLOPS * d * pairs, row.get(f"{who}_fb", NAN))
    row["x_bwd"] = row["flex_bwd"] / row["ours_bwd"]
    row["x_fb"] = row["flex_fb"] / row["ours_fb"]
    row["x_fused_bwd"] = row["flex_bwd"] / row.get("fused_bwd", NAN)
    row["x_fused_fb"] = row["flex_fb"] / row.get("fused_fb", NAN)
    return row


def format_line(r: dict) -> str:
    return (f"L={r['L']:6d} {r['pattern']:28s} dens={r['density']:.4f} | bwd ours={r['ours_bwd']:8.3f}ms "
            f"({r['ours_bwd_tf']:4.0f} TF/s) flex={r['flex_bwd']:8.3f}ms ({r['flex_bwd_tf']:4.0f}) "
            f"x{r['x_bwd']:.2f} fused={r.get('fused_bwd', NAN):8.3f}ms x{r.get('x_fused_bwd', NAN):.2f} | fwd+bwd ours={r['ours_fb']:8.3f}ms ({r['ours_fb_tf']:4.0f}) "
            f"flex={r['flex_fb']:8.3f}ms ({r['flex_fb_tf']:4.0f}) x{r['x_fb']:.2f} | build={r['build']:.1f}ms | "
            f"sdpa-causal bwd/fwd+bwd cudnn={r['cudnn_bwd']:.3f}/{r['cudnn_fb']:.3f} "
            f"flash={r['flash_bwd']:.3f}/{r['flash_fb']:.3f} | maxdiff dq={r['dq']:.3g} dk={r['dk']:.3g} "
            f"dv={r['dv']:.3g}")


def format_table(rows: list[dict], h: int, d: int, versions: str) -> str:
    head = ("| L | pattern | density | sparsedsl bwd ms | bwd useful TFLOP/s | Flex bwd ms | Flex bwd TFLOP/s | "
            "bwd speed-up vs Flex | sparsedsl fwd+bwd ms | fwd+bwd useful TFLOP/s | Flex fwd+bwd ms | "
            "Flex fwd+bwd TFLOP/s | fwd+bwd speed-up vs Flex | Flex BlockMask build ms | "
            "SDPA causal cuDNN bwd / fwd+bwd ms | SDPA causal flash bwd / fwd+bwd ms | "
            "max abs diff dq / dk / dv vs Flex | sparsedsl fused (deterministic=False) bwd / fwd+bwd ms | "
            "fused bwd / fwd+bwd speed-up vs Flex |")
    table = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        table.append(
            f"| {r['L'] // 1024}K | {r['pattern']} | {r['density']:.3f} | {_ms(r['ours_bwd'])} | "
            f"{_tf(r['ours_bwd_tf'])} | {_ms(r['flex_bwd'])} | {_tf(r['flex_bwd_tf'])} | {_x(r['x_bwd'])} | "
            f"{_ms(r['ours_fb'])} | {_tf(r['ours_fb_tf'])} | {_ms(r['flex_fb'])} | {_tf(r['flex_fb_tf'])} | "
            f"{_x(r['x_fb'])} | {_b(r['build'])} | {_ms(r['cudnn_bwd'])} / {_ms(r['cudnn_fb'])} | "
            f"{_ms(r['flash_bwd'])} / {_ms(r['flash_fb'])} | {_g(r['dq'])} / {_g(r['dk'])} / {_g(r['dv'])} | "
            f"{_ms(r.get('fused_bwd', NAN))} / {_ms(r.get('fused_fb', NAN))} | "
            f"{_x(r.get('x_fused_bwd', NAN))} / {_x(r.get('x_fused_fb', NAN))} |")
    lens = sorted({r["L"] for r in rows})
    geo = "; ".join(f"{L // 1024}K: backward {_x(geomean(r['x_bwd'] for r in rows if r['L'] == L))}, "
                    f"fwd+bwd {_x(geomean(r['x_fb'] for r in rows if r['L'] == L))}" for L in lens)
    caption = (f"Backward and forward+backward, B=1, H={h}, D={d}, bf16 — {versions}. "
               f"Backward = torch.autograd.grad(out, (q, k, v), do) on one fixed forward graph "
               f"(retain_graph=True); fwd+bwd = forward and that grad call. Useful TFLOP/s counts only the "
               f"visible (query, key) pairs: the backward counts 2.5x the forward's 4·D FLOPs per pair "
               f"(10·D), forward+backward 3.5x (14·D). SDPA is dense causal (K/V repeat_interleave'd outside "
               f"the timed region for GQA); max abs diff compares sparsedsl's dq / dk / dv with FlexAttention's.")
    return (caption + "\n\n" + "\n".join(table) +
            f"\n\nGeometric mean speed-up over FlexAttention ({geo or 'no rows'})\n")


def varlen_derive(row: dict, d: int, h: int) -> dict:
    pairs = row["pairs"] * h
    for who in ("ours", "flex", "fa"):
        row[f"{who}_fwd_tf"] = tflops(FWD_FLOPS * d * pairs, row[f"{who}_fwd"])
        row[f"{who}_bwd_tf"] = tflops(BWD_FLOPS * d * pairs, row[f"{who}_bwd"])
        row[f"{who}_fb_tf"] = tflops(FB_FLOPS * d * pairs, row[f"{who}_fb"])
    for key in ("fwd", "bwd", "fb"):
        row[f"x_{key}"] = row[f"flex_{key}"] / row[f"ours_{key}"]
    return row


def varlen_line(r: dict) -> str:
    return (f"varlen T={r['T']} docs={len(r['lengths'])} {r['pattern']:22s} dens={r['density']:.4f} | "
            f"fwd ours={r['ours_fwd']:.3f}ms ({r['ours_fwd_tf']:.0f} TF/s) flex={r['flex_fwd']:.3f}ms "
            f"x{r['x_fwd']:.2f} | "
            f"bwd ours={r['ours_bwd']:.3f}ms ({r['ours_bwd_tf']:.0f}) flex={r['flex_bwd']:.3f}ms x{r['x_bwd']:.2f} | "
            f"fwd+bwd ours={r['ours_fb']:.3f}ms ({r['ours_fb_tf']:.0f}) flex={r['flex_fb']:.3f}ms x{r['x_fb']:.2f} | "
            f"build={r['build']:.1f}ms | fa-varlen {r['fa_fwd']:.3f}/{r['fa_bwd']:.3f}/{r['fa_fb']:.3f} | "
            f"maxdiff out={r['out']:.3g} dq={r['dq']:.3g} dk={r['dk']:.3g} dv={r['dv']:.3g}")


def format_varlen_table(rows: list[dict], h: int, d: int, versions: str) -> str:
    def cell(ms, tf):
        return "n/a" if ms != ms else f"{ms:.3f} ({_tf(tf)})"

    head = ("| T | documents | pattern | density of T² | sparsedsl fwd ms (TFLOP/s) | Flex fwd ms (TFLOP/s) | "
            "fwd speed-up | sparsedsl bwd ms (TFLOP/s) | Flex bwd ms (TFLOP/s) | bwd speed-up | "
            "sparsedsl fwd+bwd ms (TFLOP/s) | Flex fwd+bwd ms (TFLOP/s) | fwd+bwd speed-up | "
            "Flex BlockMask build ms | FA varlen fwd / bwd / fwd+bwd ms | max abs diff out / dq / dk / dv vs Flex |")
    table = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        ls = r["lengths"]
        table.append(
            f"| {r['T'] // 1024}K | {len(ls)} ({min(ls)}-{max(ls)}) | {r['pattern']} | {r['density']:.4f} | "
            f"{cell(r['ours_fwd'], r['ours_fwd_tf'])} | {cell(r['flex_fwd'], r['flex_fwd_tf'])} | {_x(r['x_fwd'])} | "
            f"{cell(r['ours_bwd'], r['ours_bwd_tf'])} | {cell(r['flex_bwd'], r['flex_bwd_tf'])} | {_x(r['x_bwd'])} | "
            f"{cell(r['ours_fb'], r['ours_fb_tf'])} | {cell(r['flex_fb'], r['flex_fb_tf'])} | {_x(r['x_fb'])} | "
            f"{_b(r['build'])} | {_ms(r['fa_fwd'])} / {_ms(r['fa_bwd'])} / {_ms(r['fa_fb'])} | "
            f"{_g(r['out'])} / {_g(r['dq'])} / {_g(r['dk'])} / {_g(r['dv'])} |")
    lengths = rows[0]["lengths"] if rows else []
    caption = (f"Packed variable-length batch, H={h}, D={d}, bf16 — {versions}. Document lengths "
               f"{lengths} (positions restart at 0 in each). sparsedsl: p(q, k, v, cu_seqlens_q=, cu_seqlens_k=, "
               f"max_seqlen_q=, max_seqlen_k=) on [T, H, D]; FlexAttention: [1, H, T, D] with a document mask "
               f"(same document and the pattern at in-document positions; BlockMask from create_block_mask over "
               f"[1, H, T, T], build time reported); FA varlen: torch.nn.attention.varlen.varlen_attn (causal "
               f"only). Density is the visible pairs over T²; useful TFLOP/s counts 4·D FLOPs per visible pair "
               f"forward, 10·D backward (2.5x), 14·D forward+backward (3.5x).")
    return caption + "\n\n" + "\n".join(table) + "\n"


# -- GPU measurement ----------------------------------------------------------------------

def free():
    gc.collect()
    torch.cuda.empty_cache()


def note(what: str, e: BaseException):
    last = traceback.format_exception_only(type(e), e)[-1].strip()
    print(f"  {what}: {last[:500]}", flush=True)


def measure(fn, inputs, do, *, fwd=False):
    """Time fn(*inputs) -> out under autograd. Returns (times, out, grads): times has
    'bwd' (autograd.grad on one fixed graph), 'fb' (forward + grad) and, with fwd=True,
    'fwd' (the forward alone, recording the graph); out and grads come from a call
    after the warm-up (so autotuning runs cannot leave partial sums in them)."""
    out = fn(*inputs)                                   # compile / autotune forward and backward
    torch.autograd.grad(out, inputs, do)
    del out
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, do, retain_graph=True)
    torch.cuda.synchronize()
    times = {}
    times["bwd"] = bench(lambda: torch.autograd.grad(out, inputs, do, retain_graph=True))
    out = out.detach()                                   # drops the graph and its saved tensors
    if fwd:
        times["fwd"] = bench(lambda: fn(*inputs))
    times["fb"] = bench(lambda: torch.autograd.grad(fn(*inputs), inputs, do))
    return times, out, grads


def maxdiff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def raise_limits(n=64):
    raise_recompile_limit(n)
    # the timed backward reruns one graph (retain_graph=True), which compiled backwards
    # with donated buffers refuse
    import torch._functorch.config

    if hasattr(torch._functorch.config, "donated_buffer"):
        torch._functorch.config.donated_buffer = False


def run_pattern(L, name, args, flex, dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    src, params, hk = PATTERNS[name]
    h, d = args.heads, args.dim
    p = sparsedsl.compile_pattern(src, **params)
    ours_kw = {} if args.backend is None else dict(backend=args.backend)
    row = dict(L=L, pattern=name, density=NAN, ours_bwd=NAN, ours_fb=NAN, flex_bwd=NAN, flex_fb=NAN, build=NAN,
               cudnn_bwd=NAN, cudnn_fb=NAN, flash_bwd=NAN, flash_fb=NAN, dq=NAN, dk=NAN, dv=NAN)
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, h, L, d, device=dev, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(1, hk, L, d, device=dev, dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(1, hk, L, d, device=dev, dtype=dtype, generator=gen).requires_grad_()
    do = torch.randn(1, h, L, d, device=dev, dtype=dtype, generator=gen)
    row["density"] = p.density(L, L, h, hk, device="cuda")
    ours_grads = None
    try:
        t, out, ours_grads = measure(lambda a, b, c: p(a, b, c, **ours_kw), (q, k, v), do)
        row["ours_bwd"], row["ours_fb"] = t["bwd"], t["fb"]
        del out
    except Exception as e:
        note("sparsedsl", e)
    free()
    if not args.no_fused:  # dQ fused into the dK/dV kernel (atomic adds)
        try:
            t, out, fused_grads = measure(lambda a, b, c: p(a, b, c, deterministic=False, **ours_kw), (q, k, v), do)
            row["fused_bwd"], row["fused_fb"] = t["bwd"], t["fb"]
            if ours_grads is not None:
                row["fused_dq"] = maxdiff(fused_grads[0], ours_grads[0])
            del out, fused_grads
        except Exception as e:
            note("sparsedsl fused", e)
        free()
    if not args.no_flex:
        try:
            bm, row["build"] = timed_block_mask(p, L, h, hk)
            gqa = hk != h
            t, out, flex_grads = measure(lambda a, b, c: flex(a, b, c, block_mask=bm, enable_gqa=gqa), (q, k, v),
                                         do)
            del out
            row["flex_bwd"], row["flex_fb"] = t["bwd"], t["fb"]
            if ours_grads is not None:
                row["dq"], row["dk"], row["dv"] = (maxdiff(a, b) for a, b in zip(ours_grads, flex_grads))
            del flex_grads, bm
        except Exception as e:
            note("flex", e)
        free()
    del ours_grads
    free()
    if not args.no_sdpa:  # dense causal SDPA: the hardware reference line
        if hk != h:
            kk = k.detach().repeat_interleave(h // hk, 1).requires_grad_()
            vv = v.detach().repeat_interleave(h // hk, 1).requires_grad_()
        else:
            kk, vv = k, v

        def sdpa(a, b, c):
            return torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=True)

        for key, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    t, out, grads = measure(sdpa, (q, kk, vv), do)
                    del out, grads
                row[f"{key}_bwd"], row[f"{key}_fb"] = t["bwd"], t["fb"]
            except Exception as e:  # a backend missing on this build
                note(f"sdpa {key}", e)
            free()
        del kk, vv
    del q, k, v, do
    free()
    return derive(row, d, h)


def varlen_reference():
    """torch's flash varlen attention, causal, or None (older torch). Its keyword for
    causality changed between releases (is_causal, then window_size=(-1, 0))."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    kw = dict(is_causal=True) if "is_causal" in params else dict(window_size=(-1, 0))
    return lambda q, k, v, cu, m: varlen_attn(q, k, v, cu, cu, m, m, **kw)


def run_varlen(name, args, flex, dtype):
    from torch.nn.attention.flex_attention import create_block_mask

    src, params, hk = PATTERNS[name]
    h, d, T = args.heads, args.dim, args.varlen_tokens
    p = sparsedsl.compile_pattern(src, **params)
    ours_kw = {} if args.backend is None else dict(backend=args.backend)
    lengths = doc_lengths(T, args.varlen_min, args.varlen_max, args.varlen_seed)
    m = max(lengths)
    dev = torch.device("cuda")
    cu = cu_seqlens(lengths, dev)
    pairs = visible_pairs(p, name, lengths, h, hk, device="cuda")
    row = dict(T=T, lengths=lengths, pattern=name, pairs=pairs, density=pairs / (T * T), build=NAN,
               out=NAN, dq=NAN, dk=NAN, dv=NAN,
               **{f"{who}_{key}": NAN for who in ("ours", "flex", "fa") for key in ("fwd", "bwd", "fb")})
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(T, h, d, device=dev, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(T, hk, d, device=dev, dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(T, hk, d, device=dev, dtype=dtype, generator=gen).requires_grad_()
    do = torch.randn(T, h, d, device=dev, dtype=dtype, generator=gen)
    ours = None
    try:
        t, out, grads = measure(lambda a, b, c: p(a, b, c, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=m,
                                                  max_seqlen_k=m, **ours_kw), (q, k, v), do, fwd=True)
        ours = (out, *grads)
        for key in ("fwd", "bwd", "fb"):
            row[f"ours_{key}"] = t[key]
        del out, grads
    except Exception as e:
        note("sparsedsl varlen", e)
    free()
    if not args.no_flex:
        try:
            def packed_to_flex(x):  # [T, H, D] -> [1, H, T, D]
                return x.detach().transpose(0, 1).unsqueeze(0).contiguous()

            qf, kf, vf = (packed_to_flex(x).requires_grad_() for x in (q, k, v))
            dof = packed_to_flex(do)
            doc_id = torch.repeat_interleave(torch.arange(len(lengths), device=dev),
                                             torch.tensor(lengths, device=dev))
            starts = cu[:-1].long()
            mod = document_mask_mod(p, doc_id, starts, h, hk)
            bm = create_block_mask(mod, 1, h, T, T, device="cuda", BLOCK_SIZE=128, _compile=True)  # warm
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            bm = create_block_mask(mod, 1, h, T, T, device="cuda", BLOCK_SIZE=128, _compile=True)
            torch.cuda.synchronize()
            row["build"] = (time.perf_counter() - t0) * 1e3
            gqa = hk != h
            t, out, grads = measure(lambda a, b, c: flex(a, b, c, block_mask=bm, enable_gqa=gqa), (qf, kf, vf),
                                    dof, fwd=True)
            for key in ("fwd", "bwd", "fb"):
                row[f"flex_{key}"] = t[key]
            if ours is not None:
                for key, a, b in zip(("out", "dq", "dk", "dv"), ours, (out, *grads)):
                    row[key] = maxdiff(a, b[0].transpose(0, 1))
            del qf, kf, vf, dof, bm, out, grads
        except Exception as e:
            note("flex varlen", e)
        free()
    del ours
    free()
    fa = varlen_reference() if (not args.no_sdpa and name == "causal" and hk == h) else None
    if fa is not None:
        try:
            t, out, grads = measure(lambda a, b, c: fa(a, b, c, cu, m), (q, k, v), do, fwd=True)
            del out, grads
            for key in ("fwd", "bwd", "fb"):
                row[f"fa_{key}"] = t[key]
        except Exception as e:
            note("varlen_attn", e)
        free()
    del q, k, v, do
    free()
    return varlen_derive(row, d, h)


def main(argv=None):
    args = parse_args(argv)
    assert torch.cuda.is_available(), "the benchmark needs a CUDA GPU"
    import triton
    from torch.nn.attention.flex_attention import flex_attention

    raise_limits()
    flex = torch.compile(flex_attention, dynamic=False)
    dtype = torch.bfloat16
    versions = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}"
    print(f"# {versions}", flush=True)
    rows, vrows = [], []
    if not args.varlen_only:
        for L in args.lengths:
            for name in args.patterns:
                row = run_pattern(L, name, args, flex, dtype)
                rows.append(row)
                print(format_line(row), flush=True)
    if args.varlen or args.varlen_only:
        for name in args.varlen_patterns:
            row = run_varlen(name, args, flex, dtype)
            vrows.append(row)
            print(varlen_line(row), flush=True)
    parts = []
    if rows:
        parts.append(format_table(rows, args.heads, args.dim, versions))
    if vrows:
        parts.append(format_varlen_table(vrows, args.heads, args.dim, versions))
    text = "\n".join(parts)
    print("\n" + text, flush=True)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
