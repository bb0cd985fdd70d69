"""Dynamic patterns and decoding: sparsedsl vs FlexAttention (given the same
selection) vs dense SDPA, in one process.

    python benchmarks/bench_dynamic.py prefill [--lengths 16384 65536] [--out FILE]
    python benchmarks/bench_dynamic.py train [--lengths 16384 65536] [--out FILE]
    python benchmarks/bench_dynamic.py decode [--lengths 32768 131072 1048576] [--out FILE]

prefill (B=1, H=16, D=128, bf16): sparsedsl's time includes its selection step
(block summaries, scoring, top-k); FlexAttention gets the same selection as a
BlockMask (its build time reported separately) and, for landmarks, the landmark
entries appended to K/V with a mask_mod that sees entry j from query blocks
> j. train: the same, forward + backward. decode (B=8, H=32, Hk=8, D=128, bf16, one new token, full caches):
sparsedsl's decode (selection included) vs SDPA over the whole cache and
FlexAttention decoding with the pattern's BlockMask; "GB/s" is the bytes the
kernel must read (visible K/V rows once per KV head, plus block summaries)
over its time. Times are medians of triton.testing.do_bench.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsedsl  # noqa: E402

TOPK = "pattern topk_() { causal & (sink(64) | window(1024) | topk(16, block=64)) }"
LANDMARK = "pattern landmarks_() { causal & (sink(64) | window(1024)) | landmarks(block=64) }"
STREAM = "pattern stream_() { causal & (sink(64) | window(1024)) }"


def bench(fn, warmup=10, rep=50):
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def timed(fn):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1e3


def selection_block_mask(sel, L, h, block, create_block_mask):
    """The pattern causal & (sink(64) | window(1024) | selected blocks) as a BlockMask."""
    b, _, r, n = sel.shape
    nb = -(-L // block)
    hit = torch.zeros((b, h, r, nb + 1), dtype=torch.bool, device=sel.device)
    hit.scatter_(-1, torch.where(sel < 0, nb, sel).long(), True)

    def mod(bb, hh, q, k):
        return (k <= q) & ((k < 64) | (q - k < 1024) | hit[bb, hh, q // block, k // block])

    return create_block_mask(mod, b, h, L, L, device="cuda", _compile=True)


def landmark_block_mask(L, h, block, create_block_mask):
    nl = L // block

    def mod(bb, hh, q, k):
        ordinary = (k < L) & (k <= q) & ((k < 64) | (q - k < 1024))
        return ordinary | ((k >= L) & (k - L < q // block))

    return create_block_mask(mod, 1, None, L, L + nl, device="cuda", _compile=True)


def prefill(args, versions):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    for L in args.lengths:
        h, d, dev = 16, 128, "cuda"
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(1, h, L, d, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3))
        for name, src in (("sink64+window1024+topk(16, block=64)", TOPK),
                          ("sink64+window1024 + landmarks(block=64)", LANDMARK)):
            p = sparsedsl.compile_pattern(src)
            ours = bench(lambda: p(q, k, v))
            if p.dynamic_atoms[0].kind == "topk":
                sel_ms = bench(lambda: p.select_blocks(q, k))
                sel = p.select_blocks(q, k)
                bm, build = timed(lambda: selection_block_mask(sel, L, h, 64, create_block_mask))
                fq, fk, fv = q, k, v
            else:
                from sparsedsl.kernels.selection import summaries

                sel_ms = bench(lambda: (summaries(k, 64, False), summaries(v, 64, False)))
                kl = summaries(k, 64, False)[0].to(k.dtype)
                vl = summaries(v, 64, False)[0].to(v.dtype)
                fq, fk, fv = q, torch.cat([k, kl], 2), torch.cat([v, vl], 2)
                bm, build = timed(lambda: landmark_block_mask(L, h, 64, create_block_mask))
            flex_ms = bench(lambda: flex(fq, fk, fv, block_mask=bm))
            o1 = p(q, k, v).float()
            o2 = flex(fq, fk, fv, block_mask=bm).float()
            err = (o1 - o2).abs().max().item()
            row = dict(L=L, name=name, ours=ours, sel=sel_ms, flex=flex_ms, build=build, err=err)
            print(f"L={L} {name}: sparsedsl {ours:.3f} ms (selection {sel_ms:.3f}), flex {flex_ms:.3f} ms "
                  f"(BlockMask build {build:.1f} ms), speed-up {flex_ms / ours:.2f}x, max |diff| {err:.2e}",
                  flush=True)
            rows.append(row)
            del bm
            torch.cuda.empty_cache()
    lines = [f"Prefill with data-dependent selection ({versions}; B=1, H=16, D=128, bf16). sparsedsl's time "
             "includes its selection step; FlexAttention is given the same selection as a BlockMask.", "",
             "| L | pattern | sparsedsl ms (of it: selection) | Flex ms | speed-up | Flex BlockMask build ms | "
             "max abs diff |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['L']} | {r['name']} | {r['ours']:.3f} ({r['sel']:.3f}) | {r['flex']:.3f} | "
                     f"{r['flex'] / r['ours']:.2f}x | {r['build']:.1f} | {r['err']:.1e} |")
    return "\n".join(lines)


def breakdown(p, q, k, v, do):
    """The forward (selection included) and each backward kernel alone, in ms."""
    from sparsedsl.kernels import launch

    sel = p._kernel_selection(q, k, None)
    scale = q.shape[-1] ** -0.5
    out, lse = p(q, k, v, return_lse=True)
    fwd = bench(lambda: p(q, k, v))
    dq = bench(lambda: launch.backward(p.plan, q, k, v, out, lse, do, scale, False, kinds=("dq",), selection=sel))
    dkdv = bench(lambda: launch.backward(p.plan, q, k, v, out, lse, do, scale, False, kinds=("dkdv",),
                                         selection=sel))
    return f"fwd {fwd:.2f}, dQ {dq:.2f}, dK/dV {dkdv:.2f}"


def train(args, versions):
    """Forward + backward (the gradients of q, k, v) with the same selection in both: the
    selection is part of sparsedsl's forward, Flex gets it as a BlockMask built outside."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    for L in args.lengths:
        h, d, dev = 16, 128, "cuda"
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v, do = (torch.randn(1, h, L, d, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(4))
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        for name, src in (("sink64+window1024+topk(16, block=64)", TOPK),
                          ("sink64+window1024 + landmarks(block=64)", LANDMARK)):
            p = sparsedsl.compile_pattern(src)
            if p.dynamic_atoms[0].kind == "topk":
                sel = p.select_blocks(q.detach(), k.detach())
                bm = selection_block_mask(sel, L, h, 64, create_block_mask)

                def ours_fn():
                    return torch.autograd.grad(p(q, k, v), (q, k, v), do)

                def flex_fn():
                    return torch.autograd.grad(flex(q, k, v, block_mask=bm), (q, k, v), do)
            else:
                bm = landmark_block_mask(L, h, 64, create_block_mask)

                def ours_fn():
                    return torch.autograd.grad(p(q, k, v), (q, k, v), do)

                def flex_fn():  # landmark entries: block means appended to K/V (differentiable)
                    kl = k.unflatten(2, (L // 64, 64)).mean(3)
                    vl = v.unflatten(2, (L // 64, 64)).mean(3)
                    out = flex(q, torch.cat([k, kl], 2), torch.cat([v, vl], 2), block_mask=bm)
                    return torch.autograd.grad(out, (q, k, v), do)
            ours = bench(ours_fn)
            flex_ms = bench(flex_fn)
            err = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                      for a, b in zip(ours_fn(), flex_fn()))
            parts = breakdown(p, q.detach(), k.detach(), v.detach(), do)
            rows.append(dict(L=L, name=name, ours=ours, flex=flex_ms, err=err, parts=parts))
            print(f"L={L} {name} fwd+bwd: sparsedsl {ours:.3f} ms ({parts}), flex {flex_ms:.3f} ms, "
                  f"speed-up {flex_ms / ours:.2f}x, max |diff| / max |grad| {err:.1e}", flush=True)
            del bm
            torch.cuda.empty_cache()
    lines = [f"Forward + backward with data-dependent selection ({versions}; B=1, H=16, D=128, bf16; the "
             "gradients of q, k and v). sparsedsl's time includes its selection step (not differentiated); "
             "FlexAttention is given the same selection as a BlockMask built outside the timing.", "",
             "| L | pattern | sparsedsl ms | of it: forward, dQ, dK/dV alone | Flex ms | speed-up | "
             "max grad diff (relative) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['L']} | {r['name']} | {r['ours']:.3f} | {r['parts']} | {r['flex']:.3f} | "
                     f"{r['flex'] / r['ours']:.2f}x | {r['err']:.1e} |")
    return "\n".join(lines)


def decode(args, versions):
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    b, h, hk, d = 8, 32, 8, 128
    rows = []
    for L in args.lengths:
        g = torch.Generator(device="cuda").manual_seed(0)
        kc = torch.randn(b, hk, L, d, device="cuda", dtype=torch.bfloat16, generator=g)
        vc = torch.randn(b, hk, L, d, device="cuda", dtype=torch.bfloat16, generator=g)
        q = torch.randn(b, h, 1, d, device="cuda", dtype=torch.bfloat16, generator=g)
        lens = torch.full((b,), L, dtype=torch.int32, device="cuda")
        sdpa = bench(lambda: F.scaled_dot_product_attention(q, kc, vc, enable_gqa=True))
        for name, src in (("sink64+window1024", STREAM), ("sink64+window1024+topk(16, block=64)", TOPK)):
            p = sparsedsl.compile_pattern(src)
            summ = p.summarize(kc, vc, lens) if p.is_dynamic else None
            eager = bench(lambda: p.decode(q, kc, vc, lens, summaries=summ))
            p.decode(q, kc, vc, lens, summaries=summ)
            graph = torch.cuda.CUDAGraph()  # how a serving loop runs it: one replay per step
            with torch.cuda.graph(graph):
                p.decode(q, kc, vc, lens, summaries=summ)
            ours = bench(graph.replay)
            rows_kv = 64 + 1024
            extra = 0
            if p.is_dynamic:
                rows_kv += 16 * 64 * (h // hk)  # selected blocks: per query head
                extra = b * hk * (-(-L // 64)) * d * 4  # the block means, float32
            need = b * hk * rows_kv * d * 2 * 2 + extra
            flex_ms = None
            try:
                if not p.is_dynamic:
                    def mod(bb, hh, qi, ki):
                        qq = qi + L - 1
                        return (ki <= qq) & ((ki < 64) | (qq - ki < 1024))
                    bm = create_block_mask(mod, None, None, 1, L, device="cuda", _compile=True)
                    flex_ms = bench(lambda: flex(q, kc, vc, block_mask=bm, enable_gqa=True))
                else:
                    # Flex given the same selection: its BlockMask for this step
                    blocks = p.select_blocks(q, kc[:, :, :L], backend="triton")  # [B, H, 1, 16]
                    nb = -(-L // 64)
                    hit = torch.zeros((b, h, nb + 1), dtype=torch.bool, device="cuda")
                    hit.scatter_(-1, torch.where(blocks[:, :, 0] < 0, nb, blocks[:, :, 0]).long(), True)

                    def mod2(bb, hh, qi, ki):
                        qq = qi + L - 1
                        return (ki <= qq) & ((ki < 64) | (qq - ki < 1024) | hit[bb, hh, ki // 64])
                    bm = create_block_mask(mod2, b, h, 1, L, device="cuda", _compile=True)
                    flex_ms = bench(lambda: flex(q, kc, vc, block_mask=bm, enable_gqa=True))
            except Exception as e:  # noqa: BLE001 - report, keep the other rows
                print(f"flex decode failed at L={L} {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
            gbs = need / ours / 1e6
            rows.append(dict(L=L, name=name, ours=ours, eager=eager, sdpa=sdpa, flex=flex_ms, gbs=gbs))
            print(f"L={L} {name}: sparsedsl {ours * 1e3:.1f} us graphed, {eager * 1e3:.1f} us eager "
                  f"({gbs:.0f} GB/s of needed bytes), SDPA "
                  f"{sdpa * 1e3:.1f} us, flex {flex_ms * 1e3 if flex_ms else float('nan'):.1f} us", flush=True)
        del kc, vc
        torch.cuda.empty_cache()
    lines = [f"Decoding, one new token ({versions}; B=8, H=32, Hk=8, D=128, bf16, every cache full). "
             "GB/s: the bytes the pattern must read (visible K/V rows, once per KV head for the static part, "
             "per query head for selected blocks, plus the float32 block means) over sparsedsl's CUDA-graph time. "
             "sparsedsl includes its selection step (summaries refresh, scoring, top-k); Flex is given the "
             "selection as a BlockMask built outside the timing.", "",
             "| cache | pattern | sparsedsl us (graph) | eager us | GB/s | SDPA (dense) us | Flex decoding us |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        fl = f"{r['flex'] * 1e3:.1f}" if r["flex"] else "failed"
        lines.append(f"| {r['L']} | {r['name']} | {r['ours'] * 1e3:.1f} | {r['eager'] * 1e3:.1f} | {r['gbs']:.0f} | "
                     f"{r['sdpa'] * 1e3:.1f} | {fl} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["prefill", "train", "decode"])
    ap.add_argument("--lengths", type=int, nargs="+")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    assert torch.cuda.is_available(), "the benchmark needs a CUDA GPU"
    import triton

    versions = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}"
    if args.lengths is None:
        args.lengths = [32768, 131072, 1048576] if args.what == "decode" else [16384, 65536]
    table = {"prefill": prefill, "train": train, "decode": decode}[args.what](args, versions)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
