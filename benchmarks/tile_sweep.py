"""Time every tile config of each kernel on a few patterns, to choose the config lists
the autotuner gets (and diagnose its choices).

    python benchmarks/tile_sweep.py [--kind fwd dq dkdv] [--length 16384] [--patterns causal ...]

A config is (own tile, iterated tile, num_warps, num_stages): BLOCK_M is the program's
own tile (queries for fwd and dq, keys for dkdv), BLOCK_N the tile it iterates over.
Backward kernels are timed alone (the delta pass, timed once, is subtracted)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsedsl  # noqa: E402
from bench_forward import PATTERNS, pick_patterns  # noqa: E402
from sparsedsl.kernels import launch  # noqa: E402
from sparsedsl.kernels.generate import DKDV_CONFIGS, DQ_CONFIGS, GPU_CONFIGS  # noqa: E402

CANDIDATES = {
    "fwd": GPU_CONFIGS,
    "dq": sorted(set(DQ_CONFIGS) | {(128, 32, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 2),
                                    (64, 64, 4, 3), (64, 32, 4, 3), (128, 128, 8, 2), (64, 128, 8, 2)}),
    "dkdv": sorted(set(DKDV_CONFIGS) | {(128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3),
                                        (64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 3), (128, 16, 4, 4),
                                        (64, 128, 8, 2)}),
}
CANDIDATES["fused"] = CANDIDATES["dkdv"]  # the dK/dV kernel with dQ fused in (deterministic=False)


def med(fn):
    if not torch.cuda.is_available():
        fn()
        return 0.0
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", nargs="+", default=["fwd", "dq", "dkdv"], choices=list(CANDIDATES))
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS), metavar="PATTERN",
                    help="names from bench_forward.PATTERNS, or the start of one (default: all)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run in Triton's interpreter (TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    args.patterns = pick_patterns(args.patterns)
    dev, cpu = args.device, args.device == "cpu"
    dtype = torch.float32 if cpu else torch.bfloat16
    L, H, D = args.length, args.heads, args.dim
    for name in args.patterns:
        src, kw, hk = PATTERNS[name]
        hk = min(hk, H)
        p = sparsedsl.compile_pattern(src, **kw)
        gen = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(1, H, L, D, device=dev, dtype=dtype, generator=gen)
        k, v = (torch.randn(1, hk, L, D, device=dev, dtype=dtype, generator=gen) for _ in range(2))
        out, lse = p(q, k, v, return_lse=True, backend="triton", _config=(64, 64))
        do = torch.randn_like(out)
        t_delta = med(lambda: launch.backward_delta(out, do, lse))
        print(f"{name}: delta {t_delta * 1e3:.0f} us", flush=True)
        for kind in args.kind:
            row = []
            for cfg in CANDIDATES[kind]:
                if kind == "fwd":
                    fn = lambda: launch.forward(p.plan, q, k, v, D ** -0.5, cpu, config=cfg)  # noqa: E731
                else:
                    fn = lambda: launch.backward(p.plan, q, k, v, out, lse, do, D ** -0.5, cpu,  # noqa: E731
                                                 config={"dkdv" if kind == "fused" else kind: cfg},
                                                 kinds=("dkdv",) if kind == "fused" else (kind,),
                                                 deterministic=kind != "fused")
                try:
                    fn()
                    t = med(fn) - (0 if kind == "fwd" else t_delta)
                except Exception as e:  # a config that does not fit (shared memory, registers)
                    row.append((float("inf"), cfg, type(e).__name__))
                    continue
                row.append((t, cfg, ""))
            row.sort()
            print(f"  {kind:5s} " + "  ".join(f"{c}:{t:.3f}{'!' + e if e else ''}" for t, c, e in row), flush=True)


if __name__ == "__main__":
    main()
